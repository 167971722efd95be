"""Account resolution (DESIGN §3) with fake providers: which account an identifier means,
ambiguity, not found, partial provider failures, and the links cache."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.domain.identifiers import IdentifierKind, classify_account
from bot.domain.models import CustomerRecord, ProviderName, ProviderSnapshot
from bot.domain.records import AccountLink
from bot.errors import (
    AccountNotFound,
    AmbiguousAccount,
    ProviderBadResponse,
    ProviderUnavailable,
)
from bot.services.lookup import NOT_THERE, LookupService


@dataclass
class FakeBillingProvider:
    """A provider answering from a list of customers, counting calls, optionally failing."""

    name: ProviderName
    customers: list[CustomerRecord] = field(default_factory=list)
    fail: bool = False
    calls: list[tuple[str, str]] = field(default_factory=list)
    #: Seconds every lookup takes (a slow provider).
    delay: float = 0.0
    #: Raised by `get_snapshot` (e.g. a malformed response).
    snapshot_error: Exception | None = None

    async def find_customers(self, kind: IdentifierKind, value: str) -> list[CustomerRecord]:
        self.calls.append((kind.value, value))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise ProviderUnavailable(self.name, f"{self.name} is unavailable", status=500)
        match kind:
            case IdentifierKind.EMAIL:
                return [c for c in self.customers if c.email == value]
            case IdentifierKind.ACCOUNT_ID:
                return [c for c in self.customers if c.account_id == value]
            case IdentifierKind.STRIPE_CUSTOMER if self.name == "stripe":
                return [c for c in self.customers if c.customer_id == value]
            case IdentifierKind.ORB_CUSTOMER if self.name == "orb":
                return [c for c in self.customers if c.customer_id == value]
            case IdentifierKind.METRONOME_CUSTOMER if self.name == "metronome":
                return [c for c in self.customers if c.customer_id == value]
        return []

    async def get_snapshot(self, customer: CustomerRecord) -> ProviderSnapshot:
        if self.snapshot_error is not None:
            raise self.snapshot_error
        if self.fail:
            raise ProviderUnavailable(self.name, f"{self.name} is unavailable", status=500)
        return ProviderSnapshot(self.name, customer)

    async def aclose(self) -> None:
        return None


class FakeLinks:
    """An in-memory account links repository."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], AccountLink] = {}

    async def get(self, identifier: str) -> list[AccountLink]:
        return [v for (i, _), v in sorted(self.rows.items()) if i == identifier]

    async def put(self, links: Any) -> None:
        for link in links:
            self.rows[(link.identifier, link.provider)] = link

    async def invalidate(self, identifier: str) -> None:
        for key in [k for k in self.rows if k[0] == identifier]:
            del self.rows[key]


class FakeDatabase:
    """Just enough of `Database` for the lookup service: `uow()` with `.links`."""

    def __init__(self) -> None:
        self.links = FakeLinks()

    @asynccontextmanager
    async def _uow(self) -> AsyncIterator[Any]:
        @dataclass
        class Uow:
            links: FakeLinks

            async def commit(self) -> None:
                return None

        yield Uow(self.links)

    def uow(self) -> Any:
        return self._uow()


def rec(
    provider: ProviderName, cid: str, account: str | None, email: str | None = None
) -> CustomerRecord:
    return CustomerRecord(provider, cid, account, name=f"{account} in {provider}", email=email)


def providers() -> dict[str, FakeBillingProvider]:
    return {
        "stripe": FakeBillingProvider("stripe", [rec("stripe", "cus_A1", "acct_a", "a@x.example")]),
        "orb": FakeBillingProvider("orb", [rec("orb", "OrbA1", "acct_a")]),
        "metronome": FakeBillingProvider(
            "metronome", [rec("metronome", "4b3a1c2d-0e9f-4a8b-9c7d-6e5f4a3b2c1d", "acct_a")]
        ),
    }


