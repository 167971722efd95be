"""The fake Zendesk on loopback (the sandbox's Zendesk router served over real HTTP, with the
scripted faults of `FakeProviderServer`), and real `ZendeskTicketSource` clients pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest_asyncio

from integrations.http import RetryPolicy
from integrations.sandbox.world import SandboxWorld
from integrations.sandbox.zendesk_server import SANDBOX_ACCOUNT_FIELD, ZendeskSandboxServer
from integrations.zendesk import ZendeskTicketSource
from tests.support.fakeserver import FakeProviderServer
from tests.support.providers import TEST_POLICY, small_world

ZENDESK_EMAIL = "agent@acme.example"
ZENDESK_TOKEN = "zd-test-token-0123456789"
ACCOUNT_FIELD = str(SANDBOX_ACCOUNT_FIELD)


@dataclass
class FakeZendesk:
    """A fake Zendesk server and what tests need to reach it."""

    server: FakeProviderServer
    router: ZendeskSandboxServer

    @property
    def url(self) -> str:
        """Base URL (`http://127.0.0.1:PORT`)."""
        return self.server.url

    def client(
        self, *, token: str = ZENDESK_TOKEN, policy: RetryPolicy = TEST_POLICY
    ) -> ZendeskTicketSource:
        """A real client pointed at the fake (the caller closes it)."""
        return ZendeskTicketSource(
            base_url=self.url,
            email=ZENDESK_EMAIL,
            token=token,
            policy=policy,
            hosts=("acme.zendesk.com",),
        )

    def puts(self) -> int:
        """How many ticket updates (PUT) the server received."""
        return sum(1 for r in self.server.requests if r.method == "PUT")


async def start_fake_zendesk(world: SandboxWorld | None = None) -> FakeZendesk:
    """Start a fake Zendesk serving the tickets of `world`'s stories."""
    router = ZendeskSandboxServer(
        world or small_world(),
        email=ZENDESK_EMAIL,
        token=ZENDESK_TOKEN,
        base_url="https://acme.zendesk.com",
    )
    server = FakeProviderServer(router)
    await server.start()
    return FakeZendesk(server, router)


@pytest_asyncio.fixture
async def fake_zendesk() -> AsyncIterator[FakeZendesk]:
    """A fake Zendesk on 127.0.0.1 with the sandbox stories' tickets (fresh state per test)."""
    fake = await start_fake_zendesk()
    try:
        yield fake
    finally:
        await fake.server.stop()
