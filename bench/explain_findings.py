"""CPU time of the findings engine on a large account: a 300-line invoice with 12 months of history.

Builds 13 monthly invoices of 300 lines each (usage lines on many metrics, seats, add-ons that come
and go, a plan change with prorations, a coupon, tax and credits), plus a year of payments with a
duplicate charge, and times `pick_invoices` + `explain_invoice` with `time.process_time`.

    python bench/explain_findings.py [--lines 300] [--months 12] [--repeat 200]

Budget (findings issue): under 50 ms CPU per call.
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from bot.domain.findings import explain_invoice, pick_invoices
from bot.domain.models import (
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    LineKind,
    Payment,
    PaymentStatus,
    Subscription,
    SubscriptionStatus,
)
from bot.domain.money import Money

BUDGET_MS = 50.0
CENT = Decimal("0.01")


def usd(value: Decimal) -> Money:
    """Dollars."""
    return Money(value, "usd")


def build_invoice(rng: random.Random, month: int, lines: int) -> Invoice:
    """One monthly invoice with `lines` lines whose parts add up to its total."""
    start = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=30 * month)
    end = start + timedelta(days=30)
    plan = "Pro" if month >= 9 else "Team"
    items: list[InvoiceLine] = [
        InvoiceLine(
            id=f"il_{month}_plan",
            description=f"{plan} plan",
            amount=usd(Decimal(499 if plan == "Pro" else 199)),
            kind=LineKind.SUBSCRIPTION,
            quantity=Decimal(1),
            unit_price=Decimal(499 if plan == "Pro" else 199),
            price_id=f"price_{plan.lower()}",
            product_id=f"prod_{plan.lower()}",
        ),
        InvoiceLine(
            id=f"il_{month}_seats",
            description="Seats",
            amount=usd(Decimal(20 * (10 + month))),
            kind=LineKind.SUBSCRIPTION,
            quantity=Decimal(10 + month),
            unit_price=Decimal(20),
            price_id="price_seat",
        ),
    ]
    if month == 9:
        items += [
            InvoiceLine(
                id=f"il_{month}_unused",
                description="Unused time on Team",
                amount=usd(Decimal("-99.50")),
                kind=LineKind.PRORATION,
                proration=True,
                price_id="price_team",
            ),
            InvoiceLine(
                id=f"il_{month}_remaining",
                description="Remaining time on Pro",
                amount=usd(Decimal("249.50")),
                kind=LineKind.PRORATION,
                proration=True,
                price_id="price_pro",
            ),
        ]
    n = 0
    while len(items) < lines - (1 if month < 6 else 0):
        # Most metrics recur every month; every seventh comes and goes.
        if n % 7 == 3 and rng.random() < 0.5:
            n += 1
            continue
        quantity = Decimal(rng.randint(1_000, 5_000_000))
        price = Decimal("0.0001") * (2 if month > 6 and n % 11 == 0 else 1) * (n % 5 + 1)
        items.append(
            InvoiceLine(
                id=f"il_{month}_{n}",
                description=f"metric_{n} usage",
                amount=usd((quantity * price).quantize(CENT)),
                kind=LineKind.USAGE,
                quantity=quantity,
                unit_price=price,
                metric=f"metric_{n}",
                price_id=f"price_metric_{n}",
            )
        )
        n += 1
    if month < 6:
        items.append(
            InvoiceLine(
                id=f"il_{month}_coupon",
                description="20% off for 6 months",
                amount=usd(Decimal("-100.00")),
                kind=LineKind.DISCOUNT,
            )
        )
    subtotal = sum((line.amount.amount for line in items), Decimal(0))
    tax_rate = Decimal("0.08") if month < 10 else Decimal("0.0875")
    tax = (subtotal * tax_rate).quantize(CENT)
    credits = Decimal(300) if month < 11 else Decimal(0)
    return Invoice(
        provider="stripe",
        id=f"in_{month:02d}",
        customer_id="cus_bench",
        status=InvoiceStatus.PAID,
        currency="usd",
        total=usd(subtotal + tax - credits),
        subtotal=usd(subtotal),
        tax=usd(tax),
        credits_applied=usd(credits),
        created_at=end,
        period_start=start,
        period_end=end,
        billing_reason="subscription_cycle",
        subscription_id="sub_bench",
        plan_name=plan,
        lines=tuple(items),
    )


def build_payments(invoices: list[Invoice]) -> list[Payment]:
    """One successful charge per invoice, and the latest one charged twice."""
    payments = [
        Payment(
            provider="stripe",
            id=f"ch_{inv.id}",
            customer_id="cus_bench",
            amount=inv.total,
            status=PaymentStatus.SUCCEEDED,
            created_at=(inv.created_at or datetime.now(UTC)) + timedelta(hours=1),
            invoice_id=inv.id,
        )
        for inv in invoices
    ]
    last = payments[-1]
    payments.append(
        Payment(
            provider="stripe",
            id=f"{last.id}_dup",
            customer_id="cus_bench",
            amount=last.amount,
            status=PaymentStatus.SUCCEEDED,
            created_at=last.created_at + timedelta(minutes=3),
            invoice_id=last.invoice_id,
        )
    )
    return payments


def main() -> None:
    """Build the data, time the engine, print ms per call against the budget."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=300)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()

    rng = random.Random(7)
    invoices = [build_invoice(rng, month, args.lines) for month in range(args.months + 1)]
    payments = build_payments(invoices)
    subscriptions = [
        Subscription(
            provider="stripe", id="sub_bench", status=SubscriptionStatus.ACTIVE, plan_name="Pro"
        )
    ]
    newest_first = list(reversed(invoices))

    def call() -> int:
        current, history = pick_invoices(newest_first)
        result = explain_invoice(current, history, payments=payments, subscriptions=subscriptions)
        return len(result.findings)

    findings = call()  # warm up, and show what was found
    started = time.process_time()
    for _ in range(args.repeat):
        call()
    elapsed_ms = (time.process_time() - started) * 1000 / args.repeat
    verdict = "within" if elapsed_ms < BUDGET_MS else "OVER"
    print(
        f"explain_invoice: {len(invoices[-1].lines)} lines, {args.months} months of history, "
        f"{len(payments)} payments -> {findings} findings"
    )
    print(
        f"{elapsed_ms:.2f} ms CPU per call over {args.repeat} calls ({verdict} {BUDGET_MS:.0f} ms)"
    )


if __name__ == "__main__":
    main()
