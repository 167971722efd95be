"""The findings engine on hand-built invoice pairs: one story per finding kind, plus the ways a
comparison can be unusual (no previous invoice, other currency, drafts, unknown IDs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from bot.domain.findings import (
    Explanation,
    Finding,
    FindingKind,
    explain_invoice,
    pick_invoices,
)
from bot.domain.models import (
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    LineKind,
    Payment,
    PaymentStatus,
    ProviderName,
    Subscription,
    SubscriptionStatus,
)
from bot.domain.money import Money
from bot.errors import InvalidIdentifier, UserError

D = Decimal


def usd(value: str | int) -> Money:
    return Money(D(str(value)), "usd")


def line(
    line_id: str,
    amount: str | int,
    *,
    kind: LineKind = LineKind.SUBSCRIPTION,
    description: str | None = None,
    quantity: str | int | None = None,
    unit_price: str | None = None,
    metric: str | None = None,
    price_id: str | None = None,
    product_id: str | None = None,
    proration: bool = False,
    currency: str = "usd",
) -> InvoiceLine:
    return InvoiceLine(
        id=line_id,
        description=description or line_id,
        amount=Money(D(str(amount)), currency),
        kind=kind,
        quantity=None if quantity is None else D(str(quantity)),
        unit_price=None if unit_price is None else D(unit_price),
        metric=metric,
        price_id=price_id,
        product_id=product_id,
        proration=proration,
    )


def usage(line_id: str, metric: str, quantity: str | int, price: str) -> InvoiceLine:
    amount = D(str(quantity)) * D(price)
    return line(
        line_id,
        str(amount),
        kind=LineKind.USAGE,
        description=f"{metric} usage",
        quantity=quantity,
        unit_price=price,
        metric=metric,
        price_id=f"price_{metric}",
    )


def invoice(
    invoice_id: str,
    month: int,
    lines: Sequence[InvoiceLine],
    *,
    total: str | None = None,
    discount: str | None = None,
    tax: str | None = None,
    credits: str | None = None,
    balance: str | None = None,
    currency: str = "usd",
    status: InvoiceStatus = InvoiceStatus.PAID,
    billing_reason: str | None = "subscription_cycle",
    subscription_id: str | None = "sub_1",
    plan_name: str | None = None,
    provider: ProviderName = "stripe",
) -> Invoice:
    """An invoice whose total follows from its parts unless `total` is given."""
    subtotal = sum((ln.amount.amount for ln in lines), D(0))
    parts = {
        name: None if value is None else D(value)
        for name, value in {
            "discount": discount,
            "tax": tax,
            "credits": credits,
            "balance": balance,
        }.items()
    }
    computed = (
        subtotal
        - (parts["discount"] or 0)
        + (parts["tax"] or 0)
        - (parts["credits"] or 0)
        - (parts["balance"] or 0)
    )

    def money(value: D | None) -> Money | None:
        return None if value is None else Money(value, currency)

    start = datetime(2024, month, 1, tzinfo=UTC)
    end = datetime(2024 + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return Invoice(
        provider=provider,
        id=invoice_id,
        customer_id="cus_1",
        status=status,
        currency=currency,
        total=Money(D(total) if total is not None else computed, currency),
        subtotal=Money(subtotal, currency),
        tax=money(parts["tax"]),
        discount=money(parts["discount"]),
        credits_applied=money(parts["credits"]),
        balance_applied=money(parts["balance"]),
        created_at=end,
        period_start=start,
        period_end=end,
        billing_reason=billing_reason,
        subscription_id=subscription_id,
        plan_name=plan_name,
        lines=tuple(lines),
    )


def check_invariants(result: Explanation) -> None:
    total = sum((f.amount.amount for f in result.findings), D(0))
    assert total == result.explained.amount
    assert result.explained + result.unexplained == result.change
    assert 0 <= result.explained_share <= 1
    assert all(not f.amount.is_zero() for f in result.findings)


def only(result: Explanation, kind: FindingKind) -> Finding:
    found = [f for f in result.findings if f.kind is kind]
    assert len(found) == 1, result.findings
    return found[0]


PRO = line("il_pro", "99.00", description="Pro plan", price_id="price_pro", product_id="prod_pro")


def test_usage_growth_is_quantity_delta_times_old_price() -> None:
    """Usage that grew shows up as (new − old quantity) × price with the metric's name."""
    before = invoice("in_1", 3, [PRO, usage("il_a", "api_requests", 1_200_000, "0.0001")])
    after = invoice("in_2", 4, [PRO, usage("il_b", "api_requests", 3_400_000, "0.0001")])
    result = explain_invoice(after, [before])
    check_invariants(result)
    assert result.change == usd("220.00")
    assert [f.kind for f in result.findings] == [FindingKind.USAGE_GROWTH]
    finding = result.findings[0]
    assert finding.amount == usd("220.00")
    assert finding.metric == "api_requests"
    assert finding.summary == (
        "Usage of api_requests grew from 1,200,000 to 3,400,000 (+2,200,000 × $0.0001): +$220.00"
    )
    assert set(finding.refs) == {"il_a", "il_b"}
    assert result.unexplained.is_zero()
    assert result.explained_share == 1


