"""The anomaly detectors on hand-built snapshots: each kind's rules and statistics, the tricky
patterns that are not anomalies (weekly seasonality, growth, noise, short histories, plan changes,
retries, credits, usual peaks), floors, severities and "not an anomaly" feedback."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from bot.domain.anomalies import (
    AlertKind,
    Anomaly,
    DetectorConfig,
    Severity,
    Suppression,
    detect,
    plan_changes,
)
from bot.domain.models import (
    AccountRef,
    BillingSnapshot,
    CustomerRecord,
    Dispute,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    LineKind,
    Payment,
    PaymentStatus,
    ProviderName,
    ProviderSnapshot,
    Subscription,
    SubscriptionStatus,
    UsagePoint,
)
from bot.domain.money import Money
from bot.domain.sparkline import sparkline

D = Decimal
TODAY = date(2026, 11, 20)  # a Friday
CONFIG = DetectorConfig()


def usd(value: str | int | Decimal) -> Money:
    return Money(D(str(value)), "usd")


def at(days_ago: float, hour: int = 1) -> datetime:
    """A moment `days_ago` days before TODAY, at `hour` UTC."""
    base = datetime(TODAY.year, TODAY.month, TODAY.day, hour, tzinfo=UTC)
    return base - timedelta(days=days_ago)


def curve(
    days: int = 90,
    *,
    level: float = 100.0,
    weekend: float = 1.0,
    growth: float = 0.0,
    noise: float = 0.0,
    seed: int = 1,
) -> list[float]:
    """Daily values ending yesterday: `level` today, `growth` a month, weekend factor, noise."""
    rng = random.Random(seed)
    out = []
    for i in range(days):
        ago = days - i
        day = TODAY - timedelta(days=ago)
        value = level / (1 + growth) ** (ago / 30.44)
        if day.weekday() >= 5:
            value *= weekend
        value *= max(0.2, 1 + noise * 2.45 * (rng.random() + rng.random() - 1))
        out.append(value)
    return out


def usage(
    values: Sequence[float],
    *,
    metric: str = "API requests",
    provider: ProviderName = "orb",
    priced: bool = True,
) -> tuple[UsagePoint, ...]:
    """Daily points ending yesterday: costs in dollars, or quantities when not `priced`."""
    n = len(values)
    points = []
    for i, value in enumerate(values):
        day = TODAY - timedelta(days=n - i)
        amount = D(str(round(value, 2)))
        points.append(
            UsagePoint(
                provider=provider,
                day=day,
                metric=metric,
                quantity=amount if not priced else None,
                cost=usd(amount) if priced else None,
            )
        )
    return tuple(points)


def spiked(values: list[float], days_ago: int, factor: float) -> list[float]:
    out = list(values)
    out[len(out) - days_ago] *= factor
    return out


def line(
    line_id: str,
    amount: str | int,
    *,
    kind: LineKind = LineKind.SUBSCRIPTION,
    metric: str | None = None,
    quantity: str | None = None,
    unit_price: str | None = None,
    description: str | None = None,
    proration: bool = False,
    start: datetime | None = None,
) -> InvoiceLine:
    return InvoiceLine(
        id=line_id,
        description=description or line_id,
        amount=usd(amount),
        kind=kind,
        metric=metric,
        quantity=D(quantity) if quantity else None,
        unit_price=D(unit_price) if unit_price else None,
        price_id=f"price_{line_id.split(':')[0]}",
        proration=proration,
        period_start=start,
    )


def invoice(
    invoice_id: str,
    days_ago: float,
    lines: Sequence[InvoiceLine],
    *,
    provider: ProviderName = "stripe",
    status: InvoiceStatus = InvoiceStatus.PAID,
    credits: str | None = None,
    reason: str = "subscription_cycle",
) -> Invoice:
    subtotal = sum((ln.amount.amount for ln in lines), D(0))
    applied = D(credits) if credits else D(0)
    total = usd(subtotal - applied)
    return Invoice(
        provider=provider,
        id=invoice_id,
        customer_id="cus_1",
        status=status,
        currency="usd",
        total=total,
        subtotal=usd(subtotal),
        credits_applied=usd(applied) if credits else None,
        amount_due=total,
        amount_paid=total if status is InvoiceStatus.PAID else usd(0),
        created_at=at(days_ago, 0),
        period_start=at(days_ago + 30, 0),
        period_end=at(days_ago, 0),
        billing_reason=reason,
        subscription_id="sub_1",
        lines=tuple(lines),
    )


def monthly(
    count: int, *, latest_days_ago: int = 2, fee: int = 500, usage_amount: int = 1500
) -> list[Invoice]:
    """`count` regular monthly invoices, newest first: a fee and a usage line."""
    return [
        invoice(
            f"in_{k}",
            latest_days_ago + 30 * k,
            [
                line(f"fee:{k}", fee),
                line(f"api:{k}", usage_amount, kind=LineKind.USAGE, metric="API requests"),
            ],
        )
        for k in range(count)
    ]


def payment(
    payment_id: str,
    amount: str | int,
    when: datetime,
    *,
    status: PaymentStatus = PaymentStatus.SUCCEEDED,
    invoice_id: str | None = None,
    intent: str | None = None,
    provider: ProviderName = "stripe",
    refunded: str | None = None,
) -> Payment:
    return Payment(
        provider=provider,
        id=payment_id,
        customer_id="cus_1",
        amount=usd(amount),
        status=status,
        created_at=when,
        invoice_id=invoice_id,
        payment_intent_id=intent,
        amount_refunded=usd(refunded) if refunded else None,
        failure_code="card_declined" if status is PaymentStatus.FAILED else None,
        failure_message="Your card was declined." if status is PaymentStatus.FAILED else None,
    )


def snap(
    *,
    usage_points: Sequence[UsagePoint] = (),
    invoices: Sequence[Invoice] = (),
    payments: Sequence[Payment] = (),
    disputes: Sequence[Dispute] = (),
    subscriptions: Sequence[Subscription] = (),
    upcoming: Invoice | None = None,
    provider: ProviderName = "orb",
    account_id: str | None = "acct_x",
) -> BillingSnapshot:
    by: dict[str, dict[str, list[object]]] = {}

    def bucket(name: str) -> dict[str, list[object]]:
        return by.setdefault(name, {"usage": [], "inv": [], "pay": [], "disp": [], "subs": []})

    bucket(provider)
    for u in usage_points:
        bucket(u.provider)["usage"].append(u)
    for i in invoices:
        bucket(i.provider)["inv"].append(i)
    for p in payments:
        bucket(p.provider)["pay"].append(p)
    for d in disputes:
        bucket("stripe")["disp"].append(d)
    for s in subscriptions:
        bucket(s.provider)["subs"].append(s)
    providers = []
    for name, parts in by.items():
        pname: ProviderName = name  # type: ignore[assignment]
        providers.append(
            ProviderSnapshot(
                provider=pname,
                customer=CustomerRecord(
                    provider=pname, customer_id=f"{name}_cus", account_id=account_id
                ),
                subscriptions=tuple(parts["subs"]),  # type: ignore[arg-type]
                invoices=tuple(sorted(parts["inv"], key=lambda i: i.created_at, reverse=True)),  # type: ignore[arg-type, attr-defined]
                upcoming_invoice=upcoming if upcoming and upcoming.provider == name else None,
                payments=tuple(parts["pay"]),  # type: ignore[arg-type]
                disputes=tuple(parts["disp"]),  # type: ignore[arg-type]
                usage=tuple(parts["usage"]),  # type: ignore[arg-type]
            )
        )
    ids = {p.provider: p.customer.customer_id for p in providers}
    return BillingSnapshot(
        account=AccountRef(account_id=account_id, customer_ids=ids), providers=tuple(providers)
    )


def run(snapshot: BillingSnapshot, config: DetectorConfig = CONFIG, **kw: object) -> list[Anomaly]:
    return list(detect(snapshot, config=config, today=TODAY, **kw).anomalies)  # type: ignore[arg-type]


def kinds(found: Sequence[Anomaly]) -> list[tuple[str, date]]:
    return [(a.kind.value, a.period) for a in found]


# --- usage spikes -------------------------------------------------------------------------------


def test_a_spike_yesterday_is_a_usage_spike_with_its_numbers() -> None:
    """API requests at 5× yesterday: one spike dated yesterday, expected vs actual, impact in money
    and percent, the metric as driver, a statistic as the reason, 60 days of series."""
    values = spiked(curve(noise=0.05), 1, 5)
    [found] = run(snap(usage_points=usage(values)))
    assert (found.kind, found.period) == (AlertKind.USAGE_SPIKE, TODAY - timedelta(days=1))
    assert found.actual == usd(str(round(values[-1], 2)))
    assert D(90) < found.expected.amount < D(110)
    assert found.impact == found.actual - found.expected
    assert found.impact_pct is not None and D(300) < found.impact_pct < D(460)
    assert found.drivers[0].label == "API requests"
    assert found.summary.startswith("API requests cost $") and "the usual" in found.summary
    assert found.why.startswith("Statistic:") and "$50.00 floor" in found.why
    assert found.fingerprint == "usage_spike:api_requests"
    assert D(4) < found.magnitude < D(6)
    assert len(found.series) == 60 and found.series[-1].anomalous
    assert sum(p.anomalous for p in found.series) == 1
    assert 0 < len(found.sparkline()) <= 60 and found.sparkline()[-1] == "█"
    assert found.to_json()["kind"] == "usage_spike" and found.to_json()["currency"] == "usd"


@pytest.mark.parametrize(
    "shape",
    [
        {"weekend": 2.5},  # weekend-heavy
        {"weekend": 0.2},  # a weekday business
        {"growth": 0.45},  # steady strong growth
        {"growth": -0.1},  # steady decline
        {"noise": 0.25, "seed": 3},  # noisy
        {"noise": 0.12, "weekend": 0.6, "growth": 0.05, "seed": 9},  # an ordinary account
    ],
)
def test_seasonality_growth_and_noise_are_not_spikes(shape: dict[str, float]) -> None:
    """Weekly patterns, steady growth or decline and day-to-day noise never alert."""
    assert run(snap(usage_points=usage(curve(**shape)))) == []  # type: ignore[arg-type]


def test_a_spike_on_a_weekend_heavy_account_is_still_found() -> None:
    """Seasonality raises the expected weekend level, not the bar for a real spike."""
    values = spiked(curve(weekend=2.5, noise=0.05), 2, 5)
    assert kinds(run(snap(usage_points=usage(values)))) == [
        ("usage_spike", TODAY - timedelta(days=2))
    ]


def test_a_usual_monthly_peak_is_not_a_spike() -> None:
    """A 4× batch every 30 days (two seen before) is the account's normal."""
    values = curve(noise=0.05)
    for ago in (2, 32, 62):
        values = spiked(values, ago, 4)
    assert run(snap(usage_points=usage(values))) == []


