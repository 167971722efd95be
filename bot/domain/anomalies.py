"""Anomaly detectors (DESIGN §5): usage spikes, invoice jumps, failed payments, opened disputes and
duplicate charges, found in one account's `BillingSnapshot`.

`detect(snapshot, config=…, today=…)` looks only at the recent window (a scan runs every 15
minutes and the caller deduplicates on `(account, kind, period)`):

- **usage_spike**: each of the last `usage_days_back` complete days, per metric, against a
  baseline fitted on the `lookback_days` before them. With `min_history_days` (14) or more days of
  history the baseline is a statistic: per-weekday factors, a robust level (median of the last
  two weeks), a robust trend (Theil–Sen, never negative, capped) and a noise band from the median
  absolute deviation of the log residuals; a day alerts when it is `spike_sigmas` (4) bands above,
  at least `spike_min_ratio` (1.5×) the expected value and `spike_min_impact` ($50) above it,
  and not a peak the account has already had `spike_usual_repeats` (2) times in the lookback.
  With less history (from `min_rule_days`, 3) a rule decides: `spike_rule_ratio` (3×) the median
  of the recent days, above the same money floor. A known plan change restarts the baseline at
  the change, so the new plan's level is never a spike.
- **invoice_jump**: each regular invoice dated in the last `invoice_days_back` days against the
  median of the previous `jump_history` comparable invoices, each projected forward by the
  account's own month-over-month growth. What the findings engine attributes to a plan change,
  prorations, an expired discount, used-up credits or a change in customer balance is taken out
  (`jump_explained_by`); the rest must clear `jump_min_impact` ($100) and `jump_min_pct` (25%).
- **payment_failed**: a payment (Stripe charge, Orb payment attempt) that failed and was not later
  paid, or an invoice that went past due; alerting while it stays unpaid, dated by the first
  failure.
- **dispute_opened**: a dispute opened in the last `event_days_back` days, or any still waiting
  for the merchant's response.
- **duplicate_charge**: two successful charges of one amount within 24 h that do not pay two
  different invoices (the findings engine's rule), the later one in the last `event_days_back`
  days and not refunded already.

"Not an anomaly" feedback arrives as `Suppression`s: an anomaly with the same account, kind and
fingerprint is suppressed until its magnitude exceeds `suppression_growth` (1.5×) the suppressed
one's; then it alerts again and its `why` says so.

Pure: imports only the standard library and `bot.domain` / `bot.errors`.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Any, Literal

from bot.domain.findings import (
    DUPLICATE_WINDOW,
    Finding,
    FindingKind,
    duplicate_charges,
    explain_invoice,
)
from bot.domain.models import (
    BillingSnapshot,
    Dispute,
    Invoice,
    InvoiceStatus,
    LineKind,
    Payment,
    PaymentStatus,
    ProviderName,
    ProviderSnapshot,
)
from bot.domain.money import Money
from bot.domain.sparkline import sparkline

__all__ = [
    "AlertKind",
    "Anomaly",
    "DetectionResult",
    "DetectorConfig",
    "Driver",
    "PlanChange",
    "SeriesPoint",
    "Severity",
    "Suppression",
    "detect",
    "plan_changes",
]

ZERO = Decimal(0)
ONE = Decimal(1)
D = Decimal


class AlertKind(enum.StrEnum):
    """The kinds of anomaly alert (DESIGN §5)."""

    USAGE_SPIKE = "usage_spike"
    INVOICE_JUMP = "invoice_jump"
    PAYMENT_FAILED = "payment_failed"
    DISPUTE_OPENED = "dispute_opened"
    DUPLICATE_CHARGE = "duplicate_charge"
    #: A provider's own threshold or credit alert, received by webhook (Orb usage or cost
    #: exceeded, credit balance dropped or depleted; Metronome alerts; Stripe billing alerts).
    PROVIDER_ALERT = "provider_alert"


class Severity(enum.StrEnum):
    """How urgent an alert is."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


@dataclass(frozen=True, slots=True)
class Driver:
    """What drives an anomaly: a metric, an invoice line, a charge or a dispute."""

    label: str
    amount: Money | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    """One point of an anomaly's chart: a day's usage or one invoice's total."""

    day: date
    actual: Decimal
    expected: Decimal | None = None
    low: Decimal | None = None
    high: Decimal | None = None
    anomalous: bool = False


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One detected anomaly, with everything an alert shows."""

    #: Our account ID, else the provider customer ID (DESIGN §5).
    account_id: str
    kind: AlertKind
    severity: Severity
    #: The day the anomaly is about (DESIGN §5: the spike's day, the invoice date, the (first)
    #: failure date, the dispute's creation date, the later charge's date).
    period: date
    expected: Money
    actual: Money
    #: The money at stake, positive: `actual − expected` for spikes, jumps and duplicates; the
    #: unpaid amount for a failed payment; the disputed amount for a dispute.
    impact: Money
    #: `impact / expected × 100`, None when nothing was expected (disputes).
    impact_pct: Decimal | None
    #: One line of plain text (no Slack markup).
    summary: str
    #: The rule or statistic, the baseline it compared with and the floor it cleared.
    why: str
    drivers: tuple[Driver, ...]
    provider: ProviderName
    #: Provider object IDs involved (invoices, charges, disputes), for links.
    refs: tuple[str, ...]
    #: The last `series_days` days (usage) or the last 12 invoices; () for event kinds.
    series: tuple[SeriesPoint, ...]
    #: The pattern "Not an anomaly" applies to, stable across scans (`usage_spike:api_requests`).
    fingerprint: str
    #: A comparable size of the pattern (ratio to baseline, or an amount) for "until it changes".
    magnitude: Decimal
    #: A previous alert of this pattern was marked not an anomaly (and this one is larger).
    resurfaced: bool = False

    @property
    def dedupe_key(self) -> tuple[str, str, date]:
        """What the caller deduplicates alerts on (DESIGN §5)."""
        return (self.account_id, self.kind.value, self.period)

    @property
    def currency(self) -> str:
        """The currency of the amounts."""
        return self.actual.currency

    def sparkline(self) -> str:
        """The series' actual values as one line of Unicode bars ("" for event kinds)."""
        return sparkline([p.actual for p in self.series])

    def to_json(self) -> dict[str, str]:
        """The `scan --json` object (DESIGN §5): amounts as decimal strings in major units."""
        return {
            "account": self.account_id,
            "kind": self.kind.value,
            "severity": self.severity.value,
            "period": self.period.isoformat(),
            "expected": self.expected.decimal_str(),
            "actual": self.actual.decimal_str(),
            "impact": self.impact.decimal_str(),
            "currency": self.currency,
            "summary": self.summary,
        }

    def text_lines(self) -> list[str]:
        """Plain-text rendering (shell, logs, a failed chart upload): headline, why, drivers and
        the sparkline."""
        pct = f" ({_pct_text(self.impact_pct)})" if self.impact_pct is not None else ""
        lines = [
            f"[{self.severity.value}] {self.kind.value} · {self.account_id} · "
            f"{self.period.isoformat()}: {self.summary}",
            f"expected {self.expected.format()}, actual {self.actual.format()}, "
            f"impact {self.impact.format()}{pct}",
            f"why: {self.why}",
        ]
        lines.extend(
            f"· {d.label}"
            + (f" {d.amount.format()}" if d.amount else "")
            + (f" ({d.detail})" if d.detail else "")
            for d in self.drivers
        )
        spark = self.sparkline()
        if spark:
            lines.append(spark)
        return lines


@dataclass(frozen=True, slots=True)
class Suppression:
    """A "Not an anomaly" click: this pattern on this account stops alerting until it changes."""

    account_id: str
    kind: AlertKind
    fingerprint: str
    magnitude: Decimal
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DetectionResult:
    """What `detect` found: the anomalies to alert on, and those a suppression held back."""

    anomalies: tuple[Anomaly, ...]
    suppressed: tuple[tuple[Anomaly, Suppression], ...] = ()


