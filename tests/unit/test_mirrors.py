"""Mirrored invoices: an Orb or Metronome invoice and the Stripe invoice that collects it are one
bill. The billing provider's invoice is what is explained ("billed by"), the Stripe copy is where
it was paid; nothing is counted twice. Also the prepaid burn: a total that did not change while
usage drew prepaid credit faster."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from bot.domain.findings import FindingKind, PrepaidBurn
from bot.domain.mirrors import find_mirrors, link_mirrors, unpaired_copies
from bot.domain.models import (
    AccountRef,
    BillingSnapshot,
    CreditBalance,
    CustomerRecord,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    LineKind,
    Payment,
    PaymentStatus,
    ProviderName,
    ProviderSnapshot,
)
from bot.domain.money import Money
from bot.services.explain import (
    build_facts,
    draft_text,
    explain_snapshot,
    explain_text,
    prepaid_text,
)

D = Decimal


def usd(value: str | int) -> Money:
    return Money(D(str(value)), "usd")


def month_start(month: int) -> datetime:
    return datetime(2026, month, 1, tzinfo=UTC)


def source(
    provider: ProviderName,
    invoice_id: str,
    month: int,
    lines: list[InvoiceLine],
    *,
    links: tuple[str, ...] = (),
    number: str | None = None,
    credits: str | None = None,
) -> Invoice:
    """An Orb or Metronome invoice for the month before `month`, issued on the 1st of `month`."""
    subtotal = sum((line.amount.amount for line in lines), D(0))
    total = subtotal - (D(credits) if credits else 0)
    return Invoice(
        provider=provider,
        id=invoice_id,
        customer_id="cust_1",
        status=InvoiceStatus.OPEN,
        currency="usd",
        total=usd(total),
        subtotal=usd(subtotal),
        credits_applied=usd(credits) if credits else None,
        number=number,
        created_at=month_start(month),
        period_start=month_start(month - 1),
        period_end=month_start(month),
        subscription_id="sub_1",
        lines=tuple(lines),
        links=links,
        collected_by="stripe",
    )


def copy_of(
    invoice: Invoice,
    copy_id: str,
    *,
    links: tuple[str, ...] = (),
    number: str | None = None,
    periods: bool = True,
    total: str | None = None,
) -> Invoice:
    """The Stripe invoice the provider created for `invoice`: one-off items, paid."""
    assert invoice.created_at is not None
    created = invoice.created_at + timedelta(hours=1)
    items = tuple(
        InvoiceLine(
            id=f"il_{copy_id}_{n}",
            description=line.description,
            amount=line.amount,
            kind=LineKind.ONE_OFF,
            period_start=invoice.period_start if periods else created,
            period_end=invoice.period_end if periods else created,
        )
        for n, line in enumerate(invoice.lines)
    )
    amount = usd(total) if total else invoice.total
    return Invoice(
        provider="stripe",
        id=copy_id,
        customer_id="cus_1",
        status=InvoiceStatus.PAID,
        currency="usd",
        total=amount,
        subtotal=amount,
        amount_paid=amount,
        number=number,
        created_at=created,
        period_start=created,
        period_end=created,
        paid_at=created + timedelta(minutes=1),
        billing_reason="manual",
        lines=items,
        links=links,
    )


def usage(line_id: str, metric: str, quantity: int, price: str) -> InvoiceLine:
    return InvoiceLine(
        id=line_id,
        description=metric,
        amount=usd(str(D(quantity) * D(price))),
        kind=LineKind.USAGE,
        quantity=D(quantity),
        unit_price=D(price),
        metric=metric,
        product_id=f"prod_{metric}",
    )


def fee(line_id: str, amount: str = "500") -> InvoiceLine:
    return InvoiceLine(
        id=line_id, description="Platform fee", amount=usd(amount), kind=LineKind.SUBSCRIPTION,
        quantity=D(1), unit_price=D(amount), product_id="prod_platform",
    )  # fmt: skip


def charge(charge_id: str, invoice: Invoice, minutes: int = 2) -> Payment:
    assert invoice.created_at is not None
    return Payment(
        provider="stripe",
        id=charge_id,
        customer_id="cus_1",
        amount=invoice.total,
        status=PaymentStatus.SUCCEEDED,
        created_at=invoice.created_at + timedelta(minutes=minutes),
        invoice_id=invoice.id,
    )


def snapshot(
    billing: ProviderName,
    sources: list[Invoice],
    copies: list[Invoice],
    *,
    payments: tuple[Payment, ...] = (),
    balances: tuple[CreditBalance, ...] = (),
) -> BillingSnapshot:
    providers = (
        ProviderSnapshot(
            "stripe",
            CustomerRecord("stripe", "cus_1", "acct_m", name="Mirror Co"),
            invoices=tuple(copies),
            payments=payments,
        ),
        ProviderSnapshot(
            billing,
            CustomerRecord(billing, "cust_1", "acct_m", name="Mirror Co"),
            invoices=tuple(sources),
            balances=balances,
        ),
    )
    linked, mirrors = link_mirrors(providers)
    return BillingSnapshot(
        account=AccountRef("acct_m", {"stripe": "cus_1", billing: "cust_1"}, "Mirror Co"),
        providers=linked,
        mirrors=mirrors,
    )


def orb_months() -> list[Invoice]:
    """Three Orb invoices (Feb–Apr usage), newest first; Compute hours grew in the last."""
    return [
        source("orb", "orb_apr", 5, [fee("a1"), usage("a2", "Compute hours", 120, "9")],
               number="ACME-00003"),
        source("orb", "orb_mar", 4, [fee("b1"), usage("b2", "Compute hours", 100, "9")],
               number="ACME-00002"),
        source("orb", "orb_feb", 3, [fee("c1"), usage("c2", "Compute hours", 100, "9")],
               number="ACME-00001"),
    ]  # fmt: skip


def test_a_stripe_invoice_naming_the_orb_invoice_in_its_metadata_is_its_copy() -> None:
    """Orb's Stripe Invoicing sync puts `orb_invoice_id` in the metadata: that pairs them, the
    Stripe copy is not an invoice of its own, and the Orb invoice is paid as the copy is."""
    apr, mar, feb = orb_months()
    copies = [copy_of(inv, f"in_{inv.id}", links=("orb", inv.id)) for inv in (apr, mar, feb)]
    snap = snapshot("orb", [apr, mar, feb], copies)
    assert [m.evidence for m in snap.mirrors] == ["metadata"] * 3
    assert [i.id for i in snap.invoices] == ["orb_apr", "orb_mar", "orb_feb"]  # each bill once
    orb = snap.get("orb")
    assert orb is not None and all(i.status is InvoiceStatus.PAID for i in orb.invoices)
    assert orb.invoices[0].paid_at == copies[0].paid_at


def test_a_metronome_invoice_naming_its_stripe_invoice_is_paired() -> None:
    """Metronome's `external_invoice.invoice_id` names the Stripe invoice: that pairs them."""
    inv = source("metronome", "met_1", 4, [fee("m1")], links=("in_stripe_1",))
    copy = copy_of(inv, "in_stripe_1", total="532.50")  # Stripe Tax added 6.5%
    (mirror,) = find_mirrors(snapshot("metronome", [inv], [copy]).providers)
    assert (mirror.source.id, mirror.copy.id, mirror.evidence) == (
        "met_1",
        "in_stripe_1",
        "external invoice ID",
    )