def test_short_history_uses_the_rule_from_three_days() -> None:
    """With under 14 days of history the rule (3× the recent median) decides: 8 days with a
    6× day alert and say so; a new account ramping up over 5 days does not; 2 days say nothing."""
    values = spiked(curve(8, noise=0.03), 1, 6)
    [found] = run(snap(usage_points=usage(values)))
    assert found.why.startswith("Rule:") and "statistics need 14" in found.why
    ramp = [35.0, 51.0, 67.0, 84.0, 100.0]
    assert run(snap(usage_points=usage(ramp))) == []
    assert run(snap(usage_points=usage([10.0, 500.0]))) == []


def test_leading_days_without_usage_are_not_history() -> None:
    """Zero days before the first use don't count: 80 zero days then 8 days is a short history."""
    values = [0.0] * 80 + spiked(curve(8, noise=0.03), 1, 6)
    [found] = run(snap(usage_points=usage(values)))
    assert found.why.startswith("Rule:")


def test_the_money_floor_holds_small_spikes_back() -> None:
    """A 6× day on a $5/day metric is $25 above: under the $50 floor; a $10 floor lets it in."""
    values = spiked(curve(level=5, noise=0.03), 1, 6)
    assert run(snap(usage_points=usage(values))) == []
    lower = replace(CONFIG, spike_min_impact=D(10))
    assert kinds(run(snap(usage_points=usage(values)), lower)) == [
        ("usage_spike", TODAY - timedelta(days=1))
    ]