def test_price_change_splits_from_usage_growth() -> None:
    """A new unit price is its own finding (new quantity × price delta) next to usage growth."""
    before = invoice("in_1", 3, [usage("il_a", "gb_stored", 1000, "0.10")])
    after = invoice("in_2", 4, [usage("il_b", "gb_stored", 1500, "0.12")])
    result = explain_invoice(after, [before])
    check_invariants(result)
    assert only(result, FindingKind.USAGE_GROWTH).amount == usd("50.00")
    price = only(result, FindingKind.PRICE_CHANGE)
    assert price.amount == usd("30.00")
    assert "from $0.10 to $0.12" in price.summary
    assert result.unexplained.is_zero()
    assert result.findings[0].kind is FindingKind.USAGE_GROWTH  # ranked by size


def test_seats_added_is_a_quantity_change() -> None:
    """More seats on the same plan price read as a quantity change, not a price change."""

    def seats(line_id: str, amount: str, quantity: int) -> InvoiceLine:
        return line(
            line_id,
            amount,
            quantity=quantity,
            unit_price="20",
            description="Pro seat",
            price_id="ps",
        )

    before = invoice("in_1", 3, [seats("il_1", "100", 5)])
    after = invoice("in_2", 4, [seats("il_2", "160", 8)])
    result = explain_invoice(after, [before])
    check_invariants(result)
    finding = only(result, FindingKind.QUANTITY_CHANGE)
    assert finding.amount == usd("60")
    assert finding.summary == "Quantity of Pro seat went from 5 to 8 (+3 × $20.00): +$60.00"
    assert len(result.findings) == 1


def test_flat_fee_price_change_when_quantities_are_unknown() -> None:
    """A recurring fee whose amount changed with no quantities is a price change."""
    before = invoice("in_1", 3, [PRO])
    after = invoice(
        "in_2", 4, [line("il_pro2", "129", description="Pro plan", price_id="price_pro")]
    )
    result = explain_invoice(after, [before])
    finding = only(result, FindingKind.PRICE_CHANGE)
    assert finding.amount == usd("30")
    assert finding.summary == "Charge for Pro plan changed from $99.00 to $129.00: +$30.00"


def test_plan_change_with_prorations() -> None:
    """Switching plans gives one plan-change finding carrying both lines, plus the net proration."""
    starter = line(
        "il_s", "49", description="Starter plan", price_id="price_s", product_id="prod_s"
    )
    pro = line("il_p", "199", description="Pro plan", price_id="price_p", product_id="prod_p")
    unused = line(
        "il_u", "-24.50", description="Unused time on Starter", price_id="price_s", proration=True
    )
    remaining = line(
        "il_r",
        "99.50",
        kind=LineKind.PRORATION,
        description="Remaining time on Pro",
        price_id="price_p",
    )
    before = invoice("in_1", 3, [starter], plan_name="Starter")
    after = invoice("in_2", 4, [pro, unused, remaining], plan_name="Pro")
    result = explain_invoice(after, [before])
    check_invariants(result)
    plan = only(result, FindingKind.PLAN_CHANGE)
    assert plan.amount == usd("150")
    assert set(plan.refs) == {"il_s", "il_p"}
    assert plan.summary == "Plan changed from Starter ($49.00) to Pro ($199.00): +$150.00"
    proration = only(result, FindingKind.PRORATION)
    assert proration.amount == usd("75.00")
    assert set(proration.refs) == {"il_u", "il_r"}
    assert "plan change from Starter to Pro" in proration.summary
    assert result.unexplained.is_zero()


