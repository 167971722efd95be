"""The recurring-issue report (DESIGN §11) over the stored cases, and its JSON/CSV forms.

Every number comes from aggregates the database computes (`Cases.causes`, `recurring`, …): the
window and the previous window of the same length, compared cause by cause. A **wave** is a cause
that hit at least `WAVE_MIN_ACCOUNTS` accounts in the window and at least twice as many as in the
previous window (one price change behind a burst of tickets).
"""

from __future__ import annotations

import csv
import io
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from bot.domain.money import Money
from bot.domain.records import RecurringTally, RequestCase, Store
from bot.errors import UsageError

#: Windows `/billing report` accepts; the CLI takes any `--days` in [MIN_DAYS, MAX_DAYS].
WINDOWS = {"7d": 7, "30d": 30, "90d": 90}
DEFAULT_DAYS = 30
MIN_DAYS = 1
MAX_DAYS = 365
WAVE_MIN_ACCOUNTS = 3
RECURRING_SHOWN = 50
APPROVED = ("approved", "executing", "executed")
DENIED = ("denied", "expired")


def parse_window(text: str | None) -> int:
    """`7d`, `30d` or `90d` (default 30) as days; anything else is a `UsageError`."""
    value = (text or "").strip().lower()
    if not value:
        return DEFAULT_DAYS
    if value in WINDOWS:
        return WINDOWS[value]
    raise UsageError(
        f"`{value[:20]}` is not a report window. Use `7d`, `30d` or `90d` "
        "(e.g. `/billing report 7d`)."
    )


def check_days(days: int) -> int:
    """`days` if it is a window the report can cover, else a `UsageError` saying the range."""
    if not MIN_DAYS <= days <= MAX_DAYS:
        raise UsageError(
            f"--days must be between {MIN_DAYS} and {MAX_DAYS} (got {days}); e.g. --days 30."
        )
    return days


@dataclass(frozen=True, slots=True)
class CauseLine:
    """One root cause (in one currency) in the window, with the previous window's count."""

    cause: str
    currency: str
    cases: int
    accounts: int
    amount: Decimal
    previous_cases: int
    previous_accounts: int = 0

    @property
    def money(self) -> Money:
        """The amount as money."""
        return Money(self.amount, self.currency)


@dataclass(frozen=True, slots=True)
class Wave:
    """A cause that hit many accounts at once, with a few of them as examples."""

    cause: str
    accounts: int
    previous_accounts: int
    examples: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReasonLine:
    """Refunds and credits for one reason."""

    reason: str
    requested: int
    approved: int
    denied: int
    amount_approved: Decimal
    median_hours: Decimal | None


@dataclass(frozen=True, slots=True)
class AlertLine:
    """Alerts of one kind and the share of judged ones that were right."""

    kind: str
    alerts: int
    judged: int
    precision: Decimal | None