def test_only_complete_recent_days_are_checked() -> None:
    """Today's partial day and days older than `usage_days_back` are not reported."""
    values = spiked(curve(noise=0.05), 5, 6)
    partial = UsagePoint(provider="orb", day=TODAY, metric="API requests", cost=usd(5000))
    points = (*usage(values), partial)
    assert run(snap(usage_points=points)) == []


def test_two_metrics_spiking_on_one_day_are_one_alert_with_both_drivers() -> None:
    """One alert per day (the dedupe key), the larger metric first."""
    api = usage(spiked(curve(noise=0.05), 1, 6))
    compute = usage(spiked(curve(level=50, noise=0.05, seed=2), 1, 4), metric="Compute hours")
    [found] = run(snap(usage_points=api + compute))
    assert [d.label for d in found.drivers] == ["API requests", "Compute hours"]
    assert found.summary.startswith("API requests and Compute hours cost")


def test_quantities_are_priced_by_the_invoice_unit_price() -> None:
    """Metronome reports quantities only: the latest invoice's unit price for that metric turns
    them into money, and the why says so; without a price the metric is skipped by default."""
    quantities = spiked(curve(level=500_000, noise=0.05), 1, 5)
    points = usage(quantities, provider="metronome", priced=False)
    priced = invoice(
        "inv_m",
        10,
        [line("api", 2000, kind=LineKind.USAGE, metric="API requests", quantity="10000000",
              unit_price="0.0002")],
        provider="metronome",
    )  # fmt: skip
    [found] = run(snap(usage_points=points, invoices=[priced], provider="metronome"))
    assert D(95) < found.expected.amount < D(105)  # 500,000 × $0.0002
    assert "unit price on the latest invoice" in found.why
    assert run(snap(usage_points=points, provider="metronome")) == []
    loud = replace(CONFIG, alert_unpriced_usage=True)
    [unpriced] = run(snap(usage_points=points, provider="metronome"), loud)
    assert unpriced.impact.is_zero() and "no price known" in unpriced.summary


