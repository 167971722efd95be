"""The SQL unit of work and its repositories (implementations of `bot.domain.records`' ports).

One `AsyncSession` per unit of work, never shared between tasks. Inserts that must be atomic
under concurrency are single `INSERT … ON CONFLICT` statements in the dialect's own syntax.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

from sqlalchemy import Insert, delete, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.domain.records import AccountLink, AuditEvent
from bot.errors import StoreUnavailable
from bot.storage.alerts import SqlAlerts, SqlScans, SqlWebhooks
from bot.storage.approvals import SqlApprovalRequests
from bot.storage.cases import SqlCases, SqlTicketNotes
from bot.storage.outbox import SqlLeases, SqlOutbox
from bot.storage.sql import dialect_insert, rowcount
from bot.storage.tables import AccountLinkRow, AuditEventRow, ProcessedEvent

log = logging.getLogger("bot.storage")


class SqlProcessedEvents:
    """`ProcessedEvents` over the `processed_events` table."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def mark_processed(self, source: str, event_id: str) -> bool:
        """Record `(source, event_id)`; True the first time, False for a duplicate."""
        statement: Insert = (
            dialect_insert(self._session, ProcessedEvent)
            .values(source=source, event_id=event_id, received_at=datetime.now(UTC))
            .on_conflict_do_nothing(index_elements=["source", "event_id"])
        )
        return rowcount(await self._session.execute(statement)) == 1

    async def prune(self, older_than: datetime) -> int:
        """Forget IDs received before `older_than`; returns how many were removed."""
        result = await self._session.execute(
            delete(ProcessedEvent).where(ProcessedEvent.received_at < older_than)
        )
        return rowcount(result)


class SqlAuditLog:
    """`AuditLog` over the `audit_events` table: append and read, nothing else."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def append(self, event: AuditEvent) -> int:
        """Store `event` (its `id` is ignored) and return the new event's id."""
        row = AuditEventRow(
            at=event.at,
            actor=event.actor,
            action=event.action,
            subject=event.subject,
            detail=dict(event.detail),
            slack_request=event.slack_request,
        )
        self._session.add(row)
        await self._session.flush()
        return row.id

    async def list(self, subject: str | None = None, limit: int = 100) -> list[AuditEvent]:
        """The latest `limit` events (about `subject` if given), oldest first."""
        query = select(AuditEventRow).order_by(AuditEventRow.id.desc()).limit(limit)
        if subject is not None:
            query = query.where(AuditEventRow.subject == subject)
        rows = (await self._session.scalars(query)).all()
        return [
            AuditEvent(
                id=row.id,
                at=row.at,
                actor=row.actor,
                action=row.action,
                subject=row.subject,
                detail=row.detail,
                slack_request=row.slack_request,
            )
            for row in reversed(rows)
        ]

    async def since(
        self, at: datetime | None = None, *, after_id: int = 0, limit: int = 1000
    ) -> Sequence[AuditEvent]:
        """Events at or after `at` with an id above `after_id`, oldest first."""
        query = (
            select(AuditEventRow)
            .where(AuditEventRow.id > after_id)
            .order_by(AuditEventRow.id)
            .limit(limit)
        )
        if at is not None:
            query = query.where(AuditEventRow.at >= at)
        rows = (await self._session.scalars(query)).all()
        return [
            AuditEvent(
                id=row.id,
                at=row.at,
                actor=row.actor,
                action=row.action,
                subject=row.subject,
                detail=row.detail,
                slack_request=row.slack_request,
            )
            for row in rows
        ]


class SqlAccountLinks:
    """`AccountLinks` over the `account_links` table."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get(self, identifier: str) -> list[AccountLink]:
        """The cached links for `identifier`, one per provider, ordered by provider."""
        rows = await self._session.scalars(
            select(AccountLinkRow)
            .where(AccountLinkRow.identifier == identifier)
            .order_by(AccountLinkRow.provider)
        )
        return [
            AccountLink(
                identifier=row.identifier,
                account_id=row.account_id,
                provider=row.provider,
                customer_id=row.customer_id,
                updated_at=row.updated_at,
            )
            for row in rows
        ]

    async def put(self, links: Sequence[AccountLink]) -> None:
        """Insert or replace links, keyed on `(identifier, provider)`."""
        if not links:
            return
        statement = dialect_insert(self._session, AccountLinkRow).values(
            [
                {
                    "identifier": link.identifier,
                    "provider": link.provider,
                    "customer_id": link.customer_id,
                    "account_id": link.account_id,
                    "updated_at": link.updated_at,
                }
                for link in links
            ]
        )
        statement = statement.on_conflict_do_update(
            index_elements=["identifier", "provider"],
            set_={
                "customer_id": statement.excluded.customer_id,
                "account_id": statement.excluded.account_id,
                "updated_at": statement.excluded.updated_at,
            },
        )
        await self._session.execute(statement)

    async def invalidate(self, identifier: str) -> None:
        """Forget every cached link for `identifier`."""
        await self._session.execute(
            delete(AccountLinkRow).where(AccountLinkRow.identifier == identifier)
        )


def _connection_lost(exc: BaseException) -> bool:
    """True when `exc` (or what caused it) says the database could not be reached."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        # A refused or reset connection (OSError); not a timeout, which may be anyone's (a
        # provider call timing out inside a unit of work is no database problem).
        if isinstance(seen, OSError) and not isinstance(seen, TimeoutError | FileNotFoundError):
            return True
        if type(seen).__name__ in _LOST_NAMES:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