_EXPLAINED_BY_TERMS = frozenset(
    {
        FindingKind.PLAN_CHANGE,
        FindingKind.PRORATION,
        FindingKind.DISCOUNT_ENDED,
        FindingKind.CREDIT_DEPLETED,
        FindingKind.BALANCE_APPLIED,
    }
)


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """Floors, thresholds and windows of the detectors. Money floors are in major units of the
    account's currency. The defaults are documented in docs (detectors) and tuned on the sandbox's
    labelled population."""

    # -- windows
    #: Complete days checked for usage spikes: yesterday and the days before it.
    usage_days_back: int = 3
    #: Regular invoices dated within this many days are checked for jumps.
    invoice_days_back: int = 7
    #: Failed payments, disputes and duplicate charges within this many days alert.
    event_days_back: int = 7
    #: Days of usage history the spike baseline uses (three months, so a monthly peak has been
    #: seen twice before). The snapshot needs `lookback_days + usage_days_back` days of usage.
    lookback_days: int = 90
    #: Days of usage a usage anomaly's series (chart, sparkline) shows.
    series_days: int = 60
    #: Statistics need this many days of history before the checked days; rules work below it.
    min_history_days: int = 14
    #: The rule needs this many days of history (fewer: no baseline, nothing is said).
    min_rule_days: int = 3

    # -- usage_spike
    spike_min_impact: Decimal = Decimal(50)
    spike_min_ratio: Decimal = Decimal("1.5")
    spike_sigmas: Decimal = Decimal(4)
    #: Floor of the log-scale noise estimate (very smooth series would otherwise alert on +10%).
    spike_min_sigma: Decimal = Decimal("0.05")
    #: Largest trend the baseline extrapolates, per day (5%/day ≈ 4.3×/month).
    spike_max_daily_growth: Decimal = Decimal("0.05")
    #: Rule path: the day against the median of the recent days.
    spike_rule_ratio: Decimal = Decimal(3)
    #: A peak at least this many times seen in the lookback (at ≥ 75% of this one's log size) is
    #: the account's usual behaviour (a monthly batch, a billing run), not a spike.
    spike_usual_repeats: int = 2
    #: Metrics with no known price (Metronome quantities with no matching invoice line) have no
    #: money impact; they alert only when this is on (then on the ratio alone, amounts 0).
    alert_unpriced_usage: bool = False
    spike_medium_impact: Decimal = Decimal(250)
    spike_high_impact: Decimal = Decimal(1000)

    # -- invoice_jump
    jump_min_impact: Decimal = Decimal(100)
    jump_min_pct: Decimal = Decimal(25)
    #: Previous comparable invoices in the baseline (their median, projected by growth).
    jump_history: int = 3
    #: The account's month-over-month growth used to project the baseline is clamped to this.
    jump_max_growth: Decimal = Decimal(2)
    #: Finding kinds that explain an increase away (the account's own terms changed).
    jump_explained_by: frozenset[FindingKind] = _EXPLAINED_BY_TERMS
    jump_medium_impact: Decimal = Decimal(500)
    jump_high_impact: Decimal = Decimal(2500)

    # -- payment_failed
    payment_min_amount: Decimal = Decimal(1)
    #: A single failure under this is low severity.
    payment_low_amount: Decimal = Decimal(50)
    payment_high_amount: Decimal = Decimal(1000)
    #: This many failed attempts on one payment make it high severity.
    payment_high_attempts: int = 3

    # -- dispute_opened
    dispute_min_amount: Decimal = Decimal(0)
    dispute_high_amount: Decimal = Decimal(1000)
    #: Evidence due within this many days makes a dispute high severity.
    dispute_urgent_days: int = 3

    # -- duplicate_charge
    duplicate_min_amount: Decimal = Decimal(1)
    #: Two charges further apart are not duplicates (the findings engine's rule is 24 h; a
    #: shorter window filters its pairs, a longer one is refused).
    duplicate_window: timedelta = DUPLICATE_WINDOW
    duplicate_high_amount: Decimal = Decimal(1000)

    # -- feedback
    #: A suppressed pattern alerts again once its magnitude exceeds this × the suppressed one.
    suppression_growth: Decimal = Decimal("1.5")

    def __post_init__(self) -> None:
        if self.duplicate_window > DUPLICATE_WINDOW:
            raise ValueError("duplicate_window cannot exceed the findings engine's 24 h rule")
        if self.usage_days_back < 1 or self.lookback_days <= self.usage_days_back:
            raise ValueError("need 1 ≤ usage_days_back < lookback_days")
        if self.min_rule_days < 1 or self.min_history_days < self.min_rule_days:
            raise ValueError("need 1 ≤ min_rule_days ≤ min_history_days")


# =========================================================================== entry point


def detect(
    snapshot: BillingSnapshot,
    *,
    config: DetectorConfig,
    today: date,
    suppressions: Sequence[Suppression] = (),
) -> DetectionResult:
    """Every anomaly of `snapshot` in the recent window ending `today` (the scan's UTC date;
    days before it are complete), minus what `suppressions` hold back. Works on any subset of
    providers (a single provider's snapshot too)."""
    with localcontext() as ctx:
        ctx.prec = 34
        account = _account_id(snapshot)
        changes = plan_changes(snapshot)
        found: list[Anomaly] = []
        found.extend(_usage_spikes(snapshot, account, config, today, changes))
        found.extend(_invoice_jumps(snapshot, account, config, today, changes))
        payments = _linked_payments(snapshot)
        found.extend(_failed_payments(snapshot, account, config, today, payments))
        found.extend(_disputes(snapshot, account, config, today))
        found.extend(_duplicates(snapshot, account, config, today, payments))
        merged = _merge_by_key(found)
        return _apply_suppressions(merged, suppressions, config)


def _account_id(snapshot: BillingSnapshot) -> str:
    if snapshot.account.account_id:
        return snapshot.account.account_id
    for name in ("stripe", "orb", "metronome"):
        cid = snapshot.account.customer_ids.get(name)
        if cid:
            return cid
    for prov in snapshot.providers:
        return prov.customer.customer_id
    return "unknown"


# =========================================================================== plan changes


@dataclass(frozen=True, slots=True)
class PlanChange:
    """A known change of the account's plan or contract, and where it was seen."""

    provider: ProviderName
    at: datetime
    what: str
    refs: tuple[str, ...] = ()


_CHANGE_REASONS = frozenset({"subscription_update", "contract_amendment"})


def plan_changes(snapshot: BillingSnapshot) -> tuple[PlanChange, ...]:
    """Plan changes the snapshot shows: Stripe `subscription_update` invoices and proration lines
    (also on the upcoming invoice), Orb prorated fixed fees and price intervals starting after the
    subscription, Metronome contract amendments, and the findings engine's plan changes between
    the latest invoices. Oldest first."""
    out: list[PlanChange] = []
    for prov in snapshot.providers:
        invoices = list(prov.invoices)
        if prov.upcoming_invoice is not None:
            invoices.append(prov.upcoming_invoice)
        for inv in invoices:
            when = inv.created_at or inv.period_start
            reason = (inv.billing_reason or "").lower()
            if reason in _CHANGE_REASONS and when is not None:
                out.append(PlanChange(prov.provider, when, f"{reason} invoice {inv.id}", (inv.id,)))
            prorated = [ln for ln in inv.lines if ln.proration or ln.kind is LineKind.PRORATION]
            if prorated:
                starts = [ln.period_start for ln in prorated if ln.period_start is not None]
                at = min(starts) if starts else when
                if at is not None:
                    out.append(
                        PlanChange(prov.provider, at, f"proration lines on {inv.id}", (inv.id,))
                    )
        for sub in prov.subscriptions:
            out.extend(_raw_changes(prov.provider, sub.id, sub.started_at, sub.raw))
        out.extend(_explained_changes(prov))
    out.sort(key=lambda c: c.at)
    return tuple(out)