def test_plan_names_come_from_subscriptions_when_invoices_lack_them() -> None:
    """Plan names missing on invoices are looked up in the account's subscriptions."""
    before = invoice(
        "in_1",
        3,
        [line("il_s", "49", description="Basic", price_id="p_s")],
        subscription_id="sub_a",
    )
    after = invoice(
        "in_2", 4, [line("il_p", "99", description="Plus", price_id="p_p")], subscription_id="sub_b"
    )
    subs = [
        Subscription(
            provider="stripe", id="sub_a", status=SubscriptionStatus.CANCELED, plan_name="Basic"
        ),
        Subscription(
            provider="stripe", id="sub_b", status=SubscriptionStatus.ACTIVE, plan_name="Plus"
        ),
    ]
    result = explain_invoice(after, [before], subscriptions=subs)
    assert only(result, FindingKind.PLAN_CHANGE).summary.startswith("Plan changed from Basic")
    assert any("subscription sub_b" in note for note in result.notes)


def test_new_add_on_line() -> None:
    """A line only on the new invoice is a new line with its own amount."""
    support = line("il_sup", "50", kind=LineKind.ONE_OFF, description="Premium support")
    before = invoice("in_1", 3, [PRO])
    after = invoice("in_2", 4, [PRO, support])
    result = explain_invoice(after, [before])
    finding = only(result, FindingKind.NEW_LINE)
    assert finding.amount == usd("50")
    assert finding.refs == ("il_sup",)
    assert finding.summary == "New line: Premium support: +$50.00"


def test_removed_line() -> None:
    """A line only on the previous invoice is a removed line, negative."""
    addon = line("il_add", "25", description="Extra domain", price_id="price_dom")
    before = invoice("in_1", 3, [PRO, addon])
    after = invoice("in_2", 4, [PRO])
    result = explain_invoice(after, [before])
    finding = only(result, FindingKind.REMOVED_LINE)
    assert finding.amount == usd("-25")
    assert finding.summary == "Line no longer billed: Extra domain (was $25.00): -$25.00"


def test_lines_match_on_description_when_ids_are_missing() -> None:
    """Lines without price or product IDs still match when descriptions differ only in dates."""
    before = invoice("in_1", 3, [line("a", "10", description="Backups (Mar 1 – Mar 31)")])
    after = invoice("in_2", 4, [line("b", "12", description="Backups (Apr 1 – Apr 30)")])
    result = explain_invoice(after, [before])
    assert [f.kind for f in result.findings] == [FindingKind.PRICE_CHANGE]


def test_expired_coupon() -> None:
    """A discount that no longer applies adds back what it used to take off."""
    coupon = line("il_c", "-20", kind=LineKind.DISCOUNT, description="20% off for 3 months")
    before = invoice("in_1", 3, [PRO, coupon], discount=None)
    after = invoice("in_2", 4, [PRO])
    result = explain_invoice(after, [before])
    check_invariants(result)
    finding = only(result, FindingKind.DISCOUNT_ENDED)
    assert finding.amount == usd("20")
    assert finding.detail["coupon"] == "20% off for 3 months"
    assert "no longer applies" in finding.summary
    assert "il_c" in finding.refs and "in_1" in finding.refs
    assert result.unexplained.is_zero()


def test_invoice_level_discount_added() -> None:
    """A new invoice-level discount is a negative discount-added finding."""
    before = invoice("in_1", 3, [PRO])
    after = invoice("in_2", 4, [PRO], discount="9.90")
    result = explain_invoice(after, [before])
    assert only(result, FindingKind.DISCOUNT_ADDED).amount == usd("-9.90")


def test_credits_ran_out() -> None:
    """Prepaid credits that stopped covering the bill show as credits depleted."""
    lines = [PRO, usage("il_u", "tokens", 1000, "0.5")]
    before = invoice("in_1", 3, lines, credits="400")
    after = invoice("in_2", 4, lines, credits="0")
    result = explain_invoice(after, [before])
    check_invariants(result)
    finding = only(result, FindingKind.CREDIT_DEPLETED)
    assert finding.amount == usd("400")
    assert finding.summary == (
        "No prepaid credits were applied this time (the previous invoice used $400.00): +$400.00"
    )
    assert len(result.findings) == 1