def test_without_links_the_number_or_the_amount_and_period_pair_them() -> None:
    """No metadata and no external ID: the same number pairs them; failing that, one total and
    one service period, even when every month has the same total."""
    same = [
        source("metronome", f"met_{m}", m, [fee(f"f{m}")]) for m in (6, 5, 4, 3)
    ]  # every month $500
    copies = [copy_of(inv, f"in_{inv.id}") for inv in same]
    snap = snapshot("metronome", same, copies)
    assert sorted((m.source.id, m.copy.id) for m in snap.mirrors) == sorted(
        (inv.id, f"in_{inv.id}") for inv in same
    )
    assert {m.evidence for m in snap.mirrors} == {"amount and period"}
    numbered = source("orb", "orb_1", 4, [fee("n1")], number="ACME-7")
    copy = copy_of(numbered, "in_n", number="acme-7", periods=False)
    assert [m.evidence for m in find_mirrors(snapshot("orb", [numbered], [copy]).providers)] == [
        "number"
    ]


def test_a_guess_that_fits_two_ways_pairs_nothing() -> None:
    """Two copies that could each be either of two same-amount invoices (no period on the
    copies, issued on the same day) are left unpaired rather than guessed."""
    first = source("orb", "orb_a", 4, [fee("x1")])
    second = source("orb", "orb_b", 4, [fee("x2")])
    copies = [copy_of(first, "in_a", periods=False), copy_of(second, "in_b", periods=False)]
    assert find_mirrors(snapshot("orb", [first, second], copies).providers) == ()