def _raw_changes(
    provider: ProviderName, sub_id: str, started: datetime | None, raw: Mapping[str, Any]
) -> list[PlanChange]:
    """Changes the provider's own subscription JSON records (Metronome amendments, Orb price
    intervals that start after the subscription did)."""
    out: list[PlanChange] = []
    amendments = raw.get("amendments")
    if isinstance(amendments, list):
        for amendment in amendments:
            if not isinstance(amendment, Mapping):
                continue
            at = _raw_time(amendment.get("starting_at")) or _raw_time(amendment.get("created_at"))
            if at is not None:
                ref = str(amendment.get("id") or sub_id)
                out.append(PlanChange(provider, at, f"contract amendment {ref}", (sub_id, ref)))
    intervals = raw.get("price_intervals")
    begun = started or _raw_time(raw.get("start_date"))
    if isinstance(intervals, list) and begun is not None:
        for interval in intervals:
            if not isinstance(interval, Mapping):
                continue
            at = _raw_time(interval.get("start_date"))
            if at is not None and at > begun + timedelta(days=1):
                ref = str(interval.get("id") or sub_id)
                out.append(PlanChange(provider, at, f"price interval {ref}", (sub_id, ref)))
    return out


def _explained_changes(prov: ProviderSnapshot) -> list[PlanChange]:
    """Plan changes the findings engine sees between the latest invoice (and the upcoming one)
    and the one before."""
    finals = [inv for inv in prov.invoices if inv.status is not InvoiceStatus.VOID]
    out: list[PlanChange] = []
    targets = finals[:1] + ([prov.upcoming_invoice] if prov.upcoming_invoice else [])
    for inv in targets:
        if not finals or (inv is finals[0] and len(finals) < 2):
            continue  # nothing to compare with
        explanation = explain_invoice(inv, finals, payments=(), subscriptions=prov.subscriptions)
        for f in explanation.findings:
            if f.kind is FindingKind.PLAN_CHANGE:
                at = inv.period_start or inv.created_at
                if at is not None:
                    out.append(PlanChange(prov.provider, at, f"plan change on {inv.id}", (inv.id,)))
                break
    return out


def _raw_time(value: Any) -> datetime | None:
    """A provider time (ISO 8601 / RFC 3339 string or Unix seconds) as an aware UTC datetime."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


# =========================================================================== usage spikes


@dataclass(slots=True)
class _Metric:
    """One metric's daily values from one provider."""

    provider: ProviderName
    name: str
    #: Money per day when the metric is priced, else quantity per day.
    values: dict[date, Decimal]
    currency: str | None  # None: unpriced (values are quantities)
    priced_by: str  # "cost", "invoice price" or ""


@dataclass(frozen=True, slots=True)
class _Fit:
    """A baseline fitted on a metric's history."""

    method: Literal["statistic", "rule"]
    first: date  # the first history day
    days: int  # history days used
    level: Decimal  # statistic: log level at `center`; rule: the median
    center: Decimal  # day offset (from `first`) of the level
    growth: Decimal  # log growth per day
    season: tuple[Decimal, ...]  # weekday factors, Monday first
    sigma: Decimal  # log-scale noise
    eps: Decimal  # offset that keeps logs finite on zero days
    residuals: tuple[Decimal, ...]  # log residuals of the history days

    def expected(self, day: date) -> Decimal:
        """The baseline's value on `day`."""
        if self.method == "rule":
            return self.level
        offset = D((day - self.first).days) - self.center
        value = (self.level + self.growth * offset).exp() * self.season[day.weekday()] - self.eps
        return max(value, ZERO)

    def band(self, day: date, sigmas: Decimal) -> tuple[Decimal | None, Decimal | None]:
        """(low, high) of the noise band around the expected value."""
        if self.method == "rule":
            return None, None
        centre = self.expected(day) + self.eps
        width = (self.sigma * sigmas).exp()
        return max(centre / width - self.eps, ZERO), centre * width - self.eps

    def log_ratio(self, day: date, actual: Decimal) -> Decimal:
        """ln(actual / expected), with the zero-safe offset."""
        return ((actual + self.eps) / (self.expected(day) + self.eps)).ln()


@dataclass(frozen=True, slots=True)
class _Hit:
    """One metric's anomalous day."""

    metric: _Metric
    day: date
    actual: Decimal
    expected: Decimal
    ratio: Decimal
    score: Decimal | None  # bands above (statistic), None for the rule
    fit: _Fit


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "usage"


def _metrics(prov: ProviderSnapshot) -> list[_Metric]:
    """The provider's usage per metric, in money where a cost or a price is known."""
    points = list(prov.usage)
    named = [u for u in points if u.metric is not None]
    use = named or points  # a total (metric None) only when no metric is broken out
    prices = _invoice_prices(prov.invoices)
    by_metric: dict[str, list[Any]] = {}
    for u in use:
        by_metric.setdefault(u.metric or "Usage", []).append(u)
    out: list[_Metric] = []
    for name, items in by_metric.items():
        costs = [u for u in items if u.cost is not None]
        if costs and len(costs) == len(items):
            currency = costs[0].cost.currency
            values = {u.day: u.cost.amount for u in costs if u.cost.currency == currency}
            out.append(_Metric(prov.provider, name, values, currency, "cost"))
            continue
        price = prices.get(name)
        quantities = {u.day: u.quantity for u in items if u.quantity is not None}
        if price is not None:
            unit, currency = price
            values = {d: q * unit for d, q in quantities.items()}
            out.append(_Metric(prov.provider, name, values, currency, "invoice price"))
        else:
            out.append(_Metric(prov.provider, name, quantities, None, ""))
    return out


def _invoice_prices(invoices: Sequence[Invoice]) -> dict[str, tuple[Decimal, str]]:
    """metric → (price per unit, currency) from the newest invoice line billing it: its unit
    price, else its amount over its quantity (right for tiers on average)."""
    out: dict[str, tuple[Decimal, str]] = {}
    for inv in invoices:  # newest first
        for line in inv.lines:
            if not line.metric or line.metric in out:
                continue
            if line.unit_price is not None and line.unit_price > 0:
                out[line.metric] = (line.unit_price, line.amount.currency)
            elif line.quantity and line.quantity > 0 and line.amount.amount > 0:
                out[line.metric] = (line.amount.amount / line.quantity, line.amount.currency)
    return out


def _median(values: Sequence[Decimal]) -> Decimal:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return ZERO
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


_MAD_SCALE = D("1.4826")  # MAD × this estimates a normal distribution's standard deviation


def _fast_ln(value: Decimal) -> Decimal:
    """ln(value) to a float's 16 digits. The baseline's logs need no more, and `Decimal.ln` at
    the detectors' 34 digits is twenty times slower: it was most of a scan's detection time
    (90 history days per metric per account). Money stays Decimal; only these logs are floats
    on the way."""
    if value <= 0:
        return value.ln()  # zero and negatives behave as Decimal's own ln
    return Decimal(repr(math.log(value)))


def _fit_statistic(first: date, values: list[Decimal], config: DetectorConfig) -> _Fit:
    """Per-weekday factors, a robust level and trend, and a MAD noise band, in log space."""
    n = len(values)
    eps = max(_median(values) * D("0.01"), D("0.01"))
    # Weekday factors: each day against the mean of the week centred on it (a whole week holds
    # every weekday once, so its mean carries no weekly pattern).
    ratios: dict[int, list[Decimal]] = {w: [] for w in range(7)}
    for t in range(3, n - 3):
        week = sum(values[t - 3 : t + 4], ZERO) / 7
        ratios[(first + timedelta(days=t)).weekday()].append((values[t] + eps) / (week + eps))
    raw = [_median(ratios[w]) if ratios[w] else ONE for w in range(7)]
    mean = sum(raw, ZERO) / 7
    season = tuple(r / mean if mean > 0 else ONE for r in raw)
    logs = [
        _fast_ln((values[t] + eps) / season[(first + timedelta(days=t)).weekday()])
        for t in range(n)
    ]
    recent = min(n, 14)
    level = _median(logs[n - recent :])
    center = D(n - 1) - D(recent - 1) / 2
    span = min(n, 28)
    start = n - span
    slopes = [(logs[j] - logs[i]) / (j - i) for i in range(start, n) for j in range(i + 1, n)]
    growth = min(max(_median(slopes), ZERO), config.spike_max_daily_growth)
    residuals = tuple(logs[t] - (level + growth * (D(t) - center)) for t in range(n))
    tail = residuals[start:]
    mid = _median(tail)
    sigma = max(_MAD_SCALE * _median([abs(r - mid) for r in tail]), config.spike_min_sigma)
    return _Fit("statistic", first, n, level, center, growth, season, sigma, eps, residuals)


