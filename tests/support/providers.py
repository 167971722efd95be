"""The three fake providers on loopback, serving the sandbox world in each provider's wire
format, and real provider clients pointed at them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache

import pytest_asyncio

from bot.domain.ports import BillingProvider
from integrations.http import RetryPolicy
from integrations.metronome import MetronomeBillingProvider
from integrations.orb import OrbBillingProvider
from integrations.sandbox.metronome_server import MetronomeSandboxServer
from integrations.sandbox.orb_server import OrbSandboxServer
from integrations.sandbox.stripe_server import StripeSandboxServer
from integrations.sandbox.world import SandboxWorld, build_world
from integrations.stripe import StripeBillingProvider
from tests.support.fakeserver import FakeProviderServer

KEYS = {
    "stripe": "sk_test_fake0000000000",
    "orb": "orb_fake_key",
    "metronome": "metronome_fake_token",
}
#: Fast but real: retries, Retry-After and deadlines all happen, in tens of milliseconds.
TEST_POLICY = RetryPolicy(
    connect_timeout=1.0,
    read_timeout=1.0,
    max_attempts=3,
    backoff_base=0.01,
    backoff_max=0.05,
    max_retry_after=0.05,
    deadline=3.0,
)
FIXED_NOW = datetime(2026, 11, 20, tzinfo=UTC)


@cache
def small_world() -> SandboxWorld:
    """One small world for the whole test session (stories plus 20 ordinary accounts)."""
    return build_world(now=FIXED_NOW, ordinary_accounts=20)


@dataclass
class FakeProviders:
    """The servers and clients of one test."""

    world: SandboxWorld
    stripe: FakeProviderServer
    orb: FakeProviderServer
    metronome: FakeProviderServer

    def servers(self) -> dict[str, FakeProviderServer]:
        """Servers by provider name."""
        return {"stripe": self.stripe, "orb": self.orb, "metronome": self.metronome}

    def clients(
        self, policy: RetryPolicy = TEST_POLICY, *, rates: Mapping[str, float] | None = None
    ) -> dict[str, BillingProvider]:
        """Fresh real clients pointed at the servers (the caller closes them); `rates` paces
        them (requests/s per provider), as production does."""
        rate = dict(rates or {})
        now = self.world.now

        def clock() -> datetime:
            return now

        return {
            "stripe": StripeBillingProvider(
                KEYS["stripe"],
                base_url=self.stripe.url,
                policy=policy,
                clock=clock,
                rate_limit=rate.get("stripe"),
            ),
            "orb": OrbBillingProvider(
                KEYS["orb"],
                base_url=self.orb.url + "/v1",
                policy=policy,
                clock=clock,
                rate_limit=rate.get("orb"),
            ),
            "metronome": MetronomeBillingProvider(
                KEYS["metronome"],
                base_url=self.metronome.url,
                policy=policy,
                clock=clock,
                rate_limit=rate.get("metronome"),
            ),
        }

    def set_latency(self, seconds: float) -> None:
        """Add a fixed delay to every request of every provider."""
        for server in self.servers().values():
            server.latency = seconds


@pytest_asyncio.fixture
async def fake_providers() -> AsyncIterator[FakeProviders]:
    """Stripe, Orb and Metronome fakes on 127.0.0.1, serving the test world."""
    world = small_world()
    servers = FakeProviders(
        world,
        FakeProviderServer(StripeSandboxServer(world, api_key=KEYS["stripe"])),
        FakeProviderServer(OrbSandboxServer(world, api_key=KEYS["orb"])),
        FakeProviderServer(MetronomeSandboxServer(world, api_key=KEYS["metronome"])),
    )
    for server in servers.servers().values():
        await server.start()
    try:
        yield servers
    finally:
        for server in servers.servers().values():
            await server.stop()