def test_credits_added() -> None:
    """More prepaid credits applied lowers the invoice."""
    before = invoice("in_1", 3, [PRO])
    after = invoice("in_2", 4, [PRO], credits="30")
    assert only(explain_invoice(after, [before]), FindingKind.CREDIT_ADDED).amount == usd("-30")


def test_tax_rate_change_with_steady_usage() -> None:
    """A new tax rate on unchanged charges is base × rate change, named as a rate change."""
    lines = [line("il_1", "1000", description="Platform fee", price_id="price_f")]
    before = invoice("in_1", 3, lines, tax="80.00")
    after = invoice("in_2", 4, lines, tax="95.00")
    result = explain_invoice(after, [before])
    check_invariants(result)
    finding = only(result, FindingKind.TAX_CHANGE)
    assert finding.amount == usd("15.00")
    assert finding.summary == (
        "Tax rate changed from 8% to 9.5% on $1,000.00 of taxable charges: +$15.00"
    )
    assert finding.detail["effect"] == "rate"


def test_tax_change_splits_rate_from_base_growth() -> None:
    """When charges and the rate both move, the rate part is current base × Δrate; the rest is
    tax on the larger base, and together they are the whole tax change."""
    before = invoice("in_1", 3, [line("a", "1000", price_id="p")], tax="80.00")
    after = invoice("in_2", 4, [line("b", "1200", price_id="p")], tax="114.00")
    result = explain_invoice(after, [before])
    check_invariants(result)
    taxes = [f for f in result.findings if f.kind is FindingKind.TAX_CHANGE]
    by_effect = {f.detail["effect"]: f.amount for f in taxes}
    assert by_effect == {"rate": usd("18.00"), "base": usd("16.00")}
    assert result.unexplained.is_zero()


def test_tax_following_growth_is_not_a_rate_change() -> None:
    """Tax that rose only because charges rose says so and is one finding."""
    before = invoice("in_1", 3, [line("a", "1000", price_id="p")], tax="82.50")
    after = invoice("in_2", 4, [line("b", "1234.56", price_id="p")], tax="101.85")
    finding = only(explain_invoice(after, [before]), FindingKind.TAX_CHANGE)
    assert finding.detail["effect"] == "base"
    assert finding.summary.startswith("Tax rose from $82.50 to $101.85")


def test_balance_applied() -> None:
    """Customer balance applied to the invoice is its own finding."""
    before = invoice("in_1", 3, [PRO])
    after = invoice("in_2", 4, [PRO], balance="40")
    result = explain_invoice(after, [before])
    finding = only(result, FindingKind.BALANCE_APPLIED)
    assert finding.amount == usd("-40")
    assert result.unexplained.is_zero()


def test_balance_outside_total_is_a_note_not_a_finding() -> None:
    """Stripe's totals exclude the customer balance: then it's a note, as the total didn't move."""
    before = invoice("in_1", 3, [PRO])
    after = invoice("in_2", 4, [PRO], balance="40", total="99.00")
    result = explain_invoice(after, [before])
    assert result.findings == ()
    assert result.change.is_zero()
    assert any("$40.00 was applied" in n and "$59.00 was due" in n for n in result.notes)


def test_minimum_commitment_true_up() -> None:
    """A minimum-commitment true-up line is called out as such."""
    true_up = line("il_min", "150", kind=LineKind.MINIMUM, description="Minimum commitment")
    lines_before = [usage("il_a", "events", 5000, "0.1")]
    before = invoice("in_1", 3, lines_before)
    after = invoice("in_2", 4, [usage("il_b", "events", 3500, "0.1"), true_up])
    result = explain_invoice(after, [before])
    check_invariants(result)
    minimum = only(result, FindingKind.MINIMUM_COMMITMENT)
    assert minimum.amount == usd("150")
    assert minimum.refs == ("il_min",)
    assert only(result, FindingKind.USAGE_GROWTH).amount == usd("-150")
    assert result.change.is_zero()
    assert result.explained_share == 1