def test_a_known_plan_change_is_not_a_usage_spike() -> None:
    """Usage 4× from an upgrade two days ago (proration lines on the upcoming invoice) restarts the
    baseline, so it is no spike; the same usage without the plan change is one."""
    values = curve(noise=0.05)
    values[-2:] = [v * 4 for v in values[-2:]]
    points = usage(values, provider="stripe")
    upgrade = invoice(
        "upcoming_in_1",
        -28,
        [line("pr", 300, kind=LineKind.PRORATION, proration=True, start=at(2))],
        status=InvoiceStatus.DRAFT,
    )
    assert kinds(run(snap(usage_points=points, provider="stripe")))  # a spike without it
    with_change = snap(usage_points=points, upcoming=upgrade, provider="stripe")
    assert [c.at for c in plan_changes(with_change)] == [at(2)]
    assert run(with_change) == []


def test_a_metronome_amendment_is_a_plan_change() -> None:
    """A contract amendment starting yesterday (in the contract JSON) suppresses the new level."""
    values = curve(noise=0.05)
    values[-1] *= 5
    contract = Subscription(
        provider="metronome",
        id="contract_1",
        status=SubscriptionStatus.ACTIVE,
        plan_name="Usage contract",
        started_at=at(400),
        raw={"amendments": [{"id": "am_1", "starting_at": at(1, 0).isoformat()}]},
    )
    points = usage(values, provider="metronome")
    assert run(snap(usage_points=points, provider="metronome"))
    assert run(snap(usage_points=points, subscriptions=[contract], provider="metronome")) == []


