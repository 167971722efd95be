"""SQL implementations of the case log (`bot.domain.records.Cases`) and the Zendesk notes'
state machine (`TicketNotes`).

The report is computed by aggregates in the database (`GROUP BY` over `case_causes`, which
carries the case's time and account so each aggregate reads one table through one index), so
100,000 cases answer in well under a second on SQLite and PostgreSQL. Amounts are stored in
integer minor units of their currency and summed exactly.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, case, distinct, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.domain.money import Money
from bot.domain.records import (
    AlertTally,
    CaseRecord,
    CauseTally,
    RecurringTally,
    RequestCase,
    TicketNote,
)
from bot.storage.sql import dialect_insert, rowcount
from bot.storage.tables import CaseCauseRow, CaseRow, TicketNoteRow

#: Alert feedback that says the alert was right (the rest of the judged feedback says wrong).
USEFUL_FEEDBACK = ("acknowledged", "useful", "confirmed")
WRONG_FEEDBACK = ("not_an_anomaly", "not_anomaly", "false_positive")
_MAX_ERROR = 255


def _minor(amount: Decimal, currency: str) -> int:
    return Money(abs(amount), currency).to_minor()


def _major(minor: int | None, currency: str) -> Decimal:
    return Money.from_minor(int(minor or 0), currency).amount


def _window(column: Any, since: datetime, until: datetime) -> Any:
    return and_(column >= since, column < until)


class SqlCases:
    """`Cases` over the `cases` and `case_causes` tables."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def record(self, case: CaseRecord) -> int | None:
        """Store `case` and its causes (merged per cause and currency); None for a duplicate."""
        values: dict[str, Any] = {
            "created_at": case.at,
            "source": case.source[:16],
            "kind": case.kind[:16],
            "account_id": case.account_id,
            "ticket_id": case.ticket_id,
            "invoice_id": case.invoice_id,
            "request_id": case.request_id,
            "request_kind": case.request_kind,
            "request_reason": case.request_reason[:200] if case.request_reason else None,
            "request_status": case.request_status,
            "request_amount_minor": (
                _minor(case.request_amount, case.request_currency)
                if case.request_amount is not None and case.request_currency
                else None
            ),
            "request_currency": case.request_currency,
            "decided_at": case.decided_at,
            "alert_id": case.alert_id,
            "alert_kind": case.alert_kind,
            "alert_feedback": case.alert_feedback,
            "dedupe_key": case.dedupe_key,
        }
        statement = (
            dialect_insert(self._session, CaseRow)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
            .returning(CaseRow.id)
        )
        case_id = (await self._session.execute(statement)).scalar_one_or_none()
        if case_id is None:
            return None
        merged: dict[tuple[str, str], int] = {}
        for cause in case.causes:
            key = (cause.cause[:64], cause.currency.lower())
            merged[key] = merged.get(key, 0) + _minor(cause.amount, cause.currency)
        if merged:
            subject = case.invoice_id or (f"ticket:{case.ticket_id}" if case.ticket_id else None)
            await self._session.execute(
                dialect_insert(self._session, CaseCauseRow).values(
                    [
                        {
                            "case_id": case_id,
                            "cause": cause,
                            "currency": currency,
                            "amount_minor": minor,
                            "account_id": case.account_id,
                            "subject": (subject or f"case:{case_id}")[:255],
                            "created_at": case.at,
                        }
                        for (cause, currency), minor in merged.items()
                    ]
                )
            )
        return int(case_id)

    async def update_request(
        self,
        request_id: str,
        *,
        status: str,
        decided_at: datetime | None = None,
        amount: Decimal | None = None,
    ) -> int:
        """Record a request's outcome (and the amount decided, when it changed)."""
        values: dict[str, Any] = {"request_status": status}
        if decided_at is not None:
            values["decided_at"] = decided_at
        if amount is not None:
            currency = await self._session.scalar(
                select(CaseRow.request_currency).where(CaseRow.request_id == request_id).limit(1)
            )
            if currency:
                values["request_amount_minor"] = _minor(amount, currency)
        result = await self._session.execute(
            update(CaseRow).where(CaseRow.request_id == request_id).values(**values)
        )
        return rowcount(result)

    async def update_alert(self, alert_id: str, *, feedback: str) -> int:
        """Record the feedback on an alert's case."""
        result = await self._session.execute(
            update(CaseRow).where(CaseRow.alert_id == alert_id).values(alert_feedback=feedback)
        )
        return rowcount(result)

    async def count(self, since: datetime, until: datetime) -> int:
        """Cases recorded in `[since, until)`."""
        total = await self._session.scalar(
            select(func.count())
            .select_from(CaseRow)
            .where(_window(CaseRow.created_at, since, until))
        )
        return int(total or 0)

    async def causes(self, since: datetime, until: datetime) -> list[CauseTally]:
        """Cases, accounts and money per cause and currency."""
        c = CaseCauseRow
        rows = await self._session.execute(
            select(
                c.cause,
                c.currency,
                func.count(),
                func.count(distinct(c.account_id)),
                func.coalesce(func.sum(c.amount_minor), 0),
            )
            .where(_window(c.created_at, since, until))
            .group_by(c.cause, c.currency)
        )
        return [
            CauseTally(
                cause=cause,
                currency=currency,
                cases=int(cases),
                accounts=int(accounts),
                amount=_major(total, currency),
            )
            for cause, currency, cases, accounts, total in rows
        ]

    async def recurring(
        self, since: datetime, until: datetime, *, min_cases: int = 2, limit: int = 50
    ) -> list[RecurringTally]:
        """(account, cause) pairs on `min_cases`+ distinct subjects, with a few examples."""
        c = CaseCauseRow
        n = func.count(distinct(c.subject))
        rows = (
            await self._session.execute(
                select(c.account_id, c.cause, n)
                .where(_window(c.created_at, since, until), c.account_id.is_not(None))
                .group_by(c.account_id, c.cause)
                .having(n >= min_cases)
                .order_by(n.desc(), c.account_id, c.cause)
                .limit(limit)
            )
        ).all()
        out: list[RecurringTally] = []
        for account_id, cause, count in rows:
            examples = (
                await self._session.scalars(
                    select(c.subject)
                    .where(
                        c.account_id == account_id,
                        c.cause == cause,
                        _window(c.created_at, since, until),
                    )
                    .group_by(c.subject)
                    .order_by(func.max(c.created_at).desc())
                    .limit(3)
                )
            ).all()
            out.append(RecurringTally(str(account_id), str(cause), int(count), tuple(examples)))
        return out

    async def top_accounts(
        self, cause: str, since: datetime, until: datetime, *, limit: int = 3
    ) -> list[str]:
        """The accounts with the most cases of `cause` in the window."""
        c = CaseCauseRow
        rows = await self._session.scalars(
            select(c.account_id)
            .where(c.cause == cause, _window(c.created_at, since, until), c.account_id.is_not(None))
            .group_by(c.account_id)
            .order_by(func.count().desc(), c.account_id)
            .limit(limit)
        )
        return [str(r) for r in rows]

    async def requests(self, since: datetime, until: datetime) -> list[RequestCase]:
        """Refund and credit requests recorded in the window."""
        rows = await self._session.scalars(
            select(CaseRow).where(
                _window(CaseRow.created_at, since, until),
                CaseRow.request_id.is_not(None),
                CaseRow.kind.in_(("refund", "credit")),
            )
        )
        return [
            RequestCase(
                request_id=str(row.request_id),
                kind=row.request_kind or row.kind,
                reason=row.request_reason,
                status=row.request_status,
                amount=(
                    _major(row.request_amount_minor, row.request_currency)
                    if row.request_amount_minor is not None and row.request_currency
                    else None
                ),
                currency=row.request_currency,
                created_at=row.created_at,
                decided_at=row.decided_at,
            )
            for row in rows
        ]

    async def alerts(self, since: datetime, until: datetime) -> list[AlertTally]:
        """Alerts per kind, with how many were judged useful and judged at all."""
        useful = func.sum(case((CaseRow.alert_feedback.in_(USEFUL_FEEDBACK), 1), else_=0))
        judged = func.sum(
            case((CaseRow.alert_feedback.in_(USEFUL_FEEDBACK + WRONG_FEEDBACK), 1), else_=0)
        )
        rows = await self._session.execute(
            select(CaseRow.alert_kind, func.count(), useful, judged)
            .where(
                _window(CaseRow.created_at, since, until),
                CaseRow.kind == "alert",
                CaseRow.alert_kind.is_not(None),
            )
            .group_by(CaseRow.alert_kind)
        )
        return [AlertTally(str(kind), int(n), int(u or 0), int(j or 0)) for kind, n, u, j in rows]