def _fit_rule(first: date, values: list[Decimal]) -> _Fit:
    """The median of the last (up to) seven days."""
    recent = values[-7:]
    return _Fit("rule", first, len(values), _median(recent), ZERO, ZERO, (ONE,) * 7, ZERO, ZERO, ())


def _usage_spikes(
    snapshot: BillingSnapshot,
    account: str,
    config: DetectorConfig,
    today: date,
    changes: Sequence[PlanChange],
) -> list[Anomaly]:
    checked = [today - timedelta(days=k) for k in range(config.usage_days_back, 0, -1)]
    window_start = checked[0] - timedelta(days=config.lookback_days)
    hits: dict[date, list[_Hit]] = {}
    for prov in snapshot.providers:
        prov_changes = [c for c in changes if c.provider == prov.provider]
        for metric in _metrics(prov):
            if metric.currency is None and not config.alert_unpriced_usage:
                continue
            # One statistic fit on the days before the checked ones (so a two-day spike does not
            # raise its own baseline); with a short history, each day by the rule against all
            # the days before it (a new account has few enough that every one counts).
            fit = _fit_metric(metric, window_start, checked[0], prov_changes, config)
            for day in checked:
                day_fit = fit
                if fit is None or fit.method == "rule":
                    day_fit = _fit_metric(metric, window_start, day, prov_changes, config)
                if day_fit is None:
                    continue
                hit = _check_day(metric, day_fit, day, config)
                if hit is not None:
                    hits.setdefault(day, []).append(hit)
    out = []
    for day, day_hits in sorted(hits.items()):
        out.append(_spike_anomaly(account, day, day_hits, hits, config, today))
    return out


def _fit_metric(
    metric: _Metric,
    window_start: date,
    first_checked: date,
    changes: Sequence[PlanChange],
    config: DetectorConfig,
) -> _Fit | None:
    """The baseline of one metric from the days before `first_checked` (None: too little)."""
    start = window_start
    # A plan change restarts the baseline: the new plan's level is the account's new normal.
    for change in changes:
        change_day = change.at.astimezone(UTC).date()
        if start <= change_day <= first_checked + timedelta(days=config.usage_days_back):
            start = max(start, change_day + timedelta(days=1))
    days = [d for d in metric.values if start <= d < first_checked]
    nonzero = [d for d in days if metric.values[d] != 0]
    if not nonzero:
        return None
    first = min(nonzero)  # history begins with the first day of use
    count = (first_checked - first).days
    values = [metric.values.get(first + timedelta(days=i), ZERO) for i in range(count)]
    if count >= config.min_history_days:
        return _fit_statistic(first, values, config)
    if count >= config.min_rule_days:
        return _fit_rule(first, values)
    return None


def _check_day(metric: _Metric, fit: _Fit, day: date, config: DetectorConfig) -> _Hit | None:
    actual = metric.values.get(day, ZERO)
    expected = fit.expected(day)
    impact = actual - expected
    priced = metric.currency is not None
    if impact <= 0 or (priced and impact < config.spike_min_impact):
        return None
    ratio = actual / expected if expected > 0 else D("Infinity")
    if fit.method == "rule":
        if ratio < config.spike_rule_ratio:
            return None
        return _Hit(metric, day, actual, expected, ratio, None, fit)
    if ratio < config.spike_min_ratio:
        return None
    size = fit.log_ratio(day, actual)
    score = size / fit.sigma
    if score < config.spike_sigmas:
        return None
    # A peak the account has had before (a monthly batch, a billing run) is its normal.
    floor = max(size * D("0.75"), config.spike_min_ratio.ln())
    repeats = sum(1 for r in fit.residuals if r >= floor)
    if repeats >= config.spike_usual_repeats:
        return None
    return _Hit(metric, day, actual, expected, ratio, score, fit)


def _spike_anomaly(
    account: str,
    day: date,
    day_hits: list[_Hit],
    all_hits: Mapping[date, list[_Hit]],
    config: DetectorConfig,
    today: date,
) -> Anomaly:
    ranked = sorted(day_hits, key=lambda h: (-(h.actual - h.expected), h.metric.name))
    top = ranked[0]
    currency = top.metric.currency
    same = [h for h in ranked if h.metric.currency == currency]
    actual = sum((h.actual for h in same), ZERO)
    expected = sum((h.expected for h in same), ZERO)
    impact = actual - expected
    cur = currency or "usd"

    def money(value: Decimal) -> Money:
        return Money(value, cur).quantize() if currency else Money.zero(cur)

    names = " and ".join(_dedupe_str(h.metric.name for h in same[:3]))
    more = f" (+{len(same) - 3} more)" if len(same) > 3 else ""
    when = _day_text(day)
    ratio = actual / expected if expected > 0 else None
    times = f"{_ratio_text(ratio)} the usual" if ratio is not None else "up from"
    if currency:
        summary = (
            f"{names}{more} cost {money(actual).format()} on {when}, {times} "
            f"{money(expected).format()}"
        )
    else:
        summary = (
            f"{names}{more} used {_qty(actual)} on {when}, {times} {_qty(expected)} "
            f"(no price known, so no money impact)"
        )
    drivers = tuple(
        Driver(
            label=h.metric.name,
            amount=Money(h.actual - h.expected, h.metric.currency).quantize()
            if h.metric.currency
            else None,
            detail=_hit_detail(h),
        )
        for h in ranked
    )
    why = _spike_why(top, config)
    series = _spike_series(same, all_hits, config, today)
    magnitude = (top.ratio if top.ratio.is_finite() else D(999)).quantize(D("0.01"))
    return Anomaly(
        account_id=account,
        kind=AlertKind.USAGE_SPIKE,
        severity=_severity(money(impact), config.spike_medium_impact, config.spike_high_impact)
        if currency
        else Severity.LOW,
        period=day,
        expected=money(expected),
        actual=money(actual),
        impact=money(impact),
        impact_pct=_pct(impact, expected) if currency else None,
        summary=summary,
        why=why,
        drivers=drivers,
        provider=top.metric.provider,
        refs=(),
        series=series,
        fingerprint=f"usage_spike:{_slug(top.metric.name)}",
        magnitude=magnitude,
    )


def _formatter(currency: str | None) -> Callable[[Decimal], str]:
    """Formats values of a metric: money when it is priced, else a quantity."""
    if currency is None:
        return _qty

    def fmt(value: Decimal) -> str:
        return Money(value, currency).quantize().format()

    return fmt


def _hit_detail(hit: _Hit) -> str:
    cur = hit.metric.currency
    fmt = _formatter(cur)
    base = f"{fmt(hit.actual)} vs {fmt(hit.expected)} expected"
    if hit.score is not None:
        return f"{base}, {_dec_text(hit.score, 1)} bands above"
    return f"{base} ({_ratio_text(hit.ratio)})"


def _spike_why(hit: _Hit, config: DetectorConfig) -> str:
    cur = hit.metric.currency
    fmt = _formatter(cur)
    fit = hit.fit
    impact = hit.actual - hit.expected
    priced = (
        f"; the {fmt(impact)} above it cleared the {fmt(config.spike_min_impact)} floor"
        if cur
        else "; no price is known for this metric, so there is no money floor"
    )
    via = {"invoice price": " (quantities × the unit price on the latest invoice)"}.get(
        hit.metric.priced_by, ""
    )
    if fit.method == "rule":
        return (
            f"Rule: {hit.metric.name}{via} was {_ratio_text(hit.ratio)} the median "
            f"{fmt(hit.expected)} of the {min(fit.days, 7)} days before (threshold "
            f"{_dec_text(config.spike_rule_ratio, 1)}×; only {fit.days} days of history, "
            f"statistics need {config.min_history_days}){priced}."
        )
    assert hit.score is not None
    trend = f", trend +{_dec_text((fit.growth.exp() - 1) * 100, 1)}%/day" if fit.growth > 0 else ""
    return (
        f"Statistic: {hit.metric.name}{via} was {_ratio_text(hit.ratio)} the expected "
        f"{fmt(hit.expected)} for a {hit.day:%A}, {_dec_text(hit.score, 1)} noise bands above it "
        f"(threshold {_dec_text(config.spike_sigmas, 0)}; baseline: per-weekday median over the "
        f"{fit.days} days before{trend}; band from the median absolute deviation, "
        f"±{_dec_text((fit.sigma.exp() - 1) * 100, 0)}%){priced}."
    )