#: asyncpg's errors for a server that is shutting down, starting or unreachable (by name: the
#: driver is optional for SQLite deployments).
_LOST_NAMES = frozenset(
    {
        "CannotConnectNowError", "ConnectionDoesNotExistError", "AdminShutdownError",
        "InterfaceError", "ConnectionFailureError", "TooManyConnectionsError",
    }
)  # fmt: skip


class SqlUnitOfWork:
    """`UnitOfWork` over one `AsyncSession`: rolled back on exit unless `commit()` was called."""

    def __init__(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        self._session_factory = session_factory
        self._session: AsyncSession | None = None
        self._events: SqlProcessedEvents | None = None
        self._audit: SqlAuditLog | None = None
        self._links: SqlAccountLinks | None = None
        self._outbox: SqlOutbox | None = None
        self._leases: SqlLeases | None = None
        self._cases: SqlCases | None = None
        self._ticket_notes: SqlTicketNotes | None = None
        self._requests: SqlApprovalRequests | None = None
        self._alerts: SqlAlerts | None = None
        self._scans: SqlScans | None = None
        self._webhooks: SqlWebhooks | None = None

    @property
    def session(self) -> AsyncSession:
        """The session, for repositories added later; only inside `async with`."""
        if self._session is None:
            raise RuntimeError("use the unit of work inside `async with`")
        return self._session

    @property
    def events(self) -> SqlProcessedEvents:
        """Processed event IDs."""
        if self._events is None:
            self._events = SqlProcessedEvents(self.session)
        return self._events

    @property
    def audit(self) -> SqlAuditLog:
        """The audit log."""
        if self._audit is None:
            self._audit = SqlAuditLog(self.session)
        return self._audit

    @property
    def links(self) -> SqlAccountLinks:
        """The account links cache."""
        if self._links is None:
            self._links = SqlAccountLinks(self.session)
        return self._links

    @property
    def outbox(self) -> SqlOutbox:
        """Outgoing Slack messages."""
        if self._outbox is None:
            self._outbox = SqlOutbox(self.session)
        return self._outbox

    @property
    def leases(self) -> SqlLeases:
        """Named leases for jobs that one replica runs at a time."""
        if self._leases is None:
            self._leases = SqlLeases(self.session)
        return self._leases

    @property
    def cases(self) -> SqlCases:
        """The case log (DESIGN §11)."""
        if self._cases is None:
            self._cases = SqlCases(self.session)
        return self._cases

    @property
    def ticket_notes(self) -> SqlTicketNotes:
        """Internal notes drafted for tickets and their posting state."""
        if self._ticket_notes is None:
            self._ticket_notes = SqlTicketNotes(self.session)
        return self._ticket_notes

    @property
    def requests(self) -> SqlApprovalRequests:
        """Refund and credit requests and their approvals."""
        if self._requests is None:
            self._requests = SqlApprovalRequests(self.session)
        return self._requests

    @property
    def alerts(self) -> SqlAlerts:
        """Anomaly alerts, feedback and suppressions."""
        if self._alerts is None:
            self._alerts = SqlAlerts(self.session)
        return self._alerts

    @property
    def scans(self) -> SqlScans:
        """Scan runs and their work items."""
        if self._scans is None:
            self._scans = SqlScans(self.session)
        return self._scans

    @property
    def webhooks(self) -> SqlWebhooks:
        """Received provider webhooks."""
        if self._webhooks is None:
            self._webhooks = SqlWebhooks(self.session)
        return self._webhooks

    async def commit(self) -> None:
        """Make everything done in this unit of work durable."""
        await self.session.commit()

    async def rollback(self) -> None:
        """Discard everything done since the last commit."""
        await self.session.rollback()

    async def __aenter__(self) -> Self:
        """Begin the unit of work (the transaction starts at the first statement)."""
        if self._session is not None:
            raise RuntimeError("a unit of work is entered once; make a new one")
        self._session = self._session_factory()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Roll back whatever was not committed and release the connection. A lost connection
        becomes `StoreUnavailable`, which users see as "the database did not answer"."""
        session = self.session
        try:
            try:
                await session.rollback()
            except Exception:
                if exc is None:
                    raise
                # The connection is gone; the exception that got us here says more.
                log.debug("rollback after an error failed", exc_info=True)
            if exc is not None and _connection_lost(exc):
                raise StoreUnavailable() from exc
        finally:
            await session.close()
            self._session = None
            self._events = self._audit = self._links = None
            self._outbox = None
            self._leases = None
            self._cases = None
            self._ticket_notes = None
            self._requests = None
            self._alerts = self._scans = self._webhooks = None