def test_stripe_billing_invoices_are_never_taken_for_copies() -> None:
    """A Stripe subscription invoice of the same amount is Stripe's own bill, not a copy."""
    inv = source("orb", "orb_1", 4, [fee("s1")])
    own = replace(copy_of(inv, "in_own"), subscription_id="sub_s")
    assert find_mirrors(snapshot("orb", [inv], [own]).providers) == ()


def test_explain_uses_the_orb_invoice_and_the_copys_payments() -> None:
    """A mirrored account is explained from Orb's invoices (billed by Orb, compared with the
    previous Orb invoice), and a duplicate charge of the Stripe copy counts for the Orb one."""
    apr, mar, feb = orb_months()
    copies = [copy_of(inv, f"in_{inv.id}", links=(inv.id,)) for inv in (apr, mar, feb)]
    payments = (charge("ch_1", copies[0]), charge("ch_2", copies[0], minutes=90))
    snap = snapshot("orb", [apr, mar, feb], copies, payments=payments)
    explanation = explain_snapshot(snap)
    assert (explanation.current.id, explanation.current.provider) == ("orb_apr", "orb")
    assert explanation.previous is not None and explanation.previous.id == "orb_mar"
    assert [(f.kind, f.amount) for f in explanation.findings] == [
        (FindingKind.USAGE_GROWTH, usd("180"))
    ]
    (duplicate,) = explanation.duplicate_payments
    assert duplicate.detail["invoice"] == "orb_apr"
    facts = build_facts(snap, explanation)
    assert any("Stripe collected it as invoice in_orb_apr" in line for line in facts.lines)
    by_copy = explain_snapshot(snap, "in_orb_apr")
    assert by_copy.current.id == "orb_apr"
    assert any("is Stripe's copy of Orb invoice orb_apr" in n for n in by_copy.notes)


def metronome_burn(*, drawn: tuple[int, int], remaining: str) -> BillingSnapshot:
    """Two Metronome invoices of $500 each (the platform fee), usage fully paid from a prepaid
    commit that drew `drawn` dollars (previous, latest)."""
    before, after = drawn
    latest = source(
        "metronome", "met_apr", 5,
        [fee("l1"), usage("l2", "API requests", after * 50, "0.02")], credits=str(after),
    )  # fmt: skip
    previous = source(
        "metronome", "met_mar", 4,
        [fee("p1"), usage("p2", "API requests", before * 50, "0.02")], credits=str(before),
    )  # fmt: skip
    commit = CreditBalance("metronome", "commit", usd(remaining), granted=usd("10000"))
    copies = [copy_of(latest, "in_apr"), copy_of(previous, "in_mar")]
    return snapshot("metronome", [latest, previous], copies, balances=(commit,))


