"""What the application stores, and the storage ports: the unit of work and its repositories.

Pure: the dataclasses and `typing.Protocol`s here import no SQL module. `bot/storage/` implements
them with SQLAlchemy; tests may implement them with in-memory fakes.

Usage (the service layer commits; anything not committed is rolled back on exit)::

    async with uow_factory() as uow:
        if await uow.events.mark_processed("slack", event_id):
            await uow.audit.append(event)
            await uow.commit()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self


def _empty_detail() -> Mapping[str, Any]:
    return {}


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One append-only audit record: who did what to which subject, from which Slack request.

    `id` is None until stored. `detail` is JSON-serialisable data (Decimal and datetime values
    are stored as strings). `at` is an aware datetime (stored and read back as UTC).
    """

    id: int | None
    at: datetime
    actor: str
    action: str
    subject: str
    detail: Mapping[str, Any] = field(default_factory=_empty_detail)
    slack_request: str | None = None


@dataclass(frozen=True, slots=True)
class AccountLink:
    """A cached answer to "which customer of `provider` does `identifier` name?"."""

    identifier: str
    account_id: str | None
    provider: str
    customer_id: str
    updated_at: datetime


class ProcessedEvents(Protocol):
    """Slack event and webhook IDs already handled, for deduplication."""

    async def mark_processed(self, source: str, event_id: str) -> bool:
        """Record `(source, event_id)`; True the first time, False for a duplicate. Atomic under
        concurrency: of many simultaneous calls exactly one gets True (once committed)."""
        ...

    async def prune(self, older_than: datetime) -> int:
        """Forget IDs received before `older_than`; returns how many were removed."""
        ...


class AuditLog(Protocol):
    """The append-only audit trail: there is no way to change or remove an event."""

    async def append(self, event: AuditEvent) -> int:
        """Store `event` (its `id` is ignored) and return the new event's id."""
        ...

    async def list(self, subject: str | None = None, limit: int = 100) -> list[AuditEvent]:
        """The latest `limit` events (about `subject` if given), oldest first."""
        ...


class AccountLinks(Protocol):
    """Cache of identifier → provider customer resolutions."""

    async def get(self, identifier: str) -> list[AccountLink]:
        """The cached links for `identifier`, one per provider, ordered by provider."""
        ...

    async def put(self, links: Sequence[AccountLink]) -> None:
        """Insert or replace links, keyed on `(identifier, provider)`."""
        ...

    async def invalidate(self, identifier: str) -> None:
        """Forget every cached link for `identifier`."""
        ...


class UnitOfWork(Protocol):
    """One transaction over the repositories: rolled back on exit unless `commit()` was called."""

    @property
    def events(self) -> ProcessedEvents:
        """Processed event IDs."""
        ...

    @property
    def audit(self) -> AuditLog:
        """The audit log."""
        ...

    @property
    def links(self) -> AccountLinks:
        """The account links cache."""
        ...

    async def commit(self) -> None:
        """Make everything done in this unit of work durable."""
        ...

    async def rollback(self) -> None:
        """Discard everything done since the last commit."""
        ...

    async def __aenter__(self) -> Self:
        """Begin the unit of work."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Roll back whatever was not committed and release the connection."""
        ...


#: Makes a fresh unit of work; one per use case, never shared between tasks.
UnitOfWorkFactory = Callable[[], UnitOfWork]


class Store(Protocol):
    """The database as the application sees it: units of work, a health check, shutdown."""

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        ...

    def uow(self) -> UnitOfWork:
        """A fresh unit of work (one per use case, never shared between tasks)."""
        ...

    # The timeout is part of the contract (/healthz must answer quickly), hence the parameter.
    async def ping(self, timeout: float = 2.0) -> bool:  # noqa: ASYNC109
        """True when the database answers within `timeout` seconds; never raises."""
        ...

    async def dispose(self) -> None:
        """Close every pooled connection."""
        ...
