"""Line identity across two invoices, the way real invoices are shaped: one-off items with only
descriptions, renamed and regenerated prices, tiered and package prices, the same description
twice, reordered lines. An unchanged line is never "removed" plus "new"; a changed line is one
matched line with its old and new amount (split into quantity × price where both are known).
Also: the payment window of duplicate charges, and never comparing with a later invoice."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from bot.domain.findings import Explanation, FindingKind, explain_invoice, normalise_description
from bot.domain.models import Invoice, InvoiceLine, InvoiceStatus, LineKind, Payment, PaymentStatus
from bot.domain.money import Money

D = Decimal


def usd(value: str | int | Decimal) -> Money:
    return Money(D(str(value)), "usd")


def item(
    line_id: str,
    description: str,
    amount: str | Decimal,
    *,
    quantity: str | int | None = None,
    unit_price: str | None = None,
    kind: LineKind = LineKind.ONE_OFF,
    price_id: str | None = None,
    product_id: str | None = None,
    metric: str | None = None,
) -> InvoiceLine:
    return InvoiceLine(
        id=line_id,
        description=description,
        amount=usd(amount),
        kind=kind,
        quantity=None if quantity is None else D(str(quantity)),
        unit_price=None if unit_price is None else D(unit_price),
        price_id=price_id,
        product_id=product_id,
        metric=metric,
    )


def invoice(
    invoice_id: str, month: int, lines: list[InvoiceLine], *, created: bool = True
) -> Invoice:
    start = datetime(2025, month, 1, tzinfo=UTC)
    end = datetime(2025 + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    total = sum((line.amount.amount for line in lines), D(0))
    return Invoice(
        provider="stripe",
        id=invoice_id,
        customer_id="cus_1",
        status=InvoiceStatus.PAID,
        currency="usd",
        total=usd(total),
        subtotal=usd(total),
        created_at=end if created else None,
        period_start=start,
        period_end=end,
        billing_reason="manual",
        lines=tuple(lines),
    )


def kinds(result: Explanation) -> list[FindingKind]:
    return [f.kind for f in result.findings]


def assert_all_explained(result: Explanation) -> None:
    assert result.unexplained.is_zero()
    assert result.explained == result.change


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("1,234,567 × API requests (Mar 1 – Mar 31)", "2,469,134 × API requests (Apr 1 – Apr 30)"),
        ("API requests: 1.2M requests, 2025-03-01 to 2025-03-31", "API requests: 2.4M requests, "
         "2025-04-01 to 2025-04-30"),
        ("Storage 100GB — March 2025", "STORAGE   200GB — april 2025"),
        ("Compute (Q1 FY2025, 720h)", "Compute (Q2 FY2025, 744h)"),
        ("Usage 2025-03-01T00:00:00Z – 2025-03-31T23:59:59Z", "Usage 2025-04-01T00:00:00Z – "
         "2025-04-30T23:59:59Z"),
    ],
)  # fmt: skip
def test_descriptions_match_without_their_numbers_dates_and_period_text(
    before: str, after: str
) -> None:
    """Quantities, amounts, dates, period words, case and spacing are not part of a line's
    identity."""
    assert normalise_description(before) == normalise_description(after)
    assert normalise_description(before)


def test_names_with_digits_stay_distinct() -> None:
    """Digits that are part of a name (A100, v2, metric_59) are kept, so those lines differ."""
    assert normalise_description("A100 GPU hours") != normalise_description("H100 GPU hours")
    assert normalise_description("API v2 calls") != normalise_description("API v3 calls")
    assert normalise_description("12") is None


def test_one_off_items_match_by_description_and_split_quantity_and_price() -> None:
    """Invoices made only of one-off items (no price, product or metric IDs) compare line by
    line: the usage item that grew is one quantity finding, the flat fee that did not change
    gives nothing, and nothing is new or removed."""
    march = invoice(
        "in_mar",
        3,
        [
            item("ii_1", "Platform fee (Mar 2025)", "500.00", quantity=1, unit_price="500"),
            item("ii_2", "API requests: 1,000,000 requests", "200.00", quantity=1_000_000,
                 unit_price="0.0002"),
        ],
    )  # fmt: skip
    april = invoice(
        "in_apr",
        4,
        [
            item("ii_3", "Platform fee (Apr 2025)", "500.00", quantity=1, unit_price="500"),
            item("ii_4", "API requests: 1,500,000 requests", "300.00", quantity=1_500_000,
                 unit_price="0.0002"),
        ],
    )  # fmt: skip
    result = explain_invoice(april, [march])
    assert kinds(result) == [FindingKind.QUANTITY_CHANGE]
    (finding,) = result.findings
    assert finding.amount == usd("100.00")
    assert finding.detail["old_amount"] == "200" and finding.detail["new_amount"] == "300"
    assert finding.detail["old_quantity"] == "1000000"
    assert finding.detail["new_quantity"] == "1500000"
    assert_all_explained(result)


def test_a_flat_item_whose_amount_changed_is_one_finding_not_removed_and_new() -> None:
    """An item whose description carries its own amount ("Support ($500.00)") and changed is
    one price change with the old and new amount."""
    before = invoice("in_1", 3, [item("ii_1", "Premium support ($500.00/month)", "500.00")])
    after = invoice("in_2", 4, [item("ii_2", "Premium support ($650.00/month)", "650.00")])
    result = explain_invoice(after, [before])
    assert kinds(result) == [FindingKind.PRICE_CHANGE]
    assert result.findings[0].amount == usd("150.00")
    assert result.findings[0].detail == {"old_amount": "500", "new_amount": "650"}


def test_renamed_prices_match_on_the_product() -> None:
    """A new price ID (and a new line name) for the same product is the same line: only its
    price change is reported."""
    before = invoice("in_1", 3, [item("il_1", "Pro (monthly)", "99.00", quantity=1,
                                      unit_price="99", kind=LineKind.SUBSCRIPTION,
                                      price_id="price_old", product_id="prod_pro")])  # fmt: skip
    after = invoice("in_2", 4, [item("il_2", "Pro plan — 2025 pricing", "119.00", quantity=1,
                                     unit_price="119", kind=LineKind.SUBSCRIPTION,
                                     price_id="price_new", product_id="prod_pro")])  # fmt: skip
    result = explain_invoice(after, [before])
    assert kinds(result) == [FindingKind.PRICE_CHANGE]
    assert result.findings[0].amount == usd("20.00")


def test_ids_regenerated_on_every_invoice_fall_back_to_the_description() -> None:
    """Invoice items whose price and product IDs are new on every invoice (as a billing
    provider's copy can be) still match by description; unchanged ones give nothing."""
    before = invoice("in_1", 3, [
        item("ii_1", "Compute hours", "90.00", quantity=10, unit_price="9",
             price_id="price_a1", product_id="prod_a1"),
        item("ii_2", "Support", "100.00", price_id="price_a2", product_id="prod_a2"),
    ])  # fmt: skip
    after = invoice("in_2", 4, [
        item("ii_3", "Support", "100.00", price_id="price_b2", product_id="prod_b2"),
        item("ii_4", "Compute hours", "135.00", quantity=15, unit_price="9",
             price_id="price_b1", product_id="prod_b1"),
    ])  # fmt: skip
    result = explain_invoice(after, [before])
    assert kinds(result) == [FindingKind.QUANTITY_CHANGE]
    assert result.findings[0].amount == usd("45.00")


def test_tiered_price_lines_are_one_usage_finding() -> None:
    """A tiered price billed as one line per tier (same product, different unit prices) is
    compared as a whole: usage growing into the next tier is one usage finding for its whole
    change, with no made-up price change."""

    def tiers(line_prefix: str, quantity: int) -> list[InvoiceLine]:
        first = min(quantity, 1_000_000)
        rest = max(quantity - 1_000_000, 0)
        lines = [item(f"{line_prefix}_t1", "API requests (tier 1)", str(D(first) * D("0.0002")),
                      quantity=first, unit_price="0.0002", kind=LineKind.USAGE,
                      product_id="prod_api", metric="API requests")]  # fmt: skip
        if rest:
            lines.append(item(f"{line_prefix}_t2", "API requests (tier 2)",
                              str(D(rest) * D("0.0001")), quantity=rest, unit_price="0.0001",
                              kind=LineKind.USAGE, product_id="prod_api",
                              metric="API requests"))  # fmt: skip
        return lines

    before = invoice("in_1", 3, tiers("a", 800_000))
    after = invoice("in_2", 4, tiers("b", 1_500_000))
    result = explain_invoice(after, [before])
    assert kinds(result) == [FindingKind.USAGE_GROWTH]
    assert result.findings[0].amount == usd("90.00")  # 200 + 50 - 160
    assert_all_explained(result)


def test_package_price_is_one_usage_finding_for_the_whole_change() -> None:
    """A package price (per 1,000 requests, rounded up) does not follow quantity × unit price;
    its change is one usage finding, with no leftover price change."""

    def package(line_id: str, requests: int) -> InvoiceLine:
        packs = math.ceil(requests / 1000)
        return item(line_id, "API requests (per 1,000)", str(D(packs) * 5), quantity=requests,
                    unit_price="5", kind=LineKind.USAGE, price_id="price_pack",
                    metric="API requests")  # fmt: skip

    result = explain_invoice(
        invoice("in_2", 4, [package("il_2", 12_001)]),
        [invoice("in_1", 3, [package("il_1", 10_500)])],
    )
    assert kinds(result) == [FindingKind.USAGE_GROWTH]
    assert result.findings[0].amount == usd("10.00")  # 13 packs instead of 11
    assert "10,500 to 12,001" in result.findings[0].summary


def test_the_same_description_twice_pairs_line_by_line() -> None:
    """Two lines with one description on each invoice pair one to one: the one that changed is
    one finding, its twin that did not gives nothing, even when the twins swap places."""
    before = invoice(
        "in_1",
        3,
        [
            item("ii_1", "Seats", "100.00", quantity=10, unit_price="10"),
            item("ii_2", "Seats", "50.00", quantity=5, unit_price="10"),
        ],
    )
    after = invoice(
        "in_2",
        4,
        [
            item("ii_3", "Seats", "50.00", quantity=5, unit_price="10"),
            item("ii_4", "Seats", "120.00", quantity=12, unit_price="10"),
        ],
    )
    result = explain_invoice(after, [before])
    assert kinds(result) == [FindingKind.QUANTITY_CHANGE]
    assert result.findings[0].amount == usd("20.00")
    assert set(result.findings[0].refs) == {"ii_1", "ii_4"}
    third = invoice("in_3", 5, [*after.lines, item("ii_5", "Seats", "30.00", quantity=3,
                                                   unit_price="10")])  # fmt: skip
    grown = explain_invoice(third, [after])
    assert kinds(grown) == [FindingKind.NEW_LINE]  # a third "Seats" line is new
    assert grown.findings[0].amount == usd("30.00")


def test_reordered_lines_change_nothing() -> None:
    """The same lines in another order, with and without IDs, give no findings at all."""
    lines = [
        item("ii_1", "Platform fee", "500.00"),
        item("ii_2", "Seats", "100.00", quantity=10, unit_price="10"),
        item("ii_3", "Seats", "50.00", quantity=5, unit_price="10"),
        item("ii_4", "API requests", "12.50", quantity=62_500, unit_price="0.0002",
             kind=LineKind.USAGE, price_id="price_api", metric="API requests"),
    ]  # fmt: skip
    before = invoice("in_1", 3, lines)
    reordered = [replace(line, id=f"{line.id}_b") for line in reversed(lines)]
    result = explain_invoice(invoice("in_2", 4, reordered), [before])
    assert result.findings == ()
    assert result.change.is_zero()


# --- the payment window and the order of invoices --------------------------------------------


def pay(pay_id: str, at: datetime, invoice_id: str | None = None) -> Payment:
    return Payment(
        provider="stripe",
        id=pay_id,
        customer_id="cus_1",
        amount=usd("99.00"),
        status=PaymentStatus.SUCCEEDED,
        created_at=at,
        invoice_id=invoice_id,
    )


def test_duplicates_after_the_next_invoice_belong_to_the_next_invoice() -> None:
    """Explaining an older invoice shows the duplicate charges of its own payment window, never
    those that happened after the next invoice was issued."""
    fee = [item("ii", "Platform fee", "99.00")]
    march, april, may = invoice("in_3", 3, fee), invoice("in_4", 4, fee), invoice("in_5", 5, fee)
    assert march.created_at is not None and april.created_at is not None
    in_march_window = march.created_at + timedelta(days=3)
    in_april_window = april.created_at + timedelta(days=3)
    payments = [
        pay("ch_a", in_march_window),
        pay("ch_b", in_march_window + timedelta(hours=2)),
        pay("ch_c", in_april_window),
        pay("ch_d", in_april_window + timedelta(hours=2)),
    ]
    history = [march, april, may]
    older = explain_invoice(march, history, payments=payments)
    assert [d.refs for d in older.duplicate_payments] == [("ch_a", "ch_b")]
    newer = explain_invoice(april, history, payments=payments)
    assert [d.refs for d in newer.duplicate_payments] == [("ch_c", "ch_d")]
    # A duplicate linked to the invoice counts for it whenever it happened.
    late = [pay("ch_e", in_april_window, "in_3"), pay("ch_f", in_april_window, "in_3")]
    assert len(explain_invoice(march, history, payments=late).duplicate_payments) == 1


def test_a_later_invoice_without_a_date_is_never_the_comparison() -> None:
    """Invoices without an invoice date are ordered by their billing period: a later one passed
    in the history is not compared with."""
    fee = "Platform fee"
    march = invoice("in_3", 3, [item("a", fee, "100.00")], created=False)
    april = invoice("in_4", 4, [item("b", fee, "150.00")], created=False)
    may = invoice("in_5", 5, [item("c", fee, "400.00")], created=False)
    result = explain_invoice(april, [may, march])
    assert result.previous is not None and result.previous.id == "in_3"
    assert result.change == usd("50.00")