def _spike_series(
    hits: list[_Hit], all_hits: Mapping[date, list[_Hit]], config: DetectorConfig, today: date
) -> tuple[SeriesPoint, ...]:
    names = {(h.metric.provider, h.metric.name) for h in hits}
    metrics = {(h.metric.provider, h.metric.name): (h.metric, h.fit) for h in hits}
    flagged = {
        d for d, day_hits in all_hits.items() for h in day_hits
        if (h.metric.provider, h.metric.name) in names
    }  # fmt: skip
    points = []
    for k in range(config.series_days, 0, -1):
        day = today - timedelta(days=k)
        actual = ZERO
        expected: Decimal | None = ZERO
        low: Decimal | None = ZERO
        high: Decimal | None = ZERO
        for metric, fit in metrics.values():
            actual += metric.values.get(day, ZERO)
            if day < fit.first:
                expected = low = high = None
            elif expected is not None:
                expected += fit.expected(day)
                lo, hi = fit.band(day, config.spike_sigmas)
                low = low + lo if low is not None and lo is not None else None
                high = high + hi if high is not None and hi is not None else None
        points.append(
            SeriesPoint(
                day=day,
                actual=_round(actual),
                expected=_round(expected) if expected is not None else None,
                low=_round(low) if low is not None else None,
                high=_round(high) if high is not None else None,
                anomalous=day in flagged,
            )
        )
    return tuple(points)


# =========================================================================== invoice jumps

_UNCHECKED_REASONS = frozenset(
    {
        "manual", "quote_accept", "automatic_pending_invoice_item_invoice", "one_off", "adhoc",
        "subscription_update", "subscription_threshold", "threshold", "partial",
    }
)  # fmt: skip
_LINE_FINDINGS = frozenset(
    {
        FindingKind.NEW_LINE,
        FindingKind.REMOVED_LINE,
        FindingKind.PRICE_CHANGE,
        FindingKind.QUANTITY_CHANGE,
    }
)


def _group(inv: Invoice) -> str | None:
    """Which invoices compare with each other; None for those never checked (one-off, mid-period
    and threshold invoices have no comparable history)."""
    reason = (inv.billing_reason or "").lower()
    if reason in _UNCHECKED_REASONS:
        return None
    if reason == "scheduled":
        return "scheduled"
    return "recurring"


def _final(inv: Invoice) -> bool:
    return inv.status not in (InvoiceStatus.DRAFT, InvoiceStatus.VOID)


def _inv_day(inv: Invoice) -> date | None:
    when = inv.created_at or inv.period_end
    return when.astimezone(UTC).date() if when else None


def _invoice_jumps(
    snapshot: BillingSnapshot,
    account: str,
    config: DetectorConfig,
    today: date,
    changes: Sequence[PlanChange],
) -> list[Anomaly]:
    out = []
    since = today - timedelta(days=config.invoice_days_back)
    for prov in snapshot.providers:
        finals = [inv for inv in prov.invoices if _final(inv)]  # newest first
        for inv in finals:
            day = _inv_day(inv)
            if day is None or day < since or day > today:
                continue
            found = _check_invoice(prov, inv, finals, account, config, changes)
            if found is not None:
                out.append(found)
    return out


def _comparable(inv: Invoice, finals: Sequence[Invoice]) -> list[Invoice]:
    """Older final invoices of the same group, currency and subscription, newest first."""
    group = _group(inv)
    day = inv.created_at or inv.period_end
    older = [
        other
        for other in finals
        if other.id != inv.id
        and _group(other) == group
        and other.total.currency == inv.total.currency
        and (other.created_at or other.period_end) is not None
        and day is not None
        and (other.created_at or other.period_end) < day  # type: ignore[operator]
    ]
    if inv.subscription_id:
        same = [o for o in older if o.subscription_id in (None, inv.subscription_id)]
        older = same or older
    older.sort(key=lambda o: o.created_at or o.period_end or day, reverse=True)  # type: ignore[arg-type, return-value]
    return older


def _adjusted(inv: Invoice, config: DetectorConfig) -> Decimal:
    """The invoice's total as the detector compares it: what the account's own terms move (see
    `jump_explained_by`) is taken out: prepaid credits and discounts applied are added back,
    proration lines removed."""
    value = inv.total.amount
    currency = inv.total.currency
    kinds = config.jump_explained_by
    credits, discount = inv.credits_applied, inv.discount
    if FindingKind.CREDIT_DEPLETED in kinds and credits and credits.currency == currency:
        value += credits.amount
    if FindingKind.DISCOUNT_ENDED in kinds and discount and discount.currency == currency:
        value += discount.amount
    if FindingKind.PRORATION in kinds:
        value -= sum(
            (
                ln.amount.amount
                for ln in inv.lines
                if (ln.proration or ln.kind is LineKind.PRORATION)
                and ln.amount.currency == currency
            ),
            ZERO,
        )
    return value


def _baseline(history: Sequence[Invoice], config: DetectorConfig) -> tuple[Decimal, Decimal]:
    """(expected adjusted total, month-over-month growth): the median of the last `jump_history`
    adjusted totals, each projected forward by the median growth of the last six months
    (clamped to [1, `jump_max_growth`]), so steady growth and one odd month are not jumps."""
    totals = [_adjusted(inv, config) for inv in history[:7]]
    steps = [
        totals[i] / totals[i + 1]
        for i in range(len(totals) - 1)
        if totals[i] > 0 and totals[i + 1] > 0
    ]
    growth = min(max(_median(steps), ONE), config.jump_max_growth) if steps else ONE
    projected = [t * growth ** (i + 1) for i, t in enumerate(totals[: config.jump_history])]
    return _median(projected), growth


