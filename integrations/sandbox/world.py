"""The sandbox world: seeded, deterministic billing accounts in each provider's wire format.

`build_world()` builds only the cheap index (accounts and their customer IDs); each account's
provider objects are generated on first access (`generate.build_account`) and cached. Every
object ID encodes the number of the account that owns it, so `owner_of` answers for any ID
without building anything. Everything is placed relative to `now` (midnight UTC by default), so
"evidence due in 5 days" stays true as the calendar moves.

Imports run one way: `specs` and `accounts` (data) ← `generate` ← `world` ← `stories`.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

from integrations.sandbox.accounts import (
    AccountBundle,
    BillingProvider,
    IdCodec,
    MetronomeData,
    OrbData,
    SandboxAccount,
    StripeData,
)
from integrations.sandbox.generate import build_account
from integrations.sandbox.population import POPULATION
from integrations.sandbox.specs import STORY_SPECS

__all__ = [
    "IdCodec",
    "MetronomeData",
    "OrbData",
    "SandboxAccount",
    "SandboxWorld",
    "StripeData",
    "build_world",
]


# --- The world ------------------------------------------------------------------------------


class SandboxWorld:
    """The index of accounts, with each account's provider objects generated lazily.

    `accounts` lists the story accounts first, then the ordinary ones, then the labelled
    population (`population.POPULATION`, when built with it); `codec` makes and reads
    the object IDs. Generated objects are cached per account and shared: treat them as read-only.
    """

    def __init__(
        self,
        *,
        seed: int,
        now: datetime,
        accounts: list[SandboxAccount],
        max_cached: int | None = None,
    ) -> None:
        #: Bundles kept at most (least recently used dropped; they regenerate identically).
        #: None keeps every one: the default, since servers hand out shared objects.
        self.max_cached = max_cached
        self.seed = seed
        self.now = now
        self.accounts = accounts
        self.codec = IdCodec(seed)
        self._by_id = {a.account_id: a for a in accounts}
        self._bundles: dict[str, AccountBundle] = {}

    def account(self, account_id: str) -> SandboxAccount | None:
        """The account with our `account_id`, if it exists."""
        return self._by_id.get(account_id)

    def bundle(self, account_id: str) -> AccountBundle | None:
        """All provider objects of one account, generated on first use and cached."""
        cached = self._bundles.get(account_id)
        if cached is not None:
            if self.max_cached is not None:  # most recently used last
                self._bundles[account_id] = self._bundles.pop(account_id)
            return cached
        acct = self._by_id.get(account_id)
        if acct is None:
            return None
        built = build_account(self, acct)
        self._bundles[account_id] = built
        if self.max_cached is not None and len(self._bundles) > self.max_cached:
            del self._bundles[next(iter(self._bundles))]
        return built

    def stripe(self, account_id: str) -> StripeData | None:
        """The account's Stripe objects (None when it has no Stripe customer)."""
        found = self.bundle(account_id)
        return found.stripe if found else None

    def orb(self, account_id: str) -> OrbData | None:
        """The account's Orb objects (None when it is not in Orb)."""
        found = self.bundle(account_id)
        return found.orb if found else None

    def metronome(self, account_id: str) -> MetronomeData | None:
        """The account's Metronome objects (None when it is not in Metronome)."""
        found = self.bundle(account_id)
        return found.metronome if found else None

    def owner_of(self, object_id: str) -> str | None:
        """Our account ID owning any object ID this world made (customers, invoices, charges,
        Orb and Metronome IDs…), or the account ID itself; None for unknown or shared IDs."""
        if object_id in self._by_id:
            return object_id
        decoded = self.codec.decode(object_id)
        if decoded is None or decoded[2] >= len(self.accounts):
            return None
        return self.accounts[decoded[2]].account_id


