"""Account resolution (DESIGN §3) with fake providers: which account an identifier means,
ambiguity, not found, partial provider failures, and the links cache."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.domain.identifiers import IdentifierKind, classify_account
from bot.domain.models import CustomerRecord, ProviderName, ProviderSnapshot
from bot.domain.records import AccountLink
from bot.errors import AccountNotFound, AmbiguousAccount, ProviderUnavailable
from bot.services.lookup import LookupService


@dataclass
class FakeBillingProvider:
    """A provider answering from a list of customers, counting calls, optionally failing."""

    name: ProviderName
    customers: list[CustomerRecord] = field(default_factory=list)
    fail: bool = False
    calls: list[tuple[str, str]] = field(default_factory=list)

    async def find_customers(self, kind: IdentifierKind, value: str) -> list[CustomerRecord]:
        self.calls.append((kind.value, value))
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