def _check_invoice(
    prov: ProviderSnapshot,
    inv: Invoice,
    finals: Sequence[Invoice],
    account: str,
    config: DetectorConfig,
    changes: Sequence[PlanChange],
) -> Anomaly | None:
    if _group(inv) is None:
        return None
    history = _comparable(inv, finals)
    if not history:
        return None
    baseline, growth = _baseline(history, config)
    adjusted = _adjusted(inv, config)
    excess = adjusted - baseline
    if excess < config.jump_min_impact:
        return None
    explanation = explain_invoice(
        inv, finals, payments=prov.payments, subscriptions=prov.subscriptions
    )
    previous = explanation.previous
    changed = (
        _plan_changed_between(
            changes, prov.provider, previous.created_at if previous else None, inv
        )
        or (inv.billing_reason or "").lower() in _CHANGE_REASONS
    )
    # The findings engine attributes the change since the previous invoice; a plan change's part
    # of it (the new fee, and fixed lines that came or went with a known change) is not a jump.
    # Credits, discounts and prorations are already out of the adjusted totals.
    plan_kinds = config.jump_explained_by & {FindingKind.PLAN_CHANGE}
    explained: list[Finding] = []
    drivers: list[Finding] = []
    for f in explanation.findings:
        if f.kind in plan_kinds or (changed and f.kind in _LINE_FINDINGS and f.metric is None):
            explained.append(f)
        elif f.kind not in config.jump_explained_by and f.amount.amount > 0:
            drivers.append(f)
    plan_part = max(sum((f.amount.amount for f in explained), ZERO), ZERO)
    residual = excess - plan_part
    # Expected and actual are in the terms compared: with credits or discounts added back, an
    # invoice whose growth the prepaid commit paid for "totals" more than the customer owes
    # (the amount due would put the expected value below zero).
    actual = adjusted
    expected = actual - residual
    base = adjusted - residual
    pct = residual / base * 100 if base > 0 else None
    if residual < config.jump_min_impact or (pct is not None and pct < config.jump_min_pct):
        return None
    cur = inv.total.currency

    def m(value: Decimal) -> Money:
        return Money(value, cur).quantize()

    drivers.sort(key=lambda f: -f.amount.amount)
    top = drivers[0] if drivers else None
    mostly = f", mostly {_driver_label(top)}" if top is not None else ""
    ratio = adjusted / base if base > 0 else None
    before = (
        f" before credits and discounts ({m(inv.total.amount).format()} due)"
        if adjusted != inv.total.amount
        else ""
    )
    summary = (
        f"Invoice {inv.number or inv.id} totals {m(actual).format()}{before}, "
        f"{m(residual).format()} above the expected {m(expected).format()}"
        + (f" ({_ratio_text(ratio)})" if ratio is not None else "")
        + mostly
    )
    grown = f", projected at +{_dec_text((growth - 1) * 100, 0)}%/month" if growth > 1 else ""
    adjust = " (credits, discounts and prorations taken out)" if adjusted != actual else ""
    taken = ""
    if plan_part > 0:
        what = ", ".join(_dedupe_str(f.summary.split(":")[0] for f in explained[:2]))
        taken = f"; {m(plan_part).format()} that a plan change explains ({what}) is not counted"
    why = (
        f"Rule: {m(residual).format()} ({_pct_text(pct)}) above the median of the previous "
        f"{min(len(history), config.jump_history)} comparable invoices{grown}, "
        f"{m(baseline).format()}{adjust}{taken}; floors {m(config.jump_min_impact).format()} "
        f"and {_dec_text(config.jump_min_pct, 0)}%."
    )
    series = _invoice_series(inv, history, expected, config)
    driver_refs = [r for f in drivers[:3] for r in f.refs]
    refs = _dedupe_str([inv.id, previous.id if previous else None, *driver_refs])
    label = _driver_label(top) if top is not None else "total"
    return Anomaly(
        account_id=account,
        kind=AlertKind.INVOICE_JUMP,
        severity=_severity(m(residual), config.jump_medium_impact, config.jump_high_impact),
        period=_inv_day(inv) or date.min,
        expected=m(expected),
        actual=m(actual),
        impact=m(residual),
        impact_pct=_pct(residual, base),
        summary=summary,
        why=why,
        drivers=tuple(
            Driver(label=_driver_label(f), amount=f.amount, detail=f.summary) for f in drivers[:5]
        ),
        provider=prov.provider,
        refs=refs,
        series=series,
        fingerprint=f"invoice_jump:{_slug(label)}",
        magnitude=ratio.quantize(D("0.01")) if ratio is not None else D(999),
    )


def _plan_changed_between(
    changes: Sequence[PlanChange], provider: str, since: datetime | None, inv: Invoice
) -> bool:
    """A known plan change of this provider after the previous invoice and within this one."""
    until = inv.period_end or inv.created_at
    for change in changes:
        if change.provider != provider:
            continue
        if since is not None and change.at <= since - timedelta(days=1):
            continue
        if until is not None and change.at > until + timedelta(days=1):
            continue
        return True
    return False


def _driver_label(f: Finding) -> str:
    if f.metric:
        return f.metric
    description = f.detail.get("description") or f.detail.get("new_plan")
    if description:
        return description
    return f.kind.value.replace("_", " ")


def _invoice_series(
    inv: Invoice, history: Sequence[Invoice], expected: Decimal, config: DetectorConfig
) -> tuple[SeriesPoint, ...]:
    """The invoices as compared (credits, discounts and prorations taken out), oldest first."""
    older = list(reversed(history[:11]))
    points = [SeriesPoint(day=_inv_day(o) or date.min, actual=_adjusted(o, config)) for o in older]
    points.append(
        SeriesPoint(
            day=_inv_day(inv) or date.min,
            actual=_adjusted(inv, config),
            expected=_round(expected),
            anomalous=True,
        )
    )
    return tuple(points)


# =========================================================================== payments


def _linked_payments(snapshot: BillingSnapshot) -> list[Payment]:
    """Every payment, with the invoice it pays filled in from another provider's record of the
    same payment intent (an Orb payment attempt names the Stripe payment intent that paid it)."""
    payments = list(snapshot.payments)
    by_intent: dict[str, str] = {}
    for p in payments:
        if p.payment_intent_id and p.invoice_id:
            by_intent.setdefault(p.payment_intent_id, p.invoice_id)
    for inv in snapshot.invoices:
        # A Metronome invoice synced to Stripe names the payment intent that collects it.
        external = inv.raw.get("external_invoice") if inv.provider == "metronome" else None
        intent = external.get("external_payment_id") if isinstance(external, Mapping) else None
        if isinstance(intent, str) and intent:
            by_intent.setdefault(intent, inv.id)
    out = []
    for p in payments:
        linked = by_intent.get(p.payment_intent_id or "")
        out.append(replace(p, invoice_id=linked) if p.invoice_id is None and linked else p)
    return out


