"""The static part of the sandbox's planted stories: which account tells which billing story.

Pure data: it shapes the world's index (`world.build_world`) and the generator (`generate`);
`stories.collect_stories` reads each story's invoices and expected amounts back from the
generated objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Finding kinds the explain engine reports (strings shared with it).
FINDING_KINDS = (
    "usage_growth", "new_line", "removed_line", "price_change", "plan_change", "proration",
    "discount_ended", "credit_depleted", "tax_change", "minimum_commitment", "duplicate_charge",
    "balance_applied",
)  # fmt: skip


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
        expected_finding="discount_ended",
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
    # Invoiced through Stripe: the billing provider's invoice is the bill, a Stripe copy of it
    # (one-off items, no prices) collects the money.
    StorySpec(
        "mirrored_orb",
        "acct_umbrella",
        "Umbrella Corporation",
        "billing@umbrella.example",
        "orb",
        "Orb invoices collected through Stripe",
        "Orb-billed through Stripe Invoicing: every Orb invoice has a Stripe copy made of one-off "
        "items (metadata orb_invoice_id) that Stripe collects; Compute hours grew 40% on the "
        "latest, explained from Orb's invoice, never counted twice.",
        latest_invoice_days_ago=2,
        expected_finding="usage_growth",
    ),
    StorySpec(
        "mirrored_metronome",
        "acct_stark",
        "Stark Industries",
        "billing@stark.example",
        "metronome",
        "Metronome invoices collected through Stripe",
        "Metronome-billed through Stripe: each Metronome invoice names its Stripe copy "
        "(external_invoice.invoice_id; one item per product, no metadata); Compute hours went "
        "from $0.09 to $0.11 a vCPU-hour on the latest, with usage flat.",
        latest_invoice_days_ago=4,
        expected_finding="price_change",
    ),
    StorySpec(
        "prepaid_burn",
        "acct_massive",
        "Massive Dynamic",
        "billing@massive.example",
        "metronome",
        "Prepaid commit burning twice as fast",
        "Metronome-billed, collected through Stripe copies that name nothing (matched by amount "
        "and period); AI inference usage doubled and the prepaid commit paid for all of it, so "
        "the total did not change while the commit burns twice as fast.",
        latest_invoice_days_ago=3,
        expected_finding="usage_growth",
    ),
)


def spec_for(account_id: str) -> StorySpec | None:
    """The story spec of an account, if it has one."""
    return next((s for s in STORY_SPECS if s.account_id == account_id), None)