@pytest.mark.parametrize(
    ("level", "severity"), [(30, Severity.LOW), (100, Severity.MEDIUM), (400, Severity.HIGH)]
)
def test_spike_severity_follows_the_impact(level: int, severity: Severity) -> None:
    """Impact under $250 is low, from $250 medium, from $1,000 high (4× spikes here)."""
    values = spiked(curve(level=level, noise=0.03), 1, 4)
    [found] = run(snap(usage_points=usage(values)))
    assert found.severity is severity


# --- invoice jumps -----------------------------------------------------------------------------


def test_a_one_time_line_on_a_normal_invoice_is_an_invoice_jump() -> None:
    """A $3,000 one-off line on top of the usual $2,000: a jump dated on the invoice, the line as
    its driver, the baseline and floors in the why, 12 invoices in the series."""
    history = monthly(14)
    latest = history[0]
    latest = replace(
        latest,
        lines=(*latest.lines, line("onb", 3000, kind=LineKind.ONE_OFF, description="Onboarding")),
        total=usd(5000),
    )
    [found] = run(snap(invoices=[latest, *history[1:]], provider="stripe"))
    assert (found.kind, found.period) == (AlertKind.INVOICE_JUMP, at(2).date())
    assert (found.expected, found.actual, found.impact) == (usd(2000), usd(5000), usd(3000))
    assert found.impact_pct == D(150)
    assert found.drivers[0].label == "Onboarding" and found.drivers[0].amount == usd(3000)
    assert "median of the previous 3 comparable invoices" in found.why
    assert "$100.00 and 25%" in found.why
    assert found.severity is Severity.HIGH
    assert len(found.series) == 12 and found.series[-1].anomalous
    assert found.refs[:2] == ("in_0", "in_1")


def test_a_plan_change_and_its_prorations_are_not_an_invoice_jump() -> None:
    """Growth ($500) → Pro ($1,500) mid-period with proration lines: the increase is the plan's."""
    history = monthly(6)
    latest = history[0]
    new_lines = (
        line("pr_credit", -300, kind=LineKind.PRORATION, proration=True, start=at(20)),
        line("pr_debit", 1000, kind=LineKind.PRORATION, proration=True, start=at(20)),
        InvoiceLine(id="pro:0", description="Pro plan", amount=usd(1500),
                    kind=LineKind.SUBSCRIPTION, price_id="price_pro", product_id="prod_pro"),
        latest.lines[1],
    )  # fmt: skip
    total = sum((ln.amount.amount for ln in new_lines), D(0))
    latest = replace(latest, lines=new_lines, total=usd(total), subtotal=usd(total))
    assert run(snap(invoices=[latest, *history[1:]], provider="stripe")) == []


def test_steady_invoice_growth_is_not_a_jump() -> None:
    """Invoices growing 40% a month are projected forward, not compared flat."""
    invoices = [
        invoice(f"in_{k}", 2 + 30 * k, [line(f"api:{k}", int(5000 / 1.4**k), kind=LineKind.USAGE)])
        for k in range(8)
    ]
    assert run(snap(invoices=invoices, provider="stripe")) == []


def test_used_up_credits_and_a_one_off_credit_are_not_jumps() -> None:
    """Credits that ran out (the total rises as they stop applying) and a normal invoice after a
    one-off credit last month are the account's terms, not jumps."""
    history = monthly(6)
    credited = [replace(inv, total=usd(500), credits_applied=usd(1500)) for inv in history[1:4]]
    assert run(snap(invoices=[history[0], *credited, *history[4:]], provider="stripe")) == []
    one_off = replace(history[1], total=usd(1200))
    assert run(snap(invoices=[history[0], one_off, *history[2:]], provider="stripe")) == []


