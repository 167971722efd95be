"""Cases (DESIGN §11): every piece of triage the bot does is recorded, with its top causes and
their amounts, so the recurring-issue report can say which causes keep coming back.

`record_case` is the one entry point (status, explain, draft, ticket today; refunds, credits and
alerts call it from their flows). It never raises: a case that cannot be stored is logged and
counted, and the user's answer goes out regardless. Only IDs, kinds and amounts are stored; the
one free text is a request's short reason (what "refunds by reason" needs).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal

from bot.domain.approvals import ApprovalRequest
from bot.domain.findings import Explanation
from bot.domain.money import Money
from bot.domain.records import CaseCause, CaseRecord, Store

log = logging.getLogger("bot.cases")

#: Findings of an explanation recorded as its causes (the engine ranks them by |amount|).
TOP_CAUSES = 3
#: Where a case came from / what the bot did (DESIGN §11).
SOURCES = ("command", "mention", "ticket", "alert")
#: A button that re-runs an answer (Share in channel, Regenerate): the same triage, not a case.
RERUN = "button"
KINDS = ("status", "explain", "draft", "ticket", "refund", "credit", "alert")


def causes_of(explanation: Explanation | None, *, top: int = TOP_CAUSES) -> list[tuple[str, Money]]:
    """The explanation's top findings as (kind, amount), duplicate charges included."""
    if explanation is None:
        return []
    out = [(f.kind.value, f.amount) for f in explanation.findings[:top]]
    out.extend((f.kind.value, f.amount) for f in explanation.duplicate_payments)
    return out


def daily_key(
    kind: str, source: str, account_id: str | None, subject: str | None, at: datetime
) -> str:
    """One case per kind, source, account and subject per UTC day: looking the same thing up
    again that day (or a Slack retry) is not a new case."""
    return f"{kind}:{source}:{account_id or '-'}:{subject or '-'}:{at.astimezone(UTC).date()}"[:255]


async def record_case(
    store: Store,
    *,
    source: str,
    kind: str,
    account_id: str | None,
    findings: Sequence[tuple[str, Money]] = (),
    ticket_id: str | int | None = None,
    invoice_id: str | None = None,
    request_id: str | None = None,
    request_kind: str | None = None,
    request_reason: str | None = None,
    request_status: str | None = None,
    request_amount: Money | None = None,
    decided_at: datetime | None = None,
    alert_id: str | None = None,
    alert_kind: str | None = None,
    alert_feedback: str | None = None,
    dedupe_key: str | None = None,
    at: datetime | None = None,
) -> int | None:
    """Store one case; its ID, or None when it was a duplicate or could not be stored.

    - `source`: `command` | `mention` | `ticket` | `alert` (`button`, a re-run of an answer
      such as Share or Regenerate, records nothing); `kind`: `status` |
      `explain` | `draft` | `ticket` | `refund` | `credit` | `alert`.
    - `findings`: (finding kind, signed amount) pairs — `causes_of(explanation)`: root causes are
      finding kinds (`FindingKind`), never alert kinds; an alert passes its explanation's
      findings if it has one, and its kind as `alert_kind`.
    - refunds and credits: `request_id`, `request_kind`, `request_reason` (≤ 200 characters),
      `request_status` (`requested`, later `approved`/`denied`/`expired` through
      `record_request_outcome`), `request_amount`; alerts: `alert_id`, `alert_kind`, and later
      `record_alert_feedback`.
    - `dedupe_key`: defaults to one case per request, per alert, per ticket, or per
      (kind, source, account, invoice) and UTC day.
    """
    if source == RERUN:
        return None
    when = at or datetime.now(UTC)
    if dedupe_key is None:
        if request_id:
            dedupe_key = f"request:{request_id}"
        elif alert_id:
            dedupe_key = f"alert:{alert_id}"
        elif ticket_id is not None:
            dedupe_key = f"ticket:{ticket_id}"
        else:
            dedupe_key = daily_key(kind, source, account_id, invoice_id, when)
    causes = tuple(
        CaseCause(cause=cause, amount=abs(money.amount), currency=money.currency)
        for cause, money in findings
        if money.amount != 0 or cause == "duplicate_charge"
    )
    case = CaseRecord(
        at=when,
        source=source,
        kind=kind,
        account_id=account_id,
        causes=causes,
        ticket_id=str(ticket_id) if ticket_id is not None else None,
        invoice_id=invoice_id,
        request_id=request_id,
        request_kind=request_kind,
        request_reason=(request_reason or None) and request_reason[:200],
        request_status=request_status,
        request_amount=request_amount.amount if request_amount is not None else None,
        request_currency=request_amount.currency if request_amount is not None else None,
        decided_at=decided_at,
        alert_id=alert_id,
        alert_kind=alert_kind,
        alert_feedback=alert_feedback,
        dedupe_key=dedupe_key,
    )
    try:
        async with store.uow() as uow:
            case_id = await uow.cases.record(case)
            await uow.commit()
    except Exception:  # a case is for learning later; it must never cost the user an answer
        log.warning("could not record a case", extra={"kind": kind}, exc_info=True)
        return None
    return case_id


async def record_request_outcome(
    store: Store,
    request_id: str,
    *,
    status: str,
    decided_at: datetime | None = None,
    amount: Decimal | None = None,
) -> bool:
    """Record a refund or credit request's outcome on its case (`approved`, `denied`,
    `expired`, `executed`); False when there is no such case or it could not be stored."""
    try:
        async with store.uow() as uow:
            updated = await uow.cases.update_request(
                request_id, status=status, decided_at=decided_at or datetime.now(UTC), amount=amount
            )
            await uow.commit()
    except Exception:
        log.warning("could not record a request outcome", exc_info=True)
        return False
    return updated > 0


async def record_alert_feedback(store: Store, alert_id: str, *, feedback: str) -> bool:
    """Record feedback on an alert's case (`acknowledged` = useful, `not_an_anomaly` = wrong,
    anything else, e.g. `snoozed`, is not a judgement); False when there is no such case."""
    try:
        async with store.uow() as uow:
            updated = await uow.cases.update_alert(alert_id, feedback=feedback)
            await uow.commit()
    except Exception:
        log.warning("could not record alert feedback", exc_info=True)
        return False
    return updated > 0


def request_case(request: ApprovalRequest, *, origin: str) -> CaseRecord:
    """The case of a refund or credit request, stored with the request (same transaction)."""
    return CaseRecord(
        at=request.created_at,
        source=origin if origin in SOURCES else "command",
        kind=request.kind,
        account_id=request.account_id or request.account_key,
        request_id=request.id,
        request_kind=request.kind,
        request_reason=request.reason[:200] if request.reason else None,
        request_status=request.state.value,
        request_amount=request.amount.amount,
        request_currency=request.amount.currency,
        dedupe_key=f"request:{request.id}",
    )


def request_decided_at(request: ApprovalRequest, now: datetime) -> datetime | None:
    """When a request was decided (approved, denied or expired), for time-to-decision."""
    if request.state.value == "pending":
        return None
    return request.decided_at or request.approved_at or now


def alert_case(
    alert_id: int | str, *, account_id: str | None, kind: str, at: datetime
) -> CaseRecord:
    """The case of a new anomaly alert (its feedback is recorded later on the same case)."""
    return CaseRecord(
        at=at,
        source="alert",
        kind="alert",
        account_id=account_id,
        alert_id=str(alert_id),
        alert_kind=kind,
        dedupe_key=f"alert:{alert_id}",
    )