# Company names for ordinary accounts: two words, slugged into `acct_<first>_<second>`.
_FIRST = (
    "Alpine", "Amber", "Apex", "Arbor", "Atlas", "Aurora", "Basalt", "Beacon", "Birch",
    "Bluefin", "Boreal", "Brightline", "Cascade", "Cedar", "Cinder", "Cobalt", "Comet", "Copper",
    "Coral", "Crescent", "Delta", "Ember", "Evergreen", "Falcon", "Fjord", "Foxglove", "Granite",
    "Harbor", "Helix", "Horizon", "Indigo", "Juniper", "Kestrel", "Lantern", "Lumen", "Maple",
    "Meridian", "Nimbus", "Northstar", "Oakridge", "Onyx", "Orchid", "Pinnacle", "Quartz",
    "Redwood", "Saffron", "Sequoia", "Solstice", "Summit", "Tidal", "Topaz", "Vertex", "Willow",
    "Zephyr",
)  # fmt: skip
_SECOND = (
    "Analytics", "Labs", "Systems", "Health", "Logistics", "Robotics", "Media", "Software",
    "Networks", "Bio", "Cloud", "Data", "Foods", "Games", "Energy", "Security", "Studios",
    "Works", "Finance", "Mobility",
)  # fmt: skip


def _ordinary_names(seed: int, count: int, taken: set[str]) -> list[tuple[str, str, str]]:
    combos = [(a, b) for a in _FIRST for b in _SECOND]
    random.Random(f"{seed}:names").shuffle(combos)  # noqa: S311 - seeded test data
    out: list[tuple[str, str, str]] = []
    for first, second in combos:
        if len(out) == count:
            break
        slug = f"{first}_{second}".lower()
        if f"acct_{slug}" in taken:
            continue
        out.append(
            (f"acct_{slug}", f"{first} {second}", f"billing@{slug.replace('_', '-')}.example")
        )
    number = 1
    while len(out) < count:  # more accounts than names: numbered ones
        out.append(
            (f"acct_{number:05d}", f"Account {number:05d}", f"billing@a{number:05d}.example")
        )
        number += 1
    return out


def build_world(
    *,
    seed: int = 7,
    now: datetime | None = None,
    ordinary_accounts: int = 300,
    population: bool = True,
    max_cached: int | None = None,
) -> SandboxWorld:
    """Build the sandbox index: the story accounts first, then `ordinary_accounts` more, spread
    over the billing providers (about 40% Stripe, 35% Orb, 25% Metronome), then (with
    `population`) the labelled population the anomaly detectors are measured on."""
    if now is None:
        now = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    elif now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    now = now.astimezone(UTC)
    codec = IdCodec(seed)
    accounts: list[SandboxAccount] = []

    def add(
        account_id: str,
        name: str,
        email: str,
        billing: BillingProvider,
        story: str | None,
        *,
        also_metronome: bool = False,
        plant: str | None = None,
    ) -> None:
        number = len(accounts)
        accounts.append(
            SandboxAccount(
                account_id=account_id,
                name=name,
                email=email,
                billing=billing,
                stripe_customer_id=codec.stripe("cus", number, 0),
                orb_customer_id=codec.orb("customer", number, 0) if billing == "orb" else None,
                metronome_customer_id=(
                    codec.metronome("customer", number, 0)
                    if billing == "metronome" or also_metronome
                    else None
                ),
                story=story,
                plant=plant,
                number=number,
            )
        )

    for spec in STORY_SPECS:
        add(
            spec.account_id,
            spec.name,
            spec.email,
            spec.billing,
            spec.key,
            also_metronome=spec.key == "multi_provider",
        )
    taken = {a.account_id for a in accounts}
    for account_id, name, email in _ordinary_names(seed, ordinary_accounts, taken):
        draw = random.Random(f"{seed}:{account_id}").random()  # noqa: S311 - seeded test data
        billing: BillingProvider = (
            "stripe" if draw < 0.40 else "orb" if draw < 0.75 else "metronome"
        )
        add(account_id, name, email, billing, None)
    if population:  # after everything else, so the other accounts keep their numbers and IDs
        for plant in POPULATION:
            add(plant.account_id, plant.name, plant.email, plant.billing, None, plant=plant.key)
    return SandboxWorld(seed=seed, now=now, accounts=accounts, max_cached=max_cached)