def test_duplicate_charges_for_one_invoice() -> None:
    """Two successful charges of one amount for the current invoice are a duplicate, apart from
    the findings."""
    before = invoice("in_1", 3, [PRO])
    after = invoice("in_2", 4, [PRO])
    at = datetime(2024, 5, 1, 10, tzinfo=UTC)

    def pay(pay_id: str, minutes: int, status: PaymentStatus = PaymentStatus.SUCCEEDED) -> Payment:
        return Payment(
            provider="stripe",
            id=pay_id,
            customer_id="cus_1",
            amount=usd("99"),
            status=status,
            created_at=at + timedelta(minutes=minutes),
            invoice_id="in_2",
        )

    payments = [pay("ch_1", 0), pay("ch_fail", 5, PaymentStatus.FAILED), pay("ch_2", 14)]
    result = explain_invoice(after, [before], payments=payments)
    assert result.findings == ()
    (dup,) = result.duplicate_payments
    assert dup.kind is FindingKind.DUPLICATE_CHARGE
    assert dup.amount == usd("99")
    assert set(dup.refs) == {"ch_1", "ch_2", "in_2"}
    assert dup.summary == "in_2 was paid twice: ch_1 and ch_2 each charged $99.00, 14 minutes apart"


def test_charges_without_invoices_within_a_day_are_duplicates() -> None:
    """Same amount twice within 24 h with no invoices is a duplicate; a day later, or for two
    different invoices, it is not."""
    after = invoice("in_2", 4, [PRO])
    base = datetime(2024, 5, 2, tzinfo=UTC)

    def pay(pay_id: str, hours: int, invoice_id: str | None = None) -> Payment:
        return Payment(
            provider="stripe",
            id=pay_id,
            customer_id="cus_1",
            amount=usd("10"),
            status=PaymentStatus.SUCCEEDED,
            created_at=base + timedelta(hours=hours),
            invoice_id=invoice_id,
        )

    result = explain_invoice(after, [], payments=[pay("ch_a", 0), pay("ch_b", 3)])
    assert [d.refs for d in result.duplicate_payments] == [("ch_a", "ch_b")]
    apart = explain_invoice(after, [], payments=[pay("ch_a", 0), pay("ch_b", 30)])
    assert apart.duplicate_payments == ()
    two_invoices = [pay("ch_a", 0, "in_x"), pay("ch_b", 1, "in_y")]
    assert explain_invoice(after, [], payments=two_invoices).duplicate_payments == ()


def test_a_charge_and_its_payment_intent_are_not_a_duplicate() -> None:
    """A payment intent and the charge that settled it are one payment, not two."""
    after = invoice("in_2", 4, [PRO])
    at = datetime(2024, 5, 1, tzinfo=UTC)
    intent = Payment(
        provider="stripe",
        id="pi_1",
        customer_id="cus_1",
        amount=usd("99"),
        status=PaymentStatus.SUCCEEDED,
        created_at=at,
        invoice_id="in_2",
    )
    charge = replace(intent, id="ch_1", payment_intent_id="pi_1")
    assert explain_invoice(after, [], payments=[intent, charge]).duplicate_payments == ()


def test_mid_period_invoice_is_compared_with_the_regular_one() -> None:
    """An invoice for a mid-period change is compared with the last regular invoice, with a note."""
    before = invoice("in_1", 3, [PRO])
    update = invoice(
        "in_2",
        4,
        [line("il_x", "30", proration=True, description="Remaining time on Pro")],
        billing_reason="subscription_update",
    )
    result = explain_invoice(update, [before])
    assert result.previous is before
    assert any("mid-period" in note for note in result.notes)
    assert {f.kind for f in result.findings} == {FindingKind.PRORATION, FindingKind.REMOVED_LINE}


def test_an_explicit_draft_is_explained_with_a_caveat() -> None:
    """Asking for a draft by ID explains it and says its amounts may still change."""
    jan = invoice("in_1", 1, [PRO])
    draft = invoice("in_2", 2, [PRO, PRO], status=InvoiceStatus.DRAFT)
    current, history = pick_invoices([jan, draft], "in_2")
    result = explain_invoice(current, history)
    assert result.previous is jan
    assert "in_2 is a draft; its amounts may still change." in result.notes


def test_no_previous_invoice() -> None:
    """The first invoice is explained line by line against nothing, with a note."""
    only_one = invoice("in_1", 3, [PRO], tax="8.91")
    result = explain_invoice(only_one, [])
    check_invariants(result)
    assert result.previous is None
    assert result.change == only_one.total
    assert {f.kind for f in result.findings} == {FindingKind.NEW_LINE, FindingKind.TAX_CHANGE}
    assert result.unexplained.is_zero()
    assert any("no earlier comparable invoice" in note for note in result.notes)