def _note(row: TicketNoteRow) -> TicketNote:
    return TicketNote(
        ticket_id=int(row.ticket_id),
        draft_id=row.draft_id,
        state=row.state,
        body=row.body,
        created_at=row.created_at,
        updated_at=row.updated_at,
        account_id=row.account_id,
        created_by=row.created_by,
        posted_by=row.posted_by,
        claimed_by=row.claimed_by,
        claimed_at=row.claimed_at,
        posted_at=row.posted_at,
        comment_id=int(row.comment_id) if row.comment_id is not None else None,
        last_error=row.last_error,
    )


class SqlTicketNotes:
    """`TicketNotes` over `ticket_notes`: each transition one conditional UPDATE by rowcount."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    def _key(self, ticket_id: int, draft_id: str) -> Any:
        return and_(TicketNoteRow.ticket_id == ticket_id, TicketNoteRow.draft_id == draft_id)

    async def create(self, note: TicketNote) -> bool:
        """Store a `pending` note; False when it exists already."""
        statement = (
            dialect_insert(self._session, TicketNoteRow)
            .values(
                ticket_id=note.ticket_id,
                draft_id=note.draft_id,
                state="pending",
                body=note.body,
                account_id=note.account_id,
                created_by=note.created_by,
                created_at=note.created_at,
                updated_at=note.updated_at,
            )
            .on_conflict_do_nothing(index_elements=["ticket_id", "draft_id"])
        )
        return rowcount(await self._session.execute(statement)) == 1

    async def get(self, ticket_id: int, draft_id: str) -> TicketNote | None:
        """The note, if it exists."""
        row = await self._session.scalar(
            select(TicketNoteRow).where(self._key(ticket_id, draft_id))
        )
        return _note(row) if row is not None else None

    async def claim(
        self, ticket_id: int, draft_id: str, *, holder: str, user: str, now: datetime
    ) -> bool:
        """`pending → posting`: of any number of concurrent callers exactly one wins."""
        result = await self._session.execute(
            update(TicketNoteRow)
            .where(self._key(ticket_id, draft_id), TicketNoteRow.state == "pending")
            .values(
                state="posting",
                claimed_by=holder,
                claimed_at=now,
                posted_by=user,
                updated_at=now,
                last_error=None,
            )
        )
        return rowcount(result) == 1

    async def mark_posted(
        self, ticket_id: int, draft_id: str, *, comment_id: int | None, now: datetime
    ) -> bool:
        """`posting | unknown → posted`."""
        result = await self._session.execute(
            update(TicketNoteRow)
            .where(
                self._key(ticket_id, draft_id),
                TicketNoteRow.state.in_(("posting", "unknown")),
            )
            .values(
                state="posted",
                comment_id=comment_id,
                posted_at=now,
                updated_at=now,
                last_error=None,
            )
        )
        return rowcount(result) == 1

    async def mark_unknown(
        self,
        ticket_id: int,
        draft_id: str,
        *,
        holder: str | None,
        error: str,
        now: datetime,
        stale_before: datetime | None = None,
    ) -> bool:
        """`posting → unknown`, by the holder of the claim or, once stale, by anyone."""
        conditions = [self._key(ticket_id, draft_id), TicketNoteRow.state == "posting"]
        if stale_before is not None:
            conditions.append(TicketNoteRow.claimed_at < stale_before)
        elif holder is not None:
            conditions.append(TicketNoteRow.claimed_by == holder)
        result = await self._session.execute(
            update(TicketNoteRow)
            .where(*conditions)
            .values(state="unknown", updated_at=now, last_error=error[:_MAX_ERROR])
        )
        return rowcount(result) == 1

    async def release(
        self,
        ticket_id: int,
        draft_id: str,
        *,
        from_state: str,
        error: str,
        now: datetime,
        holder: str | None = None,
        claimed_before: datetime | None = None,
    ) -> bool:
        """`from_state → pending`: the note certainly did not reach the ticket."""
        conditions = [self._key(ticket_id, draft_id), TicketNoteRow.state == from_state]
        if holder is not None:
            conditions.append(TicketNoteRow.claimed_by == holder)
        if claimed_before is not None:
            conditions.append(
                or_(TicketNoteRow.claimed_at.is_(None), TicketNoteRow.claimed_at < claimed_before)
            )
        result = await self._session.execute(
            update(TicketNoteRow)
            .where(*conditions)
            .values(
                state="pending",
                claimed_by=None,
                claimed_at=None,
                updated_at=now,
                last_error=error[:_MAX_ERROR],
            )
        )
        return rowcount(result) == 1

    async def unsettled(self, *, limit: int = 50) -> list[TicketNote]:
        """Notes `unknown` or `posting`, oldest first."""
        rows = await self._session.scalars(
            select(TicketNoteRow)
            .where(TicketNoteRow.state.in_(("unknown", "posting")))
            .order_by(TicketNoteRow.updated_at)
            .limit(limit)
        )
        return [_note(r) for r in rows]
