"""`ApprovalRequests` over `approval_requests` and `request_approvals`.

Every state change is a single `UPDATE … WHERE id = :id AND state = :expected …`; its row count
says whether this caller made the change. On PostgreSQL a concurrent UPDATE of the same row waits
for the first to commit and then re-checks its WHERE against the new row, so of N concurrent
approvers exactly one moves `pending → approved`; on SQLite the single writer serialises them
(`BEGIN IMMEDIATE`). Each successful change bumps `version`, which names the outbox entry that
announces it.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.domain.approvals import HOLDING, Approval, ApprovalRequest, RequestState
from bot.domain.money import Money
from bot.storage.sql import dialect_insert, rowcount
from bot.storage.tables import ApprovalRequestRow, RequestApprovalRow

Row = ApprovalRequestRow


def _to_domain(row: Row, approvals: Sequence[RequestApprovalRow] = ()) -> ApprovalRequest:
    return ApprovalRequest(
        id=row.id,
        kind="refund" if row.kind == "refund" else "credit",
        state=RequestState(row.state),
        account_key=row.account_key,
        account_label=row.account_label,
        provider=row.provider,  # type: ignore[arg-type]  # written from a ProviderName
        customer_id=row.customer_id,
        amount=Money.from_minor(row.amount_minor, row.currency),
        reason=row.reason,
        requester=row.requester,
        created_at=row.created_at,
        expires_at=row.expires_at,
        required_approvals=row.required_approvals,
        channel=row.channel,
        payment_id=row.payment_id,
        customer_currency=row.customer_currency,
        account_id=row.account_id,
        approval_count=row.approval_count,
        approved_at=row.approved_at,
        decided_by=row.decided_by,
        decided_at=row.decided_at,
        decision_reason=row.decision_reason,
        provider_object_id=row.provider_object_id,
        provider_status=row.provider_status,
        failure=row.failure,
        attempts=row.attempts,
        claimed_by=row.claimed_by,
        claimed_until=row.claimed_until,
        version=row.version,
        updated_at=row.updated_at,
        context=dict(row.context or {}),
        approvals=tuple(Approval(a.approver, a.at) for a in approvals),
    )


class SqlApprovalRequests:
    """`ApprovalRequests` over one session."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    # -- reading and adding -------------------------------------------------------------------

    async def add(self, request: ApprovalRequest) -> None:
        """Store a new request."""
        self._session.add(
            Row(
                id=request.id,
                kind=request.kind,
                state=request.state.value,
                account_key=request.account_key,
                account_id=request.account_id,
                account_label=request.account_label[:255],
                provider=request.provider,
                customer_id=request.customer_id,
                customer_currency=request.customer_currency,
                payment_id=request.payment_id,
                amount_minor=request.amount.to_minor(),
                currency=request.amount.currency,
                reason=request.reason,
                requester=request.requester,
                channel=request.channel,
                required_approvals=request.required_approvals,
                approval_count=0,
                created_at=request.created_at,
                expires_at=request.expires_at,
                updated_at=request.created_at,
                attempts=0,
                version=0,
                context=dict(request.context),
            )
        )
        await self._session.flush()

    async def get(self, request_id: str) -> ApprovalRequest | None:
        """The request with its approvals, oldest first."""
        row = await self._session.get(Row, request_id, populate_existing=True)
        if row is None:
            return None
        approvals = (
            await self._session.scalars(
                select(RequestApprovalRow)
                .where(RequestApprovalRow.request_id == request_id)
                .order_by(RequestApprovalRow.at, RequestApprovalRow.approver)
            )
        ).all()
        return _to_domain(row, approvals)

    async def _many(self, query: Any) -> list[ApprovalRequest]:
        rows = (await self._session.scalars(query.execution_options(populate_existing=True))).all()
        if not rows:
            return []
        ids = [r.id for r in rows]
        approvals = (
            await self._session.scalars(
                select(RequestApprovalRow)
                .where(RequestApprovalRow.request_id.in_(ids))
                .order_by(RequestApprovalRow.at, RequestApprovalRow.approver)
            )
        ).all()
        by_request: dict[str, list[RequestApprovalRow]] = {}
        for approval in approvals:
            by_request.setdefault(approval.request_id, []).append(approval)
        return [_to_domain(r, by_request.get(r.id, ())) for r in rows]

    async def hold_payment(self, payment_id: str) -> None:
        """Serialise request creation on `payment_id` for the rest of this transaction."""
        if self._session.get_bind().dialect.name == "postgresql":
            key = zlib.crc32(f"bt-payment:{payment_id}".encode())
            await self._session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
        # SQLite: the transaction already holds the database's only write lock (BEGIN IMMEDIATE).

    async def holding(self, payment_id: str) -> list[ApprovalRequest]:
        """Unfinished requests on `payment_id`."""
        return await self._many(
            select(Row).where(
                Row.payment_id == payment_id, Row.state.in_([s.value for s in HOLDING])
            )
        )

    async def for_account(
        self,
        account_keys: Sequence[str],
        *,
        states: Sequence[RequestState] | None = None,
        limit: int = 20,
    ) -> list[ApprovalRequest]:
        """The newest requests of the account, newest first."""
        keys = [k for k in account_keys if k]
        if not keys:
            return []
        query = select(Row).where(or_(Row.account_key.in_(keys), Row.customer_id.in_(keys)))
        if states is not None:
            query = query.where(Row.state.in_([s.value for s in states]))
        return await self._many(query.order_by(Row.created_at.desc(), Row.id).limit(limit))

    async def recent(self, *, limit: int = 50) -> list[ApprovalRequest]:
        """The newest requests, newest first."""
        return await self._many(select(Row).order_by(Row.created_at.desc(), Row.id).limit(limit))

    # -- transitions --------------------------------------------------------------------------

    async def _transition(
        self, request_id: str, where: Sequence[ColumnElement[bool]], values: dict[str, Any]
    ) -> bool:
        values = {**values, "version": Row.version + 1}
        result = await self._session.execute(
            update(Row)
            .where(Row.id == request_id, *where)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return rowcount(result) == 1

    async def add_approval(self, request_id: str, approver: str, *, at: datetime) -> bool:
        """Record `approver`'s approval; False when it was recorded before."""
        statement = (
            dialect_insert(self._session, RequestApprovalRow)
            .values(request_id=request_id, approver=approver, at=at)
            .on_conflict_do_nothing(index_elements=["request_id", "approver"])
        )
        return rowcount(await self._session.execute(statement)) == 1

    async def approve(
        self, request_id: str, *, approver: str, now: datetime
    ) -> RequestState | None:
        """Count one approval; the new state, or None when the request was not pending."""
        # SET expressions read the row as it was before the UPDATE, on both databases.
        enough = Row.approval_count + 1 >= Row.required_approvals
        result = await self._session.execute(
            update(Row)
            .where(Row.id == request_id, Row.state == RequestState.PENDING.value)
            .where(Row.expires_at > now)
            .values(
                approval_count=Row.approval_count + 1,
                state=case((enough, RequestState.APPROVED.value), else_=Row.state),
                approved_at=case((enough, now), else_=Row.approved_at),
                decided_by=case((enough, approver), else_=Row.decided_by),
                decided_at=case((enough, now), else_=Row.decided_at),
                updated_at=now,
                version=Row.version + 1,
            )
            .returning(Row.state)
            .execution_options(synchronize_session=False)
        )
        state = result.scalar_one_or_none()
        return RequestState(state) if state is not None else None

    async def claim(
        self,
        request_id: str,
        *,
        source: RequestState,
        holder: str,
        now: datetime,
        until: datetime,
    ) -> bool:
        """`source` → `executing`, held by `holder`."""
        if source not in (RequestState.APPROVED, RequestState.FAILED):
            raise ValueError(f"a request is executed from approved or failed, not {source}")
        return await self._transition(
            request_id,
            [Row.state == source.value],
            {
                "state": RequestState.EXECUTING.value,
                "claimed_by": holder,
                "claimed_until": until,
                "attempts": Row.attempts + 1,
                "failure": None,
                "updated_at": now,
            },
        )

    async def reclaim(
        self, request_id: str, *, holder: str, now: datetime, until: datetime
    ) -> bool:
        """Take over an `executing` request whose lease ran out."""
        return await self._transition(
            request_id,
            [
                Row.state == RequestState.EXECUTING.value,
                or_(Row.claimed_until.is_(None), Row.claimed_until <= now),
            ],
            {
                "claimed_by": holder,
                "claimed_until": until,
                "attempts": Row.attempts + 1,
                "updated_at": now,
            },
        )

    async def renew(self, request_id: str, *, holder: str, until: datetime) -> bool:
        """Extend `holder`'s lease (no version bump: nothing anyone sees changed)."""
        result = await self._session.execute(
            update(Row)
            .where(
                Row.id == request_id,
                Row.state == RequestState.EXECUTING.value,
                Row.claimed_by == holder,
            )
            .values(claimed_until=until)
            .execution_options(synchronize_session=False)
        )
        return rowcount(result) == 1

    async def release(
        self, request_id: str, *, holder: str, now: datetime, problem: str | None = None
    ) -> bool:
        """End `holder`'s lease now; the request stays `executing` for the reconciler, with
        `problem` (why the outcome is unknown) kept to show."""
        return await self._transition(
            request_id,
            [Row.state == RequestState.EXECUTING.value, Row.claimed_by == holder],
            {"claimed_until": now, "updated_at": now, "failure": (problem or "")[:1000] or None},
        )

    async def executed(
        self, request_id: str, *, object_id: str, status: str, now: datetime
    ) -> bool:
        """`executing` → `executed`."""
        return await self._transition(
            request_id,
            [Row.state == RequestState.EXECUTING.value],
            {
                "state": RequestState.EXECUTED.value,
                "provider_object_id": object_id[:255],
                "provider_status": status[:64],
                "failure": None,
                "claimed_by": None,
                "claimed_until": None,
                "updated_at": now,
            },
        )

    async def fail(self, request_id: str, *, message: str, now: datetime) -> bool:
        """`executing` → `failed`."""
        return await self._transition(
            request_id,
            [Row.state == RequestState.EXECUTING.value],
            {
                "state": RequestState.FAILED.value,
                "failure": message[:1000],
                "claimed_by": None,
                "claimed_until": None,
                "updated_at": now,
            },
        )

    async def deny(self, request_id: str, *, by: str, reason: str, now: datetime) -> bool:
        """`pending` → `denied`."""
        return await self._transition(
            request_id,
            [Row.state == RequestState.PENDING.value],
            {
                "state": RequestState.DENIED.value,
                "decided_by": by,
                "decided_at": now,
                "decision_reason": reason[:1000],
                "updated_at": now,
            },
        )

    async def expire(self, request_id: str, *, now: datetime) -> bool:
        """`pending` → `expired` once its time is up."""
        return await self._transition(
            request_id,
            [Row.state == RequestState.PENDING.value, Row.expires_at <= now],
            {"state": RequestState.EXPIRED.value, "decided_at": now, "updated_at": now},
        )

    # -- the periodic job's queries -------------------------------------------------------------

    async def expiring(self, *, now: datetime, limit: int = 100) -> list[str]:
        """Pending requests whose time ran out."""
        rows = await self._session.scalars(
            select(Row.id)
            .where(Row.state == RequestState.PENDING.value, Row.expires_at <= now)
            .order_by(Row.expires_at)
            .limit(limit)
        )
        return list(rows)

    async def unfinished(
        self, *, now: datetime, approved_before: datetime, limit: int = 100
    ) -> list[ApprovalRequest]:
        """Requests left approved, or executing with an expired lease."""
        stale_approved = and_(
            Row.state == RequestState.APPROVED.value, Row.updated_at <= approved_before
        )
        stale_executing = and_(
            Row.state == RequestState.EXECUTING.value,
            or_(Row.claimed_until.is_(None), Row.claimed_until <= now),
        )
        return await self._many(
            select(Row)
            .where(or_(stale_approved, stale_executing))
            .order_by(Row.updated_at)
            .limit(limit)
        )
