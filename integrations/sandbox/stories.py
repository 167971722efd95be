"""The planted stories of the sandbox: which account tells which billing story, and what an
explanation of it should find.

`STORY_SPECS` is static (it shapes the index); `collect_stories` reads each story's invoices and
expected amount back from the generated objects, so the numbers always match what the providers
serve.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from integrations.sandbox.world import SandboxWorld

#: Finding kinds the explain engine reports (strings shared with it).
FINDING_KINDS = (
    "usage_growth", "new_line", "removed_line", "price_change", "plan_change", "proration",
    "discount_expired", "credit_depleted", "tax_change", "minimum_commitment", "duplicate_charge",
    "balance_applied",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Story:
    """A planted billing story: where it is and what an explanation of it should find."""

    key: str
    account_id: str
    email: str
    provider: Literal["stripe", "orb", "metronome"]
    title: str
    description: str  # one line, for the README
    invoice_id: str | None  # the invoice that shows the story
    previous_invoice_id: str | None
    expected_finding: str | None  # one of FINDING_KINDS
    expected_amount: Decimal | None  # major units: the change attributable to the planted cause


@dataclass(frozen=True, slots=True)
class StorySpec:
    """The static part of a story: its account and how far back its latest invoice is."""

    key: str
    account_id: str
    name: str
    email: str
    billing: Literal["stripe", "orb", "metronome"]
    title: str
    description: str
    latest_invoice_days_ago: int  # the latest billing period ended this many days before `now`
    expected_finding: str | None = None


STORY_SPECS: tuple[StorySpec, ...] = (
    StorySpec(
        "usage_spike",
        "acct_northwind",
        "Northwind Traders",
        "billing@northwind.example",
        "orb",
        "Usage spike",
        "Orb-billed; API requests spiked on two days near the end of the last period, so the "
        "latest invoice's API requests line grew while everything else stayed flat.",
        latest_invoice_days_ago=1,
        expected_finding="usage_growth",
    ),
    StorySpec(
        "plan_change_proration",
        "acct_initech",
        "Initech",
        "billing@initech.example",
        "stripe",
        "Plan upgrade with proration",
        "Stripe Billing; upgraded from Growth to Pro mid-period, so the latest invoice carries "
        "proration lines (credit for unused Growth, charge for remaining Pro) and the new plan's "
        "fee (plan_change is present too).",
        latest_invoice_days_ago=3,
        expected_finding="plan_change",
    ),
    StorySpec(
        "expired_coupon",
        "acct_hooli",
        "Hooli",
        "billing@hooli.example",
        "stripe",
        "Expired coupon",
        "Stripe Billing; a 20% coupon ran out after the previous invoice, so the latest invoice "
        "has no discount.",
        latest_invoice_days_ago=4,
        expected_finding="discount_expired",
    ),
    StorySpec(
        "duplicate_charge",
        "acct_globex",
        "Globex Corporation",
        "billing@globex.example",
        "stripe",
        "Duplicate charge",
        "Stripe Billing; the latest invoice was paid twice: two successful charges of the same "
        "amount within hours, one invoice (the overpayment sits in the customer's balance).",
        latest_invoice_days_ago=2,
        expected_finding="duplicate_charge",
    ),
    StorySpec(
        "failed_payment_dunning",
        "acct_contoso",
        "Contoso Ltd",
        "billing@contoso.example",
        "stripe",
        "Failed payment in dunning",
        "Stripe Billing; the latest invoice is open after three declined attempts "
        "(card_declined, insufficient funds), the next retry is scheduled, the subscription is "
        "past_due.",
        latest_invoice_days_ago=8,
    ),
    StorySpec(
        "open_dispute",
        "acct_fabrikam",
        "Fabrikam",
        "billing@fabrikam.example",
        "stripe",
        "Open dispute",
        "Stripe Billing; the latest invoice's charge is disputed as product_not_received and "
        "needs a response, evidence due in 5 days.",
        latest_invoice_days_ago=10,
    ),
    StorySpec(
        "new_addon",
        "acct_tyrell",
        "Tyrell Systems",
        "billing@tyrell.example",
        "metronome",
        "New add-on",
        "Metronome-billed; a contract amendment added Premium Support, a new line on the latest "
        "invoice.",
        latest_invoice_days_ago=2,
        expected_finding="new_line",
    ),
    StorySpec(
        "tax_change",
        "acct_soylent",
        "Soylent Foods",
        "billing@soylent.example",
        "stripe",
        "Tax rate change",
        "Stripe Billing; the sales tax rate went from 7% to 9% with usage steady, so only the "
        "tax grew.",
        latest_invoice_days_ago=5,
        expected_finding="tax_change",
    ),
    StorySpec(
        "depleted_credits",
        "acct_cyberdyne",
        "Cyberdyne Systems",
        "billing@cyberdyne.example",
        "metronome",
        "Depleted prepaid commit",
        "Metronome-billed; a prepaid commit covered usage until it ran out during the latest "
        "period, so less commit was applied and the balance is now 0.",
        latest_invoice_days_ago=3,
        expected_finding="credit_depleted",
    ),
    StorySpec(
        "multi_provider",
        "acct_wonka",
        "Wonka Industries",
        "billing@wonka.example",
        "orb",
        "In every provider",
        "Orb bills the platform, Metronome bills AI inference, and Stripe takes the card "
        "payments for both: one account, three providers side by side.",
        latest_invoice_days_ago=6,
    ),
    StorySpec(
        "ambiguous_email",
        "acct_aperture",
        "Aperture Science",
        "billing@aperture.example",
        "stripe",
        "Shared email",
        "Two Stripe customers, acct_aperture and acct_aperture_labs, share "
        "billing@aperture.example, so a lookup by that email is ambiguous.",
        latest_invoice_days_ago=9,
    ),
    # The second half of the shared-email pair; not a story of its own.
    StorySpec(
        "ambiguous_email",
        "acct_aperture_labs",
        "Aperture Labs",
        "billing@aperture.example",
        "stripe",
        "Shared email",
        "",
        latest_invoice_days_ago=12,
    ),
)


def spec_for(account_id: str) -> StorySpec | None:
    """The story spec of an account, if it has one."""
    return next((s for s in STORY_SPECS if s.account_id == account_id), None)


def _major(cents: int | float | Decimal) -> Decimal:
    return (Decimal(str(cents)) / 100).quantize(Decimal("0.01"))


def _pair(invoices: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    return invoices[0], invoices[1]


def _stripe_tax(invoice: dict[str, Any]) -> int:
    return sum(t["amount"] for t in invoice["total_taxes"] or [])


def _metronome_applied(invoice: dict[str, Any]) -> Decimal:
    lines = invoice["line_items"]
    return -sum(
        (Decimal(str(li["total"])) for li in lines if li["type"] == "applied_commit_or_credit"),
        Decimal(0),
    )


def _expected(
    world: SandboxWorld, spec: StorySpec
) -> tuple[str | None, str | None, Decimal | None]:
    """(latest invoice ID, previous invoice ID, expected amount) of one story."""
    acct = spec.account_id
    if spec.billing == "orb":
        orb = world.orb(acct)
        assert orb is not None
        latest, previous = _pair(orb.invoices)
        amount = None
        if spec.key == "usage_spike":
            new = next(li for li in latest["line_items"] if li["name"] == "API requests")
            old = next(li for li in previous["line_items"] if li["name"] == "API requests")
            amount = Decimal(new["amount"]) - Decimal(old["amount"])
        return latest["id"], previous["id"], amount
    if spec.billing == "metronome":
        met = world.metronome(acct)
        assert met is not None
        latest, previous = _pair(met.invoices)
        amount = None
        if spec.key == "new_addon":
            addon = next(li for li in latest["line_items"] if li["name"] == "Premium Support")
            amount = _major(addon["total"])
        elif spec.key == "depleted_credits":
            amount = _major(_metronome_applied(previous) - _metronome_applied(latest))
        return latest["id"], previous["id"], amount
    stripe = world.stripe(acct)
    assert stripe is not None
    latest, previous = _pair(stripe.invoices)
    amount = None
    if spec.key == "plan_change_proration":
        # The planted cause is the upgrade: the new plan's fee replacing the old one (usage is
        # held equal); the net of the proration lines is the second finding (`proration_net`).
        amount = _major(_plan_fees(latest) - _plan_fees(previous))
    elif spec.key == "expired_coupon":
        amount = _major(sum(d["amount"] for d in previous["total_discount_amounts"]))
    elif spec.key == "duplicate_charge":
        amount = _major(latest["amount_overpaid"])
    elif spec.key == "tax_change":
        amount = _major(_stripe_tax(latest) - _stripe_tax(previous))
    if spec.key == "ambiguous_email":
        return None, None, None
    return latest["id"], previous["id"], amount


def _plan_fees(invoice: dict[str, Any]) -> int:
    """Minor units of an invoice's non-proration licensed (plan fee) lines."""
    total = 0
    for li in invoice["lines"]["data"]:
        details = li["parent"]["subscription_item_details"]
        price = (li.get("pricing") or {}).get("price_details") or {}
        if details is None or details.get("proration"):
            continue
        if "metered" in str(price) or li.get("quantity") not in (None, 1):
            continue
        total += int(li["amount"])
    return total


def proration_net(world: SandboxWorld, story: Story) -> Decimal | None:
    """The net of the proration lines on a story's invoice (the plan-change story's second
    finding), in major units."""
    stripe = world.stripe(story.account_id)
    if stripe is None or story.invoice_id is None:
        return None
    invoice = next(i for i in stripe.invoices if i["id"] == story.invoice_id)
    lines = invoice["lines"]["data"]
    return _major(
        sum(li["amount"] for li in lines if li["parent"]["subscription_item_details"]["proration"])
    )


def collect_stories(world: SandboxWorld) -> list[Story]:
    """Every planted story with the IDs and amounts read from the generated objects."""
    out: list[Story] = []
    for spec in STORY_SPECS:
        if not spec.description or world.account(spec.account_id) is None:
            continue
        invoice_id, previous_id, amount = _expected(world, spec)
        out.append(
            Story(
                key=spec.key,
                account_id=spec.account_id,
                email=spec.email,
                provider=spec.billing,
                title=spec.title,
                description=spec.description,
                invoice_id=invoice_id,
                previous_invoice_id=previous_id,
                expected_finding=spec.expected_finding,
                expected_amount=amount,
            )
        )
    return out