@pytest.mark.parametrize(
    ("extra", "alerts"), [(90, False), (400, False), (600, True)]
)  # fmt: skip
def test_invoice_jump_floors(extra: int, alerts: bool) -> None:
    """$90 more is under the $100 floor, $400 (20%) under 25%, $600 (30%) clears both."""
    history = monthly(6)
    latest = replace(history[0], total=usd(2000 + extra))
    found = run(snap(invoices=[latest, *history[1:]], provider="stripe"))
    assert bool(found) is alerts


def test_only_recent_invoices_are_checked() -> None:
    """An invoice dated 10 days ago is outside the 7-day window."""
    history = monthly(6, latest_days_ago=10)
    latest = replace(history[0], total=usd(9000))
    assert run(snap(invoices=[latest, *history[1:]], provider="stripe")) == []


# --- failed payments ----------------------------------------------------------------------------


def test_an_unpaid_failed_payment_alerts_dated_by_its_first_failure() -> None:
    """Two declines on an invoice that stays open: one alert, dated by the first failure, the
    unpaid amount as the impact, each attempt a driver."""
    inv = invoice("in_9", 4, [line("fee", 1200)], status=InvoiceStatus.PAST_DUE)
    failed = PaymentStatus.FAILED
    fails = [
        payment("ch_1", 1200, at(4, 2), status=failed, invoice_id="in_9", intent="pi_1"),
        payment("ch_2", 1200, at(1, 5), status=failed, invoice_id="in_9", intent="pi_1"),
    ]
    [found] = run(snap(invoices=[inv], payments=fails, provider="stripe"))
    assert (found.kind, found.period) == (AlertKind.PAYMENT_FAILED, at(4).date())
    assert (found.expected, found.actual, found.impact) == (usd(1200), usd(0), usd(1200))
    assert "failed 2 times" in found.summary and "past due" in found.summary
    assert [d.label.split()[0] for d in found.drivers] == ["ch_1", "ch_2"]
    assert found.severity is Severity.HIGH  # ≥ $1,000


def test_a_retried_payment_that_succeeded_is_neither_failed_nor_duplicate() -> None:
    """Declined, then paid on the retry: nothing to alert on."""
    inv = invoice("in_9", 3, [line("fee", 800)])
    failed = PaymentStatus.FAILED
    pays = [
        payment("ch_1", 800, at(3, 2), status=failed, invoice_id="in_9", intent="pi_1"),
        payment("ch_2", 800, at(1, 2), invoice_id="in_9", intent="pi_1"),
    ]
    assert run(snap(invoices=[inv], payments=pays, provider="stripe")) == []


def test_an_orb_attempt_and_its_stripe_charge_are_one_failure() -> None:
    """Orb's failed attempt names the Stripe payment intent whose charge was declined: one alert."""
    inv = invoice("orb_inv", 1, [line("fee", 700)], provider="orb", status=InvoiceStatus.PAST_DUE)
    pays = [
        payment("attempt_1", 700, at(1, 1), status=PaymentStatus.FAILED, invoice_id="orb_inv",
                intent="pi_7", provider="orb"),
        payment("ch_7", 700, at(1, 1), status=PaymentStatus.FAILED, intent="pi_7"),
    ]  # fmt: skip
    [found] = run(snap(invoices=[inv], payments=pays))
    assert found.impact == usd(700) and "failed once" in found.summary


def test_an_invoice_past_due_without_a_failed_payment_alerts() -> None:
    """A sent invoice not paid by its due date is a payment_failed, dated by the due date."""
    inv = replace(
        invoice("in_5", 20, [line("fee", 300)], status=InvoiceStatus.PAST_DUE), due_at=at(6, 0)
    )
    [found] = run(snap(invoices=[inv], provider="stripe"))
    assert (found.kind, found.period) == (AlertKind.PAYMENT_FAILED, at(6).date())
    assert "past due" in found.summary


