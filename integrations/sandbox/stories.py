"""The planted stories of the sandbox: which account tells which billing story, and what an
explanation of it should find.

`STORY_SPECS` (in `specs`) is static (it shapes the index); `collect_stories` reads each
story's invoices and expected amount back from the generated objects, so the numbers always
match what the providers serve.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal
from weakref import WeakKeyDictionary

from integrations.sandbox.specs import FINDING_KINDS, STORY_SPECS, StorySpec, spec_for
from integrations.sandbox.world import SandboxWorld

__all__ = [
    "FINDING_KINDS",
    "STORY_SPECS",
    "Story",
    "StorySpec",
    "collect_stories",
    "proration_net",
    "spec_for",
    "stories_of",
]


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
        elif spec.key == "mirrored_orb":
            new = next(li for li in latest["line_items"] if li["name"] == "Compute hours")
            old = next(li for li in previous["line_items"] if li["name"] == "Compute hours")
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
        elif spec.key in ("mirrored_metronome", "prepaid_burn"):
            # The planted cause is on one usage line: its price (usage flat), or its usage
            # (drawn from the commit); either way the line's change.
            name = "Compute hours" if spec.key == "mirrored_metronome" else "AI inference"
            new = next(li for li in latest["line_items"] if li["name"] == name)
            old = next(li for li in previous["line_items"] if li["name"] == name)
            amount = _major(new["total"] - old["total"])
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


_CACHE: WeakKeyDictionary[SandboxWorld, list[Story]] = WeakKeyDictionary()


def stories_of(world: SandboxWorld) -> list[Story]:
    """The planted stories of `world` (collected on first use, then cached)."""
    found = _CACHE.get(world)
    if found is None:
        found = _CACHE[world] = collect_stories(world)
    return found