@dataclass(frozen=True)
class Report:
    """The report of one window."""

    window_days: int
    since: datetime
    until: datetime
    cases: int
    previous_cases: int
    causes: tuple[CauseLine, ...]
    recurring: tuple[RecurringTally, ...]
    waves: tuple[Wave, ...]
    requested: int
    approved: int
    denied: int
    amount_approved: Decimal
    currency: str
    median_hours: Decimal | None
    reasons: tuple[ReasonLine, ...]
    alerts: tuple[AlertLine, ...]
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_json(self) -> dict[str, Any]:
        """Exactly the `--json` shape of DESIGN §11 (amounts as decimal strings)."""
        return {
            "window_days": self.window_days,
            "cases": self.cases,
            "causes": [
                {
                    "cause": c.cause,
                    "cases": c.cases,
                    "accounts": c.accounts,
                    "amount": _decimal(c.money),
                    "currency": c.currency,
                    "previous_cases": c.previous_cases,
                }
                for c in self.causes
            ],
            "recurring": [
                {"account": r.account_id, "cause": r.cause, "cases": r.cases}
                for r in self.recurring
            ],
            "requests": {
                "requested": self.requested,
                "approved": self.approved,
                "denied": self.denied,
                "amount_approved": _decimal(Money(self.amount_approved, self.currency)),
            },
            "alerts": {
                a.kind: {
                    "alerts": a.alerts,
                    "precision": f"{a.precision:.2f}" if a.precision is not None else None,
                }
                for a in self.alerts
            },
        }

    def to_csv(self) -> str:
        """The ranked causes as CSV (one row per cause and currency), then the recurring pairs."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(
            [
                "section",
                "cause",
                "currency",
                "cases",
                "accounts",
                "amount",
                "previous_cases",
                "account",
            ]
        )
        for c in self.causes:
            writer.writerow(
                [
                    "cause",
                    c.cause,
                    c.currency,
                    c.cases,
                    c.accounts,
                    _decimal(c.money),
                    c.previous_cases,
                    "",
                ]
            )
        for r in self.recurring:
            writer.writerow(["recurring", r.cause, "", r.cases, 1, "", "", r.account_id])
        return out.getvalue()


def _decimal(money: Money) -> str:
    return f"{money.quantize().amount:f}"


def _median_hours(requests: list[RequestCase]) -> Decimal | None:
    hours = [
        Decimal(str((r.decided_at - r.created_at).total_seconds())) / 3600
        for r in requests
        if r.decided_at is not None and r.status in APPROVED + DENIED
    ]
    if not hours:
        return None
    return Decimal(statistics.median(hours)).quantize(Decimal("0.1"))


def _reason_key(reason: str | None) -> str:
    text = re.sub(r"\s+", " ", (reason or "").strip().lower())
    return text[:60] or "(no reason)"


async def build_report(store: Store, *, days: int, now: datetime | None = None) -> Report:
    """The report of the `days` days up to `now`, compared with the `days` before."""
    check_days(days)
    until = now or datetime.now(UTC)
    since = until - timedelta(days=days)
    before = since - timedelta(days=days)
    async with store.uow() as uow:
        cases = await uow.cases.count(since, until)
        previous_cases = await uow.cases.count(before, since)
        current = await uow.cases.causes(since, until)
        previous = {(c.cause, c.currency): c for c in await uow.cases.causes(before, since)}
        recurring = await uow.cases.recurring(since, until, limit=RECURRING_SHOWN)
        requests = await uow.cases.requests(since, until)
        alert_tallies = await uow.cases.alerts(since, until)
        lines = [
            CauseLine(
                cause=c.cause,
                currency=c.currency,
                cases=c.cases,
                accounts=c.accounts,
                amount=c.amount,
                previous_cases=previous[(c.cause, c.currency)].cases
                if (c.cause, c.currency) in previous
                else 0,
                previous_accounts=previous[(c.cause, c.currency)].accounts
                if (c.cause, c.currency) in previous
                else 0,
            )
            for c in current
        ]
        lines.sort(key=lambda c: (-c.cases, -c.amount, c.cause, c.currency))
        waves: list[Wave] = []
        for line in lines:
            if line.accounts >= WAVE_MIN_ACCOUNTS and line.accounts >= 2 * line.previous_accounts:
                examples = await uow.cases.top_accounts(line.cause, since, until)
                waves.append(
                    Wave(line.cause, line.accounts, line.previous_accounts, tuple(examples))
                )
    currencies = Counter(r.currency for r in requests if r.currency)
    currency = currencies.most_common(1)[0][0] if currencies else "usd"
    approved = [r for r in requests if r.status in APPROVED]
    by_reason: dict[str, list[RequestCase]] = {}
    for r in requests:
        by_reason.setdefault(_reason_key(r.reason), []).append(r)
    reasons = tuple(
        sorted(
            (
                ReasonLine(
                    reason=reason,
                    requested=len(group),
                    approved=sum(1 for r in group if r.status in APPROVED),
                    denied=sum(1 for r in group if r.status in DENIED),
                    amount_approved=sum(
                        (
                            r.amount or Decimal(0)
                            for r in group
                            if r.status in APPROVED and r.currency == currency
                        ),
                        Decimal(0),
                    ),
                    median_hours=_median_hours(group),
                )
                for reason, group in by_reason.items()
            ),
            key=lambda line: (-line.requested, line.reason),
        )
    )
    alerts = tuple(
        sorted(
            (
                AlertLine(
                    kind=a.kind,
                    alerts=a.alerts,
                    judged=a.judged,
                    precision=(Decimal(a.useful) / Decimal(a.judged)).quantize(Decimal("0.01"))
                    if a.judged
                    else None,
                )
                for a in alert_tallies
            ),
            key=lambda line: (-line.alerts, line.kind),
        )
    )
    return Report(
        window_days=days,
        since=since,
        until=until,
        cases=cases,
        previous_cases=previous_cases,
        causes=tuple(lines),
        recurring=tuple(recurring),
        waves=tuple(waves),
        requested=len(requests),
        approved=len(approved),
        denied=sum(1 for r in requests if r.status in DENIED),
        amount_approved=sum(
            (r.amount or Decimal(0) for r in approved if r.currency == currency), Decimal(0)
        ),
        currency=currency,
        median_hours=_median_hours(requests),
        reasons=reasons,
        alerts=alerts,
        generated_at=until,
    )


def cause_label(cause: str) -> str:
    """`usage_growth` → `usage growth`."""
    return cause.replace("_", " ")


def _delta(now: int, before: int) -> str:
    diff = now - before
    return f"+{diff}" if diff > 0 else str(diff) if diff < 0 else "±0"


def table_lines(report: Report, *, limit: int = 20) -> list[str]:
    """The ranked causes as a fixed-width table (the CLI on a terminal, Slack in a code block)."""
    rows = [("#", "cause", "cases", "prev", "change", "accounts", "amount")]
    for rank, c in enumerate(report.causes[:limit], start=1):
        rows.append(
            (
                str(rank),
                cause_label(c.cause),
                str(c.cases),
                str(c.previous_cases),
                _delta(c.cases, c.previous_cases),
                str(c.accounts),
                c.money.format(),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {0, 2, 3, 4, 5, 6}
    return [
        "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]


def text_report(report: Report) -> str:
    """The whole report as terminal text."""
    out = [
        f"Recurring-issue report: the last {report.window_days} days "
        f"({report.since:%Y-%m-%d} to {report.until:%Y-%m-%d})",
        f"{report.cases} cases ({_delta(report.cases, report.previous_cases)} vs the "
        f"{report.window_days} days before)",
        "",
    ]
    if report.causes:
        out.extend(table_lines(report))
    else:
        out.append("No causes recorded in this window.")
    if report.recurring:
        out += ["", "Recurring (same cause, same account, 2+ times):"]
        for r in report.recurring[:20]:
            examples = f" — {', '.join(r.examples)}" if r.examples else ""
            out.append(f"  {r.account_id}: {cause_label(r.cause)} ×{r.cases}{examples}")
    if report.waves:
        out += ["", "Waves (one cause, many accounts at once):"]
        for w in report.waves:
            out.append(
                f"  {cause_label(w.cause)}: {w.accounts} accounts (previous window "
                f"{w.previous_accounts}), e.g. {', '.join(w.examples)}"
            )
    out += ["", requests_line(report)]
    for reason in report.reasons[:10]:
        median = f", median {reason.median_hours} h" if reason.median_hours is not None else ""
        out.append(
            f"  {reason.reason}: {reason.requested} requested, {reason.approved} approved, "
            f"{reason.denied} denied, {Money(reason.amount_approved, report.currency).format()}"
            f" approved{median}"
        )
    if report.alerts:
        out += ["", "Alerts by kind:"]
        for a in report.alerts:
            precision = f"precision {a.precision:.2f}" if a.precision is not None else "no feedback"
            out.append(f"  {cause_label(a.kind)}: {a.alerts} ({precision}, {a.judged} judged)")
    return "\n".join(out)


def requests_line(report: Report) -> str:
    """Refunds and credits in one line."""
    median = (
        f", median {report.median_hours} h to decision" if report.median_hours is not None else ""
    )
    return (
        f"Refunds and credits: {report.requested} requested, {report.approved} approved, "
        f"{report.denied} denied, {Money(report.amount_approved, report.currency).format()} "
        f"approved{median}"
    )