def test_an_old_failure_that_was_paid_later_is_quiet() -> None:
    """A failure 20 days ago on an invoice paid since raises nothing."""
    inv = invoice("in_1", 21, [line("fee", 300)])
    fail = payment("ch_1", 300, at(20), status=PaymentStatus.FAILED, invoice_id="in_1")
    assert run(snap(invoices=[inv], payments=[fail], provider="stripe")) == []


# --- duplicates -------------------------------------------------------------------------------


def test_one_invoice_paid_twice_is_a_duplicate_dated_by_the_later_charge() -> None:
    """Two successful $900 charges for in_1, five hours apart."""
    inv = invoice("in_1", 2, [line("fee", 900)])
    pays = [
        payment("ch_a", 900, at(2, 1), invoice_id="in_1", intent="pi_a"),
        payment("ch_b", 900, at(2, 6), invoice_id="in_1", intent="pi_b"),
    ]
    [found] = run(snap(invoices=[inv], payments=pays, provider="stripe"))
    assert (found.kind, found.period) == (AlertKind.DUPLICATE_CHARGE, at(2).date())
    assert (found.expected, found.actual, found.impact) == (usd(900), usd(1800), usd(900))
    assert "was paid twice" in found.summary and "same invoice in_1" in found.why
    assert set(found.refs) >= {"ch_a", "ch_b", "in_1"}


def test_two_invoices_two_charges_are_not_a_duplicate() -> None:
    """Same amount, an hour apart, but each pays its own invoice."""
    invs = [invoice("in_1", 2, [line("fee", 900)]), invoice("in_2", 2, [line("fee", 900)])]
    pays = [
        payment("ch_a", 900, at(2, 1), invoice_id="in_1", intent="pi_a"),
        payment("ch_b", 900, at(2, 2), invoice_id="in_2", intent="pi_b"),
    ]
    assert run(snap(invoices=invs, payments=pays, provider="stripe")) == []


def test_duplicate_window_and_refunds() -> None:
    """Two charges without invoices 10 h apart are duplicates under the 24 h rule, not under a
    6 h window; a refunded duplicate is not alerted; a window over 24 h is refused."""
    inv = invoice("in_0", 20, [line("fee", 450)])
    pays = [payment("ch_a", 450, at(3, 1)), payment("ch_b", 450, at(3, 11))]
    assert kinds(run(snap(invoices=[inv], payments=pays, provider="stripe"))) == [
        ("duplicate_charge", at(3).date())
    ]
    short = replace(CONFIG, duplicate_window=timedelta(hours=6))
    assert run(snap(invoices=[inv], payments=pays, provider="stripe"), short) == []
    refunded = [pays[0], replace(pays[1], amount_refunded=usd(450))]
    assert run(snap(invoices=[inv], payments=refunded, provider="stripe")) == []
    with pytest.raises(ValueError, match="24 h"):
        DetectorConfig(duplicate_window=timedelta(hours=30))


# --- disputes ---------------------------------------------------------------------------------


def dispute(days_ago: float, status: str = "needs_response", due_in: float | None = 5) -> Dispute:
    return Dispute(
        provider="stripe",
        id="dp_1",
        amount=usd(640),
        status=status,
        reason="product_not_received",
        created_at=at(days_ago, 9),
        payment_id="ch_9",
        evidence_due_by=at(-due_in, 23) if due_in is not None else None,
    )