async def test_an_email_resolves_through_stripe_to_every_provider() -> None:
    """An email only Stripe knows leads, by its account ID, to the Orb and Metronome customers."""
    fakes = providers()
    resolution = await LookupService(fakes).resolve(classify_account("a@x.example"))
    assert resolution.account_id == "acct_a"
    assert set(resolution.customers) == {"stripe", "orb", "metronome"}
    assert ("account_id", "acct_a") in fakes["orb"].calls


@pytest.mark.parametrize(
    "identifier",
    ["cus_A1", "acct_a", "OrbA1", "4b3a1c2d-0e9f-4a8b-9c7d-6e5f4a3b2c1d"],
)
async def test_every_identifier_kind_finds_the_same_account(identifier: str) -> None:
    """A Stripe ID, our ID, an Orb ID or a Metronome ID all resolve to acct_a everywhere."""
    resolution = await LookupService(providers()).resolve(classify_account(identifier))
    assert resolution.account_id == "acct_a"
    assert set(resolution.customers) == {"stripe", "orb", "metronome"}


async def test_two_accounts_behind_one_email_is_ambiguous() -> None:
    """Two Stripe customers with different account IDs share an email: the user must choose."""
    fakes = providers()
    fakes["stripe"].customers.append(rec("stripe", "cus_B1", "acct_b", "a@x.example"))
    with pytest.raises(AmbiguousAccount) as info:
        await LookupService(fakes).resolve(classify_account("a@x.example"))
    assert "acct_a" in info.value.message and "acct_b" in info.value.message


async def test_unknown_identifier_is_not_found() -> None:
    """An identifier nobody knows raises AccountNotFound naming it."""
    with pytest.raises(AccountNotFound, match="acct_zzz"):
        await LookupService(providers()).resolve(classify_account("acct_zzz"))


async def test_not_found_names_the_providers_that_could_not_be_asked() -> None:
    """When a provider was down, "not found" says it could not be checked."""
    fakes = providers()
    fakes["orb"].fail = True
    with pytest.raises(AccountNotFound, match=r"Not checked: Orb \(unavailable\)"):
        await LookupService(fakes).resolve(classify_account("acct_zzz"))


async def test_all_providers_down_is_a_provider_error_not_not_found() -> None:
    """If no provider answers, the user hears a provider failed, not that the account is unknown."""
    fakes = providers()
    for fake in fakes.values():
        fake.fail = True
    with pytest.raises(ProviderUnavailable):
        await LookupService(fakes).resolve(classify_account("acct_a"))


async def test_a_failing_provider_is_reported_and_the_rest_resolve() -> None:
    """Orb failing during resolution is recorded; Stripe and Metronome still resolve."""
    fakes = providers()
    fakes["orb"].fail = True
    service = LookupService(fakes)
    snapshot = await service.snapshot(classify_account("acct_a"))
    assert [p.provider for p in snapshot.providers] == ["stripe", "metronome"]
    assert [(f.provider, f.reason) for f in snapshot.failures] == [("orb", "unavailable")]


async def test_links_are_cached_and_reused() -> None:
    """The second lookup of an email goes straight to each provider's own customer ID."""
    fakes = providers()
    db = FakeDatabase()
    service = LookupService(fakes, database=db)
    await service.resolve(classify_account("a@x.example"))
    assert len(db.links.rows) == 3
    for fake in fakes.values():
        fake.calls.clear()
    again = await service.resolve(classify_account("A@X.example"))  # emails match case-blind
    assert again.account_id == "acct_a"
    assert fakes["stripe"].calls == [("stripe_customer", "cus_A1")]
    assert fakes["orb"].calls == [("orb_customer", "OrbA1")]


