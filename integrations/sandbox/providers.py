"""The sandbox as `BillingProvider`s and `BillingWriter`s: the real Stripe, Orb and Metronome
clients talking to the sandbox servers through an in-process transport, so the sandbox exercises
the same parsing, HTTP policy and idempotent writes as production. Each call builds fresh servers:
their write state (refunds, credits, idempotency keys) lives as long as the returned clients."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from integrations.http import RetryPolicy
from integrations.metronome import MetronomeBillingProvider
from integrations.orb import OrbBillingProvider
from integrations.sandbox.metronome_server import SANDBOX_CREDIT_PRODUCT_ID, MetronomeSandboxServer
from integrations.sandbox.orb_server import OrbSandboxServer
from integrations.sandbox.stripe_server import StripeSandboxServer
from integrations.sandbox.wire import RouterTransport
from integrations.sandbox.world import SandboxWorld, build_world
from integrations.sandbox.zendesk_server import (
    SANDBOX_ACCOUNT_FIELD,
    SANDBOX_ZENDESK_BASE,
    SANDBOX_ZENDESK_EMAIL,
    SANDBOX_ZENDESK_TOKEN,
    ZendeskSandboxServer,
)
from integrations.stripe import StripeBillingProvider
from integrations.zendesk import ZendeskTicketSource

SANDBOX_KEYS = {
    "stripe": "sk_test_sandbox0000000000",
    "orb": "orb_sandbox_key",
    "metronome": "metronome_sandbox_token",
}
#: In-process calls cannot time out on the network; keep the policy but with short waits.
SANDBOX_POLICY = RetryPolicy(backoff_base=0.05, backoff_max=0.2, max_retry_after=0.5, deadline=10)


#: A sandbox client: a `BillingProvider` and a `BillingWriter` at once.
SandboxProvider = StripeBillingProvider | OrbBillingProvider | MetronomeBillingProvider


def sandbox_providers(
    world: SandboxWorld | None = None,
    *,
    usage_days: int = 35,
    clock: Callable[[], datetime] | None = None,
) -> dict[str, SandboxProvider]:
    """Stripe, Orb and Metronome clients backed by the sandbox world (`clock`: the clients'
    "now", e.g. a test world's fixed date). Each implements `BillingProvider` and
    `BillingWriter`; Metronome credits use the sandbox's catalogue credit product."""
    world = world or build_world()
    return {
        "stripe": StripeBillingProvider(
            SANDBOX_KEYS["stripe"],
            base_url="https://sandbox.stripe.invalid",
            policy=SANDBOX_POLICY,
            transport=RouterTransport(StripeSandboxServer(world, api_key=SANDBOX_KEYS["stripe"])),
            usage_days=usage_days,
            clock=clock,
        ),
        "orb": OrbBillingProvider(
            SANDBOX_KEYS["orb"],
            base_url="https://sandbox.orb.invalid/v1",
            policy=SANDBOX_POLICY,
            transport=RouterTransport(OrbSandboxServer(world, api_key=SANDBOX_KEYS["orb"])),
            usage_days=usage_days,
            clock=clock,
        ),
        "metronome": MetronomeBillingProvider(
            SANDBOX_KEYS["metronome"],
            base_url="https://sandbox.metronome.invalid",
            policy=SANDBOX_POLICY,
            transport=RouterTransport(
                MetronomeSandboxServer(world, api_key=SANDBOX_KEYS["metronome"])
            ),
            usage_days=usage_days,
            clock=clock,
            credit_product_id=SANDBOX_CREDIT_PRODUCT_ID,
        ),
    }


def sandbox_tickets(world: SandboxWorld | None = None) -> ZendeskTicketSource:
    """The real Zendesk client talking to the sandbox's Zendesk (tickets of the world's stories)."""
    world = world or build_world()
    server = ZendeskSandboxServer(
        world,
        email=SANDBOX_ZENDESK_EMAIL,
        token=SANDBOX_ZENDESK_TOKEN,
        base_url=SANDBOX_ZENDESK_BASE,
    )
    return ZendeskTicketSource(
        base_url=SANDBOX_ZENDESK_BASE,
        email=SANDBOX_ZENDESK_EMAIL,
        token=SANDBOX_ZENDESK_TOKEN,
        policy=SANDBOX_POLICY,
        transport=RouterTransport(server),
        account_field=str(SANDBOX_ACCOUNT_FIELD),
    )
