"""Property tests of the findings engine: for random invoice pairs the findings add up exactly,
never invent money, and come ranked by size."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.domain.findings import Explanation, explain_invoice
from bot.domain.models import Invoice, InvoiceLine, InvoiceStatus, LineKind
from bot.domain.money import Money

D = Decimal
SETTINGS = settings(max_examples=200, deadline=None)

# A small pool of line identities so that random invoices share, and fail to share, keys at
# every matching level (price, product, metric, description).
_IDENTITIES = [
    # (kind, price_id, product_id, metric, description)
    (LineKind.SUBSCRIPTION, "price_pro", "prod_pro", None, "Pro plan"),
    (LineKind.SUBSCRIPTION, "price_team", "prod_team", None, "Team plan"),
    (LineKind.SUBSCRIPTION, None, "prod_seat", None, "Seats"),
    (LineKind.USAGE, "price_api", "prod_api", "api_requests", "API requests"),
    (LineKind.USAGE, "price_api_v2", "prod_api", "api_requests", "API requests"),
    (LineKind.USAGE, None, None, "gb_stored", "Storage"),
    (LineKind.OTHER, None, None, "egress", "Egress (Mar 1 – Mar 31)"),
    (LineKind.ONE_OFF, None, None, None, "Premium support"),
    (LineKind.ONE_OFF, None, None, None, "Setup fee"),
    (LineKind.PRORATION, "price_pro", "prod_pro", None, "Unused time on Pro"),
    (LineKind.SUBSCRIPTION, "price_team", "prod_team", None, "Remaining time on Team"),
    (LineKind.MINIMUM, None, None, None, "Minimum commitment"),
    (LineKind.DISCOUNT, None, None, None, "20% off"),
    (LineKind.CREDIT, None, None, None, "Prepaid credits"),
    (LineKind.TAX, None, None, None, "Sales tax"),
]


def _scaled(low: int, high: int, places: int) -> st.SearchStrategy[Decimal]:
    """Decimals with `places` digits between low and high minor steps (integers generate fast)."""
    return st.integers(min_value=low, max_value=high).map(lambda n: D(n).scaleb(-places))


quantities = st.one_of(_scaled(0, 10_000_000, 0), _scaled(0, 100_000_000, 3))
prices = _scaled(1, 500_000_000, 6)
cents = _scaled(-500_000, 500_000, 2)
positive_cents = _scaled(0, 200_000, 2)


@st.composite
def invoice_lines(draw: st.DrawFn, invoice_id: str) -> list[InvoiceLine]:
    picks = draw(st.lists(st.integers(0, len(_IDENTITIES) - 1), max_size=10))
    lines = []
    for n, pick in enumerate(picks):
        kind, price_id, product_id, metric, description = _IDENTITIES[pick]
        quantity: Decimal | None = None
        unit_price: Decimal | None = None
        style = draw(st.sampled_from(["exact", "rounded", "flat", "unpriced"]))
        if style in ("exact", "rounded"):
            quantity, unit_price = draw(quantities), draw(prices)
            amount = quantity * unit_price
            if style == "rounded":
                amount = amount.quantize(D("0.01"))
        else:
            amount = draw(cents)
            if style == "unpriced":
                quantity = draw(quantities)
        if kind in (LineKind.DISCOUNT, LineKind.CREDIT):
            amount = -abs(amount)
        lines.append(
            InvoiceLine(
                id=f"{invoice_id}_l{n}",
                description=description,
                amount=Money(amount, "usd"),
                kind=kind,
                quantity=quantity,
                unit_price=unit_price,
                metric=metric,
                price_id=price_id,
                product_id=product_id,
                proration=kind is LineKind.PRORATION or description.startswith("Remaining"),
            )
        )
    return lines


@st.composite
def invoices(draw: st.DrawFn, invoice_id: str, month: int, consistent: bool = True) -> Invoice:
    """An invoice whose total follows from its lines and amounts (or, if not `consistent`,
    any total)."""
    lines = draw(invoice_lines(invoice_id))
    optional = st.none() | positive_cents
    discount, tax, credits, balance = (draw(optional) for _ in range(4))
    total = (
        sum((ln.amount.amount for ln in lines), D(0))
        - (discount or 0)
        + (tax or 0)
        - (credits or 0)
        - (balance or 0)
    )
    if not consistent:
        total = draw(cents)

    def money(value: Decimal | None) -> Money | None:
        return None if value is None else Money(value, "usd")

    start = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=31 * month)
    return Invoice(
        provider="stripe",
        id=invoice_id,
        customer_id="cus_1",
        status=InvoiceStatus.PAID,
        currency="usd",
        total=Money(total, "usd"),
        tax=money(tax),
        discount=money(discount),
        credits_applied=money(credits),
        balance_applied=money(balance),
        created_at=start + timedelta(days=31),
        period_start=start,
        period_end=start + timedelta(days=31),
        billing_reason="subscription_cycle",
        plan_name=draw(st.sampled_from([None, "Pro", "Team"])),
        lines=tuple(lines),
    )


def assert_invariants(result: Explanation) -> None:
    amounts = [f.amount.amount for f in result.findings]
    assert sum(amounts, D(0)) == result.explained.amount
    assert result.explained + result.unexplained == result.change
    assert 0 <= result.explained_share <= 1
    assert all(amount != 0 for amount in amounts)
    sizes = [abs(a) for a in amounts]
    assert sizes == sorted(sizes, reverse=True)
    assert all(f.amount.currency == "usd" for f in result.findings)
    assert all(f.summary for f in result.findings)


@SETTINGS
@given(previous=invoices("in_a", 0), current=invoices("in_b", 1))
def test_consistent_invoices_are_fully_explained(previous: Invoice, current: Invoice) -> None:
    """When each invoice adds up, the findings explain the whole change, exactly."""
    result = explain_invoice(current, [previous])
    assert_invariants(result)
    assert result.change == current.total - previous.total
    assert result.unexplained.is_zero()
    assert result.explained_share == 1


@SETTINGS
@given(
    previous=invoices("in_a", 0, consistent=False),
    current=invoices("in_b", 1, consistent=False),
)
def test_any_invoices_keep_the_books_balanced(previous: Invoice, current: Invoice) -> None:
    """Whatever the totals say, findings sum to `explained` and the rest is `unexplained`."""
    assert_invariants(explain_invoice(current, [previous]))


@SETTINGS
@given(current=invoices("in_b", 1))
def test_first_invoice_is_explained_against_nothing(current: Invoice) -> None:
    """With no previous invoice, the findings make up the current total."""
    result = explain_invoice(current, [])
    assert_invariants(result)
    assert result.change == current.total
    assert result.unexplained.is_zero()