async def test_stale_or_broken_links_are_resolved_afresh() -> None:
    """Links older than the TTL, or pointing at a customer that vanished, are not trusted."""
    fakes = providers()
    db = FakeDatabase()
    now = datetime(2026, 11, 1, tzinfo=UTC)
    service = LookupService(fakes, database=db, clock=lambda: now)
    await service.resolve(classify_account("acct_a"))
    later = LookupService(fakes, database=db, clock=lambda: now + timedelta(days=2))
    for fake in fakes.values():
        fake.calls.clear()
    await later.resolve(classify_account("acct_a"))
    assert ("account_id", "acct_a") in fakes["orb"].calls  # resolved again, not from the cache
    fakes["orb"].customers.clear()  # the linked Orb customer is gone
    fresh = LookupService(fakes, database=db, clock=lambda: now + timedelta(days=2))
    resolution = await fresh.resolve(classify_account("acct_a"))
    assert "orb" not in resolution.customers


async def test_a_provider_down_during_the_first_lookup_is_asked_again_next_time() -> None:
    """Orb failing once is not remembered as "no Orb customer": the next lookup asks Orb again
    and finds it, and only then is every provider cached."""
    fakes = providers()
    db = FakeDatabase()
    service = LookupService(fakes, database=db)
    fakes["orb"].fail = True
    first = await service.resolve(classify_account("a@x.example"))
    assert first.failures == {"orb": "unavailable"}
    assert sorted(p for _, p in db.links.rows) == ["metronome", "stripe"]  # no row for Orb
    fakes["orb"].fail = False
    for fake in fakes.values():
        fake.calls.clear()
    second = await service.resolve(classify_account("a@x.example"))
    assert set(second.customers) == {"stripe", "orb", "metronome"} and not second.failures
    assert ("account_id", "acct_a") in fakes["orb"].calls
    assert sorted(p for _, p in db.links.rows) == ["metronome", "orb", "stripe"]
    for fake in fakes.values():
        fake.calls.clear()
    third = await service.resolve(classify_account("a@x.example"))
    assert set(third.customers) == {"stripe", "orb", "metronome"}
    assert fakes["orb"].calls == [("orb_customer", "OrbA1")]  # now from the cache


async def test_a_provider_with_no_customer_is_cached_as_not_there_for_a_short_while() -> None:
    """A Stripe-only account is served from the cache (Orb and Metronome answered "none"), and
    those "none" answers expire after minutes, not hours."""
    fakes = providers()
    fakes["orb"].customers.clear()
    fakes["metronome"].customers.clear()
    db = FakeDatabase()
    now = datetime(2026, 11, 1, tzinfo=UTC)
    service = LookupService(fakes, database=db, clock=lambda: now)
    await service.resolve(classify_account("acct_a"))
    assert {p: link.customer_id for (_, p), link in db.links.rows.items()} == {
        "stripe": "cus_A1",
        "orb": NOT_THERE,
        "metronome": NOT_THERE,
    }
    for fake in fakes.values():
        fake.calls.clear()
    cached = await service.resolve(classify_account("acct_a"))
    assert set(cached.customers) == {"stripe"}
    assert fakes["orb"].calls == [] and fakes["metronome"].calls == []
    later = LookupService(fakes, database=db, clock=lambda: now + timedelta(minutes=11))
    await later.resolve(classify_account("acct_a"))
    assert fakes["orb"].calls == [("account_id", "acct_a")]


async def test_the_cached_path_keeps_to_the_lookup_timeout() -> None:
    """A provider that hangs on the cached path is named as timed out within the lookup's
    budget; the others still resolve."""
    fakes = providers()
    db = FakeDatabase()
    service = LookupService(fakes, database=db)
    await service.resolve(classify_account("acct_a"))
    fakes["metronome"].delay = 5.0
    started = time.monotonic()
    resolution = await service.resolve(classify_account("acct_a"), timeout=0.3)
    assert time.monotonic() - started < 1.0
    assert resolution.failures == {"metronome": "timed out"}
    assert set(resolution.customers) == {"stripe", "orb"}