class _Groups:
    """Union-find over payment keys: a payment, its intent and its invoice are one payment."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, key: str) -> str:
        self.parent.setdefault(key, key)
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _payment_keys(p: Payment) -> list[str]:
    keys = [f"pay:{p.id}"]
    if p.payment_intent_id:
        keys.append(f"pi:{p.payment_intent_id}")
    if p.invoice_id:
        keys.append(f"inv:{p.invoice_id}")
    return keys


def _failed_payments(
    snapshot: BillingSnapshot,
    account: str,
    config: DetectorConfig,
    today: date,
    payments: Sequence[Payment],
) -> list[Anomaly]:
    groups = _Groups()
    for p in payments:
        keys = _payment_keys(p)
        for key in keys[1:]:
            groups.union(keys[0], key)
    invoices = {inv.id: inv for inv in snapshot.invoices}
    members: dict[str, list[Payment]] = {}
    for p in payments:
        members.setdefault(groups.find(f"pay:{p.id}"), []).append(p)
    since = today - timedelta(days=config.event_days_back)
    out: list[Anomaly] = []
    seen_invoices: set[str] = set()
    for group in members.values():
        group.sort(key=lambda p: (p.created_at, p.id))
        invoice_ids = _dedupe_str(p.invoice_id for p in group)
        seen_invoices.update(invoice_ids)
        group_invoices = [invoices[i] for i in invoice_ids if i in invoices]
        if any(inv.status in (InvoiceStatus.PAID, InvoiceStatus.VOID) for inv in group_invoices):
            continue  # paid in the end (or voided): resolved
        last_success = max(
            (p.created_at for p in group if p.status is PaymentStatus.SUCCEEDED), default=None
        )
        failures = [
            p
            for p in group
            if p.status is PaymentStatus.FAILED
            and (last_success is None or p.created_at > last_success)
        ]
        if not failures:
            continue
        # One failure per attempt: the same decline can arrive as a Stripe charge and an Orb
        # payment attempt naming that charge's payment intent.
        attempts = _distinct_attempts(failures)
        unpaid_invoice = any(
            inv.status in (InvoiceStatus.OPEN, InvoiceStatus.PAST_DUE) for inv in group_invoices
        )
        latest = attempts[-1].created_at.astimezone(UTC).date()
        if latest < since and not unpaid_invoice:
            continue
        amount = _unpaid(attempts, group_invoices)
        if amount.amount < config.payment_min_amount:
            continue
        out.append(_failure_anomaly(account, attempts, group_invoices, amount, config, today))
    out.extend(_past_due_invoices(snapshot, account, config, today, seen_invoices))
    return out


def _distinct_attempts(failures: list[Payment]) -> list[Payment]:
    """Failed attempts, one per (intent, minute): a provider's copy of another's record
    collapses into the first (Stripe's charge carries the decline code)."""
    chosen: dict[tuple[str, str], Payment] = {}
    for p in sorted(failures, key=lambda x: (x.provider != "stripe", x.created_at, x.id)):
        key = (p.payment_intent_id or p.id, p.created_at.strftime("%Y%m%d%H%M"))
        chosen.setdefault(key, p)
    return sorted(chosen.values(), key=lambda p: (p.created_at, p.id))


def _unpaid(attempts: Sequence[Payment], invoices: Sequence[Invoice]) -> Money:
    for inv in invoices:
        if inv.amount_due is not None and inv.amount_due.amount > 0:
            paid = inv.amount_paid.amount if inv.amount_paid is not None else ZERO
            return Money(inv.amount_due.amount - paid, inv.amount_due.currency)
    return attempts[-1].amount


def _failure_anomaly(
    account: str,
    attempts: Sequence[Payment],
    invoices: Sequence[Invoice],
    amount: Money,
    config: DetectorConfig,
    today: date,
) -> Anomaly:
    first, last = attempts[0], attempts[-1]
    invoice = invoices[0] if invoices else None
    target = f" for invoice {invoice.number or invoice.id}" if invoice else ""
    if invoice is None and last.invoice_id:
        target = f" for invoice {last.invoice_id}"
    count = len(attempts)
    times = "once" if count == 1 else f"{count} times"
    reason = last.failure_message or last.failure_code or "declined"
    state = ""
    if invoice is not None and invoice.status is InvoiceStatus.PAST_DUE:
        state = "; the invoice is past due"
    elif invoice is not None:
        state = "; the invoice is still open"
    summary = (
        f"Payment of {amount.format()}{target} failed {times} since "
        f"{_day_text(first.created_at.date())} ({_clean(reason)}){state}"
    )
    why = (
        f"Rule: {times.replace('once', 'one')} failed attempt{'s' if count != 1 else ''} "
        f"(the latest on {_day_text(last.created_at.date())}) and no successful payment since; "
        f"floor {Money(config.payment_min_amount, amount.currency).format()}."
    ).replace("Rule: one failed", "Rule: a failed")
    high = amount.amount >= config.payment_high_amount or count >= config.payment_high_attempts
    severity = Severity.HIGH if high else Severity.MEDIUM
    if amount.amount < config.payment_low_amount and count == 1:
        severity = Severity.LOW
    drivers = tuple(
        Driver(
            label=f"{p.id} failed on {_day_text(p.created_at.date())}",
            amount=p.amount,
            detail=_clean(" · ".join(x for x in (p.failure_code, p.failure_message) if x) or "")
            or None,
        )
        for p in attempts
    )
    refs = _dedupe_str([*(inv.id for inv in invoices), *(p.id for p in attempts)])
    code = _slug(last.failure_code or "declined")
    return Anomaly(
        account_id=account,
        kind=AlertKind.PAYMENT_FAILED,
        severity=severity,
        period=first.created_at.astimezone(UTC).date(),
        expected=amount,
        actual=Money.zero(amount.currency),
        impact=amount,
        impact_pct=D(100),
        summary=summary,
        why=why,
        drivers=drivers,
        provider=last.provider,
        refs=refs,
        series=(),
        fingerprint=f"payment_failed:{code}",
        magnitude=amount.amount,
    )


def _past_due_invoices(
    snapshot: BillingSnapshot,
    account: str,
    config: DetectorConfig,
    today: date,
    covered: set[str],
) -> list[Anomaly]:
    """Invoices past due with no failed payment behind them (sent invoices not paid by their
    due date, an Orb invoice whose collection failed without an attempt record)."""
    out = []
    for inv in snapshot.invoices:
        if inv.status is not InvoiceStatus.PAST_DUE or inv.id in covered:
            continue
        due = inv.amount_due or inv.total
        paid = inv.amount_paid.amount if inv.amount_paid is not None else ZERO
        amount = Money(due.amount - paid, due.currency)
        if amount.amount < config.payment_min_amount:
            continue
        when = inv.due_at or inv.created_at
        day = when.astimezone(UTC).date() if when else today
        summary = (
            f"Invoice {inv.number or inv.id} for {amount.format()} is past due "
            f"(due {_day_text(day)})"
        )
        out.append(
            Anomaly(
                account_id=account,
                kind=AlertKind.PAYMENT_FAILED,
                severity=Severity.HIGH
                if amount.amount >= config.payment_high_amount
                else Severity.MEDIUM,
                period=day,
                expected=amount,
                actual=Money.zero(amount.currency),
                impact=amount,
                impact_pct=D(100),
                summary=summary,
                why=f"Rule: the invoice went past its due date ({_day_text(day)}) unpaid.",
                drivers=(Driver(label=f"invoice {inv.id}", amount=amount, detail="past due"),),
                provider=inv.provider,
                refs=(inv.id,),
                series=(),
                fingerprint="payment_failed:past_due",
                magnitude=amount.amount,
            )
        )
    return out


# =========================================================================== disputes

_NEEDS_RESPONSE = frozenset({"needs_response", "warning_needs_response"})


def _disputes(
    snapshot: BillingSnapshot, account: str, config: DetectorConfig, today: date
) -> list[Anomaly]:
    since = today - timedelta(days=config.event_days_back)
    out = []
    for prov in snapshot.providers:
        for dispute in prov.disputes:
            day = dispute.created_at.astimezone(UTC).date()
            if not (since <= day <= today or dispute.status in _NEEDS_RESPONSE):
                continue
            if dispute.amount.amount < config.dispute_min_amount:
                continue
            out.append(_dispute_anomaly(account, prov.provider, dispute, config, today))
    return out


def _dispute_anomaly(
    account: str, provider: ProviderName, dispute: Dispute, config: DetectorConfig, today: date
) -> Anomaly:
    amount = dispute.amount
    day = dispute.created_at.astimezone(UTC).date()
    reason = dispute.reason.replace("_", " ")
    due = ""
    urgent = False
    if dispute.evidence_due_by is not None:
        due_day = dispute.evidence_due_by.astimezone(UTC).date()
        left = (due_day - today).days
        when = "today" if left == 0 else (f"in {left} days" if left > 0 else f"{-left} days ago")
        due = f"; evidence due {_day_text(due_day)} ({when})"
        urgent = left <= config.dispute_urgent_days and dispute.status in _NEEDS_RESPONSE
    summary = (
        f"Dispute {dispute.id} opened {_day_text(day)} for {amount.format()} ({reason}), "
        f"{dispute.status.replace('_', ' ')}{due}"
    )
    if dispute.status.startswith("warning"):
        severity = Severity.LOW
    elif urgent or amount.amount >= config.dispute_high_amount:
        severity = Severity.HIGH
    else:
        severity = Severity.MEDIUM
    why = (
        f"Rule: a dispute was opened on {_day_text(day)}"
        + (" and still needs a response" if dispute.status in _NEEDS_RESPONSE else "")
        + f"; floor {Money(config.dispute_min_amount, amount.currency).format()}."
    )
    refs = _dedupe_str([dispute.id, dispute.payment_id])
    return Anomaly(
        account_id=account,
        kind=AlertKind.DISPUTE_OPENED,
        severity=severity,
        period=day,
        expected=Money.zero(amount.currency),
        actual=amount,
        impact=amount,
        impact_pct=None,
        summary=summary,
        why=why,
        drivers=(
            Driver(
                label=f"charge {dispute.payment_id}" if dispute.payment_id else dispute.id,
                amount=amount,
                detail=f"{reason}{due.replace('; ', ', ')}",
            ),
        ),
        provider=provider,
        refs=refs,
        series=(),
        fingerprint=f"dispute_opened:{_slug(dispute.reason)}",
        magnitude=amount.amount,
    )


# =========================================================================== duplicates


def _duplicates(
    snapshot: BillingSnapshot,
    account: str,
    config: DetectorConfig,
    today: date,
    payments: Sequence[Payment],
) -> list[Anomaly]:
    """The findings engine's duplicate charges around each invoice paid in the window (and the
    latest of each provider, for charges without an invoice), whose later charge is recent."""
    since = today - timedelta(days=config.event_days_back)
    recent = [
        p
        for p in payments
        if p.status is PaymentStatus.SUCCEEDED and p.created_at.astimezone(UTC).date() >= since
    ]
    if len(recent) == 0:
        return []
    by_id = {p.id: p for p in payments}
    invoices = sorted(
        (inv for inv in snapshot.invoices if _final(inv) and inv.created_at is not None),
        key=lambda i: i.created_at,  # type: ignore[arg-type, return-value]
    )
    targets: dict[str, tuple[Invoice, Invoice | None]] = {}
    aliases = {m.copy.id: m.source.id for m in snapshot.mirrors}
    paid_now = {aliases.get(p.invoice_id, p.invoice_id) for p in recent if p.invoice_id}
    by_provider: dict[str, list[Invoice]] = {}
    for inv in invoices:
        by_provider.setdefault(inv.provider, []).append(inv)
    for group in by_provider.values():
        for i, inv in enumerate(group):
            if inv.id in paid_now or i == len(group) - 1:
                targets[inv.id] = (inv, group[i + 1] if i + 1 < len(group) else None)
    found: dict[tuple[str, str], Finding] = {}
    for inv, following in targets.values():
        for f in duplicate_charges(inv, following, payments, aliases):
            key = (f.detail.get("first_payment", ""), f.detail.get("duplicate_payment", ""))
            found.setdefault(key, f)
    out = []
    for (first_id, later_id), f in sorted(found.items()):
        earlier, later = by_id.get(first_id), by_id.get(later_id)
        if earlier is None or later is None:
            continue
        day = later.created_at.astimezone(UTC).date()
        if day < since or day > today:
            continue
        same_invoice = earlier.invoice_id is not None and earlier.invoice_id == later.invoice_id
        if not same_invoice and later.created_at - earlier.created_at > config.duplicate_window:
            continue
        refunded = later.amount_refunded.amount if later.amount_refunded else ZERO
        at_stake = later.amount.amount - refunded
        if at_stake < config.duplicate_min_amount:
            continue  # refunded already (or too small to matter)
        out.append(_duplicate_anomaly(account, f, earlier, later, at_stake, config))
    return out


def _duplicate_anomaly(
    account: str,
    f: Finding,
    earlier: Payment,
    later: Payment,
    at_stake: Decimal,
    config: DetectorConfig,
) -> Anomaly:
    cur = later.amount.currency
    one = later.amount
    impact = Money(at_stake, cur)
    gap = later.created_at - earlier.created_at
    why = (
        f"Rule: two successful charges of {one.format()} {_gap_text(gap)} apart "
        + (
            f"for the same invoice {later.invoice_id}"
            if earlier.invoice_id and earlier.invoice_id == later.invoice_id
            else f"within {_gap_text(config.duplicate_window)}, not for two different invoices"
        )
        + f"; floor {Money(config.duplicate_min_amount, cur).format()}."
    )
    severity = Severity.HIGH if impact.amount >= config.duplicate_high_amount else Severity.MEDIUM
    return Anomaly(
        account_id=account,
        kind=AlertKind.DUPLICATE_CHARGE,
        severity=severity,
        period=later.created_at.astimezone(UTC).date(),
        expected=one,
        actual=one + one,
        impact=impact,
        impact_pct=_pct(impact.amount, one.amount),
        summary=f.summary,
        why=why,
        drivers=(
            Driver(label=f"charge {earlier.id}", amount=earlier.amount, detail=_stamp(earlier)),
            Driver(
                label=f"charge {later.id}",
                amount=later.amount,
                detail=f"{_stamp(later)}, the duplicate",
            ),
        ),
        provider=later.provider,
        refs=f.refs,
        series=(),
        fingerprint=f"duplicate_charge:{later.provider}",
        magnitude=impact.amount,
    )


def _stamp(p: Payment) -> str:
    return p.created_at.astimezone(UTC).strftime("%b %-d %H:%M UTC")


# =========================================================================== merging, feedback


def _merge_by_key(found: Iterable[Anomaly]) -> list[Anomaly]:
    """One anomaly per dedupe key: the largest, carrying the others' drivers and refs (and, for
    same-currency event kinds, their impact)."""
    by_key: dict[tuple[str, str, date], list[Anomaly]] = {}
    for a in found:
        by_key.setdefault(a.dedupe_key, []).append(a)
    out = []
    for group in by_key.values():
        group.sort(key=lambda a: -a.impact.amount)
        head = group[0]
        for other in group[1:]:
            same_cur = other.impact.currency == head.impact.currency
            add = same_cur and head.kind in (AlertKind.PAYMENT_FAILED, AlertKind.DUPLICATE_CHARGE)
            head = replace(
                head,
                impact=head.impact + other.impact if add else head.impact,
                expected=head.expected + other.expected if add else head.expected,
                actual=head.actual + other.actual if add else head.actual,
                drivers=head.drivers + other.drivers,
                refs=_dedupe_str([*head.refs, *other.refs]),
                summary=head.summary + f" (and {other.summary[:1].lower()}{other.summary[1:]})"
                if len(group) == 2
                else head.summary,
            )
        out.append(head)
    out.sort(key=lambda a: (a.period, a.kind.value, a.account_id))
    return out


def _apply_suppressions(
    anomalies: Sequence[Anomaly], suppressions: Sequence[Suppression], config: DetectorConfig
) -> DetectionResult:
    kept: list[Anomaly] = []
    held: list[tuple[Anomaly, Suppression]] = []
    for a in anomalies:
        matching = [
            s
            for s in suppressions
            if s.account_id == a.account_id and s.kind is a.kind and s.fingerprint == a.fingerprint
        ]
        if not matching:
            kept.append(a)
            continue
        latest = max(matching, key=lambda s: s.created_at)
        limit = latest.magnitude * config.suppression_growth
        if a.magnitude <= limit:
            held.append((a, latest))
            continue
        grown = a.magnitude / latest.magnitude if latest.magnitude > 0 else None
        size = f" ({_ratio_text(grown)} as large)" if grown is not None else ""
        note = (
            f" A similar alert ({a.fingerprint}) was marked not an anomaly on "
            f"{_day_text(latest.created_at.date())}; this one is more than "
            f"{_dec_text(config.suppression_growth, 1)}× its size{size}, so it alerts again."
        )
        kept.append(replace(a, why=a.why + note, resurfaced=True))
    return DetectionResult(anomalies=tuple(kept), suppressed=tuple(held))


# =========================================================================== small helpers


def _severity(impact: Money, medium: Decimal, high: Decimal) -> Severity:
    if impact.amount >= high:
        return Severity.HIGH
    if impact.amount >= medium:
        return Severity.MEDIUM
    return Severity.LOW


def _pct(impact: Decimal, expected: Decimal) -> Decimal | None:
    if expected <= 0:
        return None
    return (impact / expected * 100).quantize(D("0.1"), rounding=ROUND_HALF_UP)


def _pct_text(pct: Decimal | None) -> str:
    if pct is None:
        return "n/a"
    return f"{_dec_text(pct, 0 if abs(pct) >= 10 else 1)}%"


def _ratio_text(ratio: Decimal | None) -> str:
    if ratio is None or not ratio.is_finite():
        return "far above"
    return f"{_dec_text(ratio, 1)}×"


def _dec_text(value: Decimal, places: int) -> str:
    q = value.quantize(D(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return f"{q:,f}"


def _qty(value: Decimal) -> str:
    q = value.quantize(ONE, rounding=ROUND_HALF_UP)
    return f"{q:,f}"


def _round(value: Decimal) -> Decimal:
    return value.quantize(D("0.01"), rounding=ROUND_HALF_UP)


def _day_text(day: date) -> str:
    return f"{day:%b} {day.day}"


def _gap_text(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 120:
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    hours = minutes // 60
    return f"{hours} h" if hours < 48 else f"{hours // 24} days"


def _clean(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _dedupe_str(items: Iterable[str | None]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for item in items:
        if item:
            seen.setdefault(item, None)
    return tuple(seen)