def test_currency_mismatch_attributes_nothing() -> None:
    """An earlier invoice in another currency is named but nothing is attributed."""
    euro = invoice("in_1", 3, [line("a", "90", currency="eur")], currency="eur")
    dollars = invoice("in_2", 4, [PRO])
    result = explain_invoice(dollars, [euro])
    check_invariants(result)
    assert result.previous is euro
    assert result.findings == ()
    assert result.unexplained == dollars.total
    assert result.explained_share == 0
    assert any("EUR" in note and "can't be compared" in note for note in result.notes)


def test_same_currency_invoice_preferred_over_a_newer_foreign_one() -> None:
    """An older same-currency invoice is compared rather than a newer one in another currency."""
    old = invoice("in_0", 2, [PRO])
    euro = invoice("in_1", 3, [line("a", "90", currency="eur")], currency="eur")
    now = invoice("in_2", 4, [PRO])
    result = explain_invoice(now, [euro, old])
    assert result.previous is old
    assert result.change.is_zero()


def test_unknown_invoice_id() -> None:
    """Asking for an invoice the account doesn't have is a user error naming recent ones."""
    invoices = [invoice("in_1", 3, [PRO]), invoice("in_2", 4, [PRO])]
    with pytest.raises(InvalidIdentifier) as caught:
        pick_invoices(invoices, "in_nope")
    assert "in_nope" in caught.value.message and "in_2" in caught.value.message


def test_no_invoices_is_a_user_error() -> None:
    """An account without invoices gets a clear message, not a crash."""
    with pytest.raises(UserError, match="no invoices"):
        pick_invoices([])
    draft = invoice("in_d", 5, [PRO], status=InvoiceStatus.DRAFT)
    with pytest.raises(UserError, match="only draft or void"):
        pick_invoices([draft])


def test_drafts_and_voids_are_skipped() -> None:
    """The latest finalised invoice is explained against the previous finalised one."""
    jan = invoice("in_1", 1, [PRO])
    feb_void = invoice("in_2", 2, [line("x", "5000")], status=InvoiceStatus.VOID)
    mar = invoice("in_3", 3, [PRO, line("n", "1", kind=LineKind.ONE_OFF)])
    apr_draft = invoice("in_4", 4, [PRO], status=InvoiceStatus.DRAFT)
    current, history = pick_invoices([jan, apr_draft, feb_void, mar])
    assert current.id == "in_3"
    assert [inv.id for inv in history] == ["in_1"]
    result = explain_invoice(current, [apr_draft, feb_void, jan])
    assert result.previous is jan


def test_pick_by_id_or_number() -> None:
    """A given invoice ID (or printed number) is explained against the invoices before it."""
    jan, feb, mar = (invoice(f"in_{m}", m, [PRO]) for m in (1, 2, 3))
    current, history = pick_invoices([mar, jan, feb], "in_2")
    assert current is feb and history == [jan]


def test_one_off_and_other_provider_invoices_are_not_compared() -> None:
    """Manual invoices and other providers' invoices are skipped when picking the previous one."""
    jan = invoice("in_1", 1, [PRO])
    manual = invoice("in_m", 2, [line("m", "500", kind=LineKind.ONE_OFF)], billing_reason="manual")
    orb = invoice("orb_1", 2, [PRO], provider="orb")
    mar = invoice("in_3", 3, [PRO])
    result = explain_invoice(mar, [orb, manual, jan])
    assert result.previous is jan


def test_everything_unexplained_when_lines_do_not_account_for_totals() -> None:
    """Totals that moved while the lines stayed the same are reported as unexplained."""
    before = invoice("in_1", 3, [PRO])
    after = invoice("in_2", 4, [PRO], total="140.00")
    result = explain_invoice(after, [before])
    check_invariants(result)
    assert result.findings == ()
    assert result.unexplained == usd("41.00")
    assert result.explained_share == 0
    assert "$41.00 of the change is not explained by line items." in result.notes


def test_invoices_without_lines_are_unexplained() -> None:
    """Invoices that list no lines can't be attributed; the note says so."""
    before = invoice("in_1", 3, [], total="100")
    after = invoice("in_2", 4, [], total="130")
    result = explain_invoice(after, [before])
    assert result.findings == ()
    assert result.unexplained == usd("30")
    assert "in_2 lists no line items." in result.notes


