"""The account view tells the engineer how the account was put together: customers joined by
email only, providers not asked, and (for mirrored invoices) which provider bills and which one
collects."""

from __future__ import annotations

import json

from bot.domain.models import AccountRef, BillingSnapshot, CustomerRecord, ProviderFailure
from bot.domain.models import ProviderSnapshot as Snap
from handlers.account_views import snapshot_reply
from tests.unit.test_mirrors import copy_of, orb_months, snapshot


def _text(snapshot: BillingSnapshot) -> str:
    reply = snapshot_reply(snapshot)
    return reply.text + "\n" + json.dumps(reply.blocks, ensure_ascii=False)


def test_customers_joined_by_email_only_are_flagged_for_checking() -> None:
    """An account joined across providers by its email alone says so, naming the providers."""
    snapshot = BillingSnapshot(
        account=AccountRef(
            None,
            {"stripe": "cus_S1", "metronome": "9b3a1c2d"},
            display_name="Acme",
            email_only=("stripe", "metronome"),
        ),
        providers=(
            Snap("stripe", CustomerRecord("stripe", "cus_S1", None, name="Acme")),
            Snap("metronome", CustomerRecord("metronome", "9b3a1c2d", None, name="Acme")),
        ),
    )
    text = _text(snapshot)
    assert "Stripe and Metronome matched by email only" in text
    assert "check that this is the same customer" in text


def test_a_provider_that_was_not_asked_is_named_with_the_reason() -> None:
    """A provider skipped during the lookup is named, with why, next to the data shown."""
    snapshot = BillingSnapshot(
        account=AccountRef("acct_a", {"stripe": "cus_A1"}, display_name="Acme"),
        providers=(Snap("stripe", CustomerRecord("stripe", "cus_A1", "acct_a", name="Acme")),),
        skipped=(ProviderFailure("orb", "not asked: the lookup ran out of time"),),
    )
    assert "Orb: not asked: the lookup ran out of time" in _text(snapshot)
    plain = BillingSnapshot(
        account=AccountRef("acct_a", {"stripe": "cus_A1"}), providers=snapshot.providers
    )
    assert "matched by email only" not in _text(plain) and "not asked" not in _text(plain)


def test_a_mirrored_account_shows_who_bills_and_who_collects() -> None:
    """Orb's invoices are marked as collected by Stripe, Stripe's as copies of Orb's, and
    Stripe's role is to collect them: one bill, shown once as a bill."""
    apr, mar, feb = orb_months()
    copies = [copy_of(inv, f"in_{inv.id}", links=(inv.id,)) for inv in (apr, mar, feb)]
    text = _text(snapshot("orb", [apr, mar, feb], copies))
    assert "collects Orb's invoices (its invoices are copies)" in text
    assert "copy of Orb `ACME-00003`" in text
    assert "collected by Stripe as `in_orb_apr`" in text