async def test_a_provider_that_sends_an_unreadable_object_is_named_and_the_rest_show() -> None:
    """A malformed provider response (e.g. an invoice with no currency) names that provider;
    the other providers' data is still shown."""
    fakes = providers()
    fakes["orb"].snapshot_error = ProviderBadResponse("orb", "Orb sent an invoice with no currency")
    snapshot = await LookupService(fakes).snapshot(classify_account("acct_a"))
    assert [p.provider for p in snapshot.providers] == ["stripe", "metronome"]
    assert [(f.provider, f.reason) for f in snapshot.failures] == [("orb", "unavailable")]


def email_customers(
    stripe_account: str | None, metronome_name: str, metronome_account: str | None = None
) -> dict[str, FakeBillingProvider]:
    """Stripe and Metronome customers sharing billing@shared.example (a Metronome alias)."""
    stripe = CustomerRecord(
        "stripe", "cus_S1", stripe_account, name="Acme Inc", email="billing@shared.example"
    )
    metronome = CustomerRecord(
        "metronome",
        "9b3a1c2d-0e9f-4a8b-9c7d-6e5f4a3b2c1d",
        metronome_account,
        name=metronome_name,
        email="billing@shared.example",
    )
    return {
        "stripe": FakeBillingProvider("stripe", [stripe]),
        "orb": FakeBillingProvider("orb", []),
        "metronome": FakeBillingProvider("metronome", [metronome]),
    }


async def test_customers_joined_only_by_email_are_flagged_not_silently_merged() -> None:
    """One email in Stripe and Metronome, no account ID in common, the same company name: shown
    as one account, flagged "matched by email only" for both; never cached."""
    db = FakeDatabase()
    service = LookupService(email_customers(None, "ACME, Inc."), database=db)
    snapshot = await service.snapshot(classify_account("billing@shared.example"))
    assert snapshot.account.account_id is None
    assert set(snapshot.account.customer_ids) == {"stripe", "metronome"}
    assert snapshot.account.email_only == ("stripe", "metronome")
    assert db.links.rows == {}


async def test_a_customer_without_the_account_id_is_the_one_flagged() -> None:
    """Stripe knows our account ID, the Metronome customer found by the same email does not:
    Metronome is the provider matched by email only."""
    service = LookupService(email_customers("acct_s", "Acme"))
    resolution = await service.resolve(classify_account("billing@shared.example"))
    assert resolution.account_id == "acct_s"
    assert resolution.email_only == ("metronome",)
    both = LookupService(email_customers("acct_s", "Acme", metronome_account="acct_s"))
    assert (await both.resolve(classify_account("billing@shared.example"))).email_only == ()


async def test_different_customers_behind_one_email_are_listed_not_merged() -> None:
    """Different company names behind one email, no account ID in common: both are listed and
    the user chooses; nothing is merged."""
    service = LookupService(email_customers(None, "Globex Labs"))
    with pytest.raises(AmbiguousAccount) as info:
        await service.resolve(classify_account("billing@shared.example"))
    text = info.value.message
    assert "cus_S1" in text and "9b3a1c2d-0e9f-4a8b-9c7d-6e5f4a3b2c1d" in text
    assert "Acme Inc" in text and "Globex Labs" in text
    assert "matched by email only" in text


async def test_a_provider_left_without_time_is_named_as_not_asked() -> None:
    """When the first providers' answers use up the lookup's budget, the providers that would
    be asked next by account ID are named as not asked, not silently left out."""
    fakes = providers()
    fakes["stripe"].delay = 0.35
    service = LookupService(fakes, resolve_timeout=0.5, min_call_seconds=0.2)
    snapshot = await service.snapshot(classify_account("a@x.example"))
    assert [p.provider for p in snapshot.providers] == ["stripe"]
    assert [(f.provider, f.reason) for f in snapshot.skipped] == [
        ("orb", "not asked: the lookup ran out of time"),
        ("metronome", "not asked: the lookup ran out of time"),
    ]
    assert snapshot.failures == ()