def test_rounded_line_amounts_still_explain_everything() -> None:
    """Provider rounding of quantity × price to cents stays inside the line's findings."""
    before = invoice(
        "in_1",
        3,
        [
            line(
                "a",
                "123.46",
                kind=LineKind.USAGE,
                quantity=1_234_567,
                unit_price="0.0001",
                metric="m",
                price_id="p",
            )
        ],
    )
    after = invoice(
        "in_2",
        4,
        [
            line(
                "b",
                "234.57",
                kind=LineKind.USAGE,
                quantity=2_345_678,
                unit_price="0.0001",
                metric="m",
                price_id="p",
            )
        ],
    )
    result = explain_invoice(after, [before])
    assert only(result, FindingKind.USAGE_GROWTH).amount == usd("111.11")
    assert result.unexplained.is_zero()


def test_ranking_is_by_size() -> None:
    """The biggest movers come first whatever their sign."""
    before = invoice("in_1", 3, [PRO, usage("a", "x", 100, "1")], discount="5")
    after = invoice("in_2", 4, [usage("b", "x", 400, "1"), line("n", "7", kind=LineKind.ONE_OFF)])
    result = explain_invoice(after, [before])
    check_invariants(result)
    sizes = [abs(f.amount.amount) for f in result.findings]
    assert sizes == sorted(sizes, reverse=True)
    assert [f.kind for f in result.findings] == [
        FindingKind.USAGE_GROWTH,
        FindingKind.REMOVED_LINE,
        FindingKind.NEW_LINE,
        FindingKind.DISCOUNT_ENDED,
    ]


def test_period_length_difference_is_noted() -> None:
    """A much shorter or longer billing period is called out."""
    before = invoice("in_1", 3, [PRO])
    short = invoice("in_2", 4, [PRO])
    short = replace(short, period_start=datetime(2024, 4, 20, tzinfo=UTC))
    result = explain_invoice(short, [before])
    assert any("covers 11 days" in note for note in result.notes)


# --- defects the oracle property (test_findings_oracle.py) caught, pinned as examples ----------


def test_a_credit_change_is_not_mistaken_for_a_tax_rate_change() -> None:
    """Tax is on the charges after discounts and prepaid credits: when credits stop, the tax
    that follows the larger base is one finding at the unchanged rate, not a made-up rate
    change (the engine once took the base before credits: "4.95% → 5%")."""
    api = usage("il_api", "api_requests", 100, "0.01")
    before = invoice("in_1", 3, [PRO, api], credits="1.00", tax="4.95")  # 5% of $99.00
    after = invoice("in_2", 4, [PRO, usage("il_api2", "api_requests", 200, "0.01")], tax="5.05")
    result = explain_invoice(after, [before])
    check_invariants(result)
    tax = only(result, FindingKind.TAX_CHANGE)
    assert tax.amount == usd("0.10") and tax.detail["old_rate"] == tax.detail["new_rate"] == "5%"


def test_usage_that_doubled_at_half_the_price_is_reported_not_hidden() -> None:
    """Twice the usage at half the unit price leaves the line's amount unchanged; both changes
    are still reported (they sum to zero), not "nothing changed"."""
    before = invoice("in_1", 3, [usage("il_a", "api_requests", 100, "0.02")])
    after = invoice("in_2", 4, [usage("il_b", "api_requests", 200, "0.01")])
    result = explain_invoice(after, [before])
    assert [(f.kind, f.amount) for f in result.findings] == [
        (FindingKind.USAGE_GROWTH, usd("2.00")),
        (FindingKind.PRICE_CHANGE, usd("-2.00")),
    ]
    assert result.change.is_zero()


def test_an_add_on_swapped_for_another_is_two_lines_not_a_plan_change() -> None:
    """With the plan's own fee unchanged, an add-on that went away and another that came are a
    removed and a new line, even at the same price (paired as a "plan change" they vanished)."""
    support = line("il_s", "100.00", description="Premium support", price_id="price_support")
    onboarding = line("il_o", "100.00", description="Onboarding", price_id="price_onboard")
    result = explain_invoice(
        invoice("in_2", 4, [PRO, onboarding]), [invoice("in_1", 3, [PRO, support])]
    )
    assert sorted((f.kind, f.amount) for f in result.findings) == [
        (FindingKind.NEW_LINE, usd("100.00")),
        (FindingKind.REMOVED_LINE, usd("-100.00")),
    ]