def test_a_new_dispute_alerts_with_reason_amount_and_evidence_due_date() -> None:
    """Opened two days ago: dated by creation, reason, amount and evidence due date shown."""
    [found] = run(snap(disputes=[dispute(2)], provider="stripe"))
    assert (found.kind, found.period) == (AlertKind.DISPUTE_OPENED, at(2).date())
    assert found.actual == usd(640) and found.impact == usd(640) and found.impact_pct is None
    assert "product not received" in found.summary
    assert f"evidence due {(TODAY + timedelta(days=5)):%b} {(TODAY + timedelta(days=5)).day}" in (
        found.summary
    )
    assert found.severity is Severity.MEDIUM
    assert set(found.refs) == {"dp_1", "ch_9"}


def test_dispute_age_status_and_urgency() -> None:
    """An old dispute alerts only while it needs a response; evidence due within 3 days is high."""
    assert run(snap(disputes=[dispute(40, status="lost", due_in=None)], provider="stripe")) == []
    [old] = run(snap(disputes=[dispute(15)], provider="stripe"))
    assert old.period == at(15).date()
    [urgent] = run(snap(disputes=[dispute(2, due_in=2)], provider="stripe"))
    assert urgent.severity is Severity.HIGH


# --- feedback, merging, single providers ----------------------------------------------------------


def test_not_an_anomaly_holds_the_pattern_back_until_it_grows() -> None:
    """A suppression of this pattern at a similar size holds the alert back (returned as
    suppressed); at more than 1.5× its size it alerts again and says why; other patterns and
    other accounts are not affected."""
    values = spiked(curve(noise=0.05), 1, 5)
    snapshot = snap(usage_points=usage(values))
    [alert] = run(snapshot)
    held = Suppression("acct_x", AlertKind.USAGE_SPIKE, alert.fingerprint, alert.magnitude, at(10))
    result = detect(snapshot, config=CONFIG, today=TODAY, suppressions=[held])
    assert result.anomalies == () and result.suppressed == ((alert, held),)
    smaller = replace(held, magnitude=alert.magnitude / 2)
    [again] = detect(snapshot, config=CONFIG, today=TODAY, suppressions=[smaller]).anomalies
    assert again.resurfaced and "marked not an anomaly" in again.why
    other = [replace(held, fingerprint="usage_spike:storage"), replace(held, account_id="acct_y")]
    assert len(detect(snapshot, config=CONFIG, today=TODAY, suppressions=other).anomalies) == 1


def test_account_id_falls_back_to_the_provider_customer_id() -> None:
    """Without our account ID the alert names the provider's customer (DESIGN §5)."""
    [found] = run(snap(disputes=[dispute(1)], provider="stripe", account_id=None))
    assert found.account_id == "stripe_cus"


def test_several_kinds_on_one_account_are_separate_alerts() -> None:
    """A dispute and a spike are two alerts, sorted by period."""
    values = spiked(curve(noise=0.05, seed=4), 1, 5)
    found = run(snap(usage_points=usage(values, provider="stripe"), disputes=[dispute(2)],
                     provider="stripe"))  # fmt: skip
    assert [a.kind for a in found] == [AlertKind.DISPUTE_OPENED, AlertKind.USAGE_SPIKE]


def test_config_is_validated() -> None:
    """Impossible windows are refused."""
    with pytest.raises(ValueError, match="usage_days_back"):
        DetectorConfig(usage_days_back=0)
    with pytest.raises(ValueError, match="min_rule_days"):
        DetectorConfig(min_rule_days=20)


# --- sparkline --------------------------------------------------------------------------------


def test_sparkline_draws_one_line_of_bars() -> None:
    """Lowest ▁, highest █, flat at mid height, empty for nothing, never over 60 characters,
    and a long series keeps its one-day spike."""
    assert sparkline([D(0), D(1), D(2), D(7)]) == "▁▂▃█"
    assert sparkline([D(5)] * 4) == "▄▄▄▄"
    assert sparkline([]) == ""
    long = [D(1)] * 200
    long[137] = D(50)
    drawn = sparkline(long)
    assert len(drawn) == 60 and drawn.count("█") == 1 and set(drawn) == {"▁", "█"}
    assert len(sparkline([D(i) for i in range(30)], width=10)) == 10