def test_an_unchanged_total_that_burns_prepaid_credit_twice_as_fast_says_so() -> None:
    """Same total, twice the usage drawn from the commit: the explanation gives the usage
    change per metric, what the commit covered against last time, the balance left and when,
    at this rate, it runs out; it never says nothing changed."""
    snap = metronome_burn(drawn=(1200, 2400), remaining="3600")
    explanation = explain_snapshot(snap)
    assert explanation.change.is_zero()
    burn = explanation.prepaid
    assert burn is not None
    assert (burn.drawn, burn.previous_drawn, burn.rate) == (usd("2400"), usd("1200"), D(2))
    assert burn.remaining == usd("3600") and burn.periods_left == D("1.5")
    assert burn.runs_out == date(2026, 5, 1) + timedelta(days=45)  # 1.5 × a 30-day April
    assert [f.metric for f in burn.usage] == ["API requests"]
    facts = build_facts(snap, explanation)
    text = explain_text(explanation, facts)
    assert "Nothing changed" not in text
    assert text.startswith("The total is unchanged, but usage paid from prepaid credit grew: ")
    assert "usage of API requests +$1,200.00" in text
    assert "up from $1,200.00 (2× as fast)" in text
    assert "$3,600.00 is left; at this rate it runs out around Jun 15, 2026." in text
    draft = draft_text(snap, explanation)
    assert "Your prepaid balance covered $2,400.00 of this invoice" in draft
    assert "would last until around Jun 15, 2026" in draft


def test_prepaid_burn_is_quiet_when_nothing_was_drawn_differently() -> None:
    """The same draw on both invoices (or none at all) adds no prepaid section."""
    steady = explain_snapshot(metronome_burn(drawn=(1200, 1200), remaining="3600"))
    assert steady.prepaid is None and steady.findings == ()
    gone = explain_snapshot(metronome_burn(drawn=(1200, 2400), remaining="0"))
    assert gone.prepaid is not None and gone.prepaid.runs_out is None
    assert gone.prepaid.periods_left == 0


def test_a_copy_older_than_the_providers_history_is_counted_nowhere() -> None:
    """Stripe's history starts by date and the provider's by period, so the oldest Stripe copy
    can arrive without its source: it is set aside, not shown as a Stripe bill of its own."""
    apr, mar, feb = orb_months()
    copies = [copy_of(inv, f"in_{inv.id}", links=(inv.id,)) for inv in (apr, mar, feb)]
    snap = snapshot("orb", [apr, mar], copies)  # Feb's Orb invoice is outside Orb's window
    orphans = unpaired_copies(snap.providers, snap.mirrors)
    assert [i.id for i in orphans] == ["in_orb_feb"]
    with_orphans = replace(snap, unpaired_copies=orphans)
    assert [i.id for i in with_orphans.invoices] == ["orb_apr", "orb_mar"]
    # A one-off Stripe invoice from long before (e.g. before Orb billed the account) stays.
    old = replace(copies[2], id="in_old", created_at=datetime(2025, 6, 1, tzinfo=UTC))
    assert unpaired_copies(snapshot("orb", [apr, mar], [*copies[:2], old]).providers,
                           snap.mirrors) == ()  # fmt: skip


def test_prepaid_text_says_how_much_faster_in_words_that_fit_the_step() -> None:
    """A big step reads "2× as fast", a small one "12% more", a drop "down from", and a first
    draw says the previous invoice drew none."""

    def burn(drawn: str, before: str) -> PrepaidBurn:
        rate = D(drawn) / D(before) if D(before) else None
        return PrepaidBurn(usd(drawn), usd(before), rate, None, 30, None, None)

    assert "(2× as fast)" in prepaid_text(burn("200", "100"))
    assert "(12% more)" in prepaid_text(burn("112", "100"))
    assert "down from $100.00." in prepaid_text(burn("80", "100"))
    assert "the previous invoice drew none" in prepaid_text(burn("80", "0"))
