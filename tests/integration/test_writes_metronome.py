"""Metronome customer credits through the real client over loopback HTTP against the Metronome
sandbox server: `uniqueness_key` and `Idempotency-Key` together make a credit exactly once under
replays, lost answers, expired keys, later days, 5xx, 429 and malformed bodies."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio

from bot.domain.identifiers import IdentifierKind
from bot.domain.models import CustomerRecord
from bot.domain.money import Money
from bot.domain.ports import BillingWriter
from bot.errors import (
    ProviderIdempotencyConflict,
    ProviderNotFound,
    ProviderOutcomeUnknown,
    ProviderRequestError,
)
from integrations.metronome import CREDIT_NAME, MetronomeBillingProvider
from integrations.sandbox.metronome_server import SANDBOX_CREDIT_PRODUCT_ID, MetronomeSandboxServer
from tests.support.providers import KEYS
from tests.support.writes import WRITE_POLICY, WriteEnv, serving, world

Env = WriteEnv[MetronomeSandboxServer, MetronomeBillingProvider]
ACCOUNT = "acct_cyberdyne"  # its contract has a prepaid commit: a product to credit on
NO_PRODUCT = "acct_tyrell"  # its contract has neither credits nor commits
CREATE = r"/customerCredits/create$"


class Clock:
    """A movable "now" for the client (the day the access schedule starts)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest_asyncio.fixture
async def env() -> AsyncIterator[Env]:
    """A fresh Metronome sandbox server on loopback and the client (no configured product)."""
    shared = world()
    router = MetronomeSandboxServer(shared, api_key=KEYS["metronome"])
    async with serving(router) as server:
        client = MetronomeBillingProvider(
            KEYS["metronome"], base_url=server.url, policy=WRITE_POLICY, clock=Clock(shared.now)
        )
        try:
            yield WriteEnv(shared, router, server, client)
        finally:
            await client.aclose()


async def customer_of(env: Env, account: str = ACCOUNT) -> CustomerRecord:
    """The account's Metronome customer, as lookup finds it."""
    [record] = await env.client.find_customers(IdentifierKind.ACCOUNT_ID, account)
    return record


def credits_for(env: Env, request_id: str) -> list[dict[str, Any]]:
    """The credits Metronome holds for one request (its own records)."""
    return [
        c
        for credits in env.router._credits.values()
        for c in credits
        if c.get("uniqueness_key") == f"bt:{request_id}:credit"
    ]


async def credit(
    env: Env,
    request_id: str,
    amount: str = "40.00",
    *,
    record: CustomerRecord | None = None,
    client: MetronomeBillingProvider | None = None,
) -> Any:
    """Grant a credit as the approval flow would."""
    return await (client or env.client).grant_credit(
        customer=record or await customer_of(env),
        amount=Money(Decimal(amount)),
        request_id=request_id,
        idempotency_key=f"bt:{request_id}:credit",
        description="Goodwill credit for the outage",
    )


async def test_credit_on_the_contracts_product_shows_in_lists_and_balances(env: Env) -> None:
    """A credit in USD cents on the contract's commit product, carrying the key as
    `uniqueness_key` and `Idempotency-Key`, shows in customerCredits/list and in the snapshot's
    balances."""
    record = await customer_of(env)
    result = await credit(env, "C-1", "40.00")
    assert isinstance(env.client, BillingWriter)
    assert result.provider == "metronome" and result.kind == "credit"
    assert result.amount == Money(Decimal("40.00")) and result.status == "created"
    [posted] = env.posts(CREATE)
    assert posted.headers["idempotency-key"] == "bt:C-1:credit"
    body = json.loads(posted.body)
    data = env.world.metronome(ACCOUNT)
    assert data is not None
    commit_product = data.contracts[0]["current"]["commits"][0]["product"]["id"]
    start = env.world.now.strftime("%Y-%m-%dT%H:%M:%SZ")
    end = (env.world.now + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert body == {
        "customer_id": record.customer_id, "product_id": commit_product, "priority": 1,
        "name": CREDIT_NAME, "description": "Goodwill credit for the outage",
        "access_schedule": {"schedule_items": [
            {"amount": 4000, "starting_at": start, "ending_before": end}]},
        "uniqueness_key": "bt:C-1:credit",
    }  # fmt: skip
    [made] = credits_for(env, "C-1")
    assert made["id"] == result.object_id
    snapshot = await env.client.get_snapshot(record)
    assert Money(Decimal("40.00")) in [b.remaining for b in snapshot.balances]


async def test_configured_product_and_missing_product(env: Env) -> None:
    """Without a credit or commit product on the contract the credit is refused with a reason;
    a configured product makes it possible."""
    record = await customer_of(env, NO_PRODUCT)
    with pytest.raises(ProviderRequestError, match="no credit or commit product"):
        await credit(env, "C-2", record=record)
    assert env.posts(CREATE) == []
    configured = MetronomeBillingProvider(
        KEYS["metronome"], base_url=env.server.url, policy=WRITE_POLICY,
        credit_product_id=SANDBOX_CREDIT_PRODUCT_ID,
    )  # fmt: skip
    try:
        result = await credit(env, "C-2", record=record, client=configured)
    finally:
        await configured.aclose()
    [made] = credits_for(env, "C-2")
    assert made["product"]["id"] == SANDBOX_CREDIT_PRODUCT_ID and made["id"] == result.object_id


async def test_same_key_replays_and_an_expired_key_reads_the_credit_back(env: Env) -> None:
    """The same key replays the first answer; once the Idempotency-Key is forgotten, the
    `uniqueness_key` 409 is read back as the same credit, replayed."""
    first = await credit(env, "C-3")
    again = await credit(env, "C-3")
    assert again.object_id == first.object_id
    env.router.expire_idempotency_keys()
    later = await credit(env, "C-3")
    assert later.replayed and later.object_id == first.object_id
    assert len(credits_for(env, "C-3")) == 1


async def test_same_key_other_amount_is_a_conflict(env: Env) -> None:
    """The key with another amount is a conflict, whether the Idempotency-Key or the
    uniqueness_key catches it."""
    await credit(env, "C-4", "40")
    with pytest.raises(ProviderIdempotencyConflict, match=r"\$40.00, not \$41.00"):
        await credit(env, "C-4", "41")
    env.router.expire_idempotency_keys()
    with pytest.raises(ProviderIdempotencyConflict, match=r"\$40.00, not \$41.00"):
        await credit(env, "C-4", "41")
    assert len(credits_for(env, "C-4")) == 1


async def test_a_retry_on_a_later_day_finds_the_credit(env: Env) -> None:
    """A retry the next day sends another access schedule; the 409 it gets is read back as the
    credit already made, not a second credit and not a conflict."""
    env.server.fail_after("drop", path=CREATE, times=None)
    with pytest.raises(ProviderOutcomeUnknown):
        await credit(env, "C-5")
    env.server.clear_faults()
    clock = env.client._clock
    assert isinstance(clock, Clock)
    clock.now += timedelta(days=1)
    result = await credit(env, "C-5")
    assert result.replayed and len(credits_for(env, "C-5")) == 1


@pytest.mark.parametrize("kind", ["drop", "hang", "status", "malformed"])
async def test_lost_answer_is_unknown_then_the_same_key_returns_the_credit(
    env: Env, kind: Any
) -> None:
    """Metronome made the credit but every answer was lost: unknown, then the retry with the
    same key returns the one credit."""
    env.server.fail_after(kind, path=CREATE, times=None)
    with pytest.raises(ProviderOutcomeUnknown):
        await credit(env, "C-6")
    assert len(credits_for(env, "C-6")) == 1
    env.server.clear_faults()
    again = await credit(env, "C-6")
    assert again.object_id == credits_for(env, "C-6")[0]["id"]
    assert len(credits_for(env, "C-6")) == 1
    assert set(env.keys_seen(CREATE)) == {"bt:C-6:credit"}


async def test_5xx_before_is_unknown_and_the_retry_credits_once(env: Env) -> None:
    """A persistent 5xx is unknown; the retry with the same key credits once."""
    env.server.fail(503, path=CREATE, times=None, body=b'{"message": "unavailable"}')
    with pytest.raises(ProviderOutcomeUnknown):
        await credit(env, "C-7")
    assert credits_for(env, "C-7") == []
    env.server.clear_faults()
    await credit(env, "C-7")
    assert len(credits_for(env, "C-7")) == 1


@pytest.mark.parametrize("retry_after", [None, "0"])
async def test_429_is_retried_with_the_same_keys(env: Env, retry_after: str | None) -> None:
    """429s are retried; every attempt carries the same Idempotency-Key and uniqueness_key."""
    env.server.fail(429, path=CREATE, times=2, retry_after=retry_after)
    await credit(env, "C-8")
    assert env.keys_seen(CREATE) == ["bt:C-8:credit"] * 3
    assert {json.loads(r.body)["uniqueness_key"] for r in env.posts(CREATE)} == {"bt:C-8:credit"}
    assert len(credits_for(env, "C-8")) == 1


async def test_metronomes_rejections(env: Env) -> None:
    """An unknown customer and an unknown product are Metronome's 404s; a credit in another
    currency is refused before sending."""
    ghost = CustomerRecord(
        provider="metronome", customer_id="00000000-0000-4000-8000-000000000000", account_id=None
    )
    bogus = MetronomeBillingProvider(
        KEYS["metronome"], base_url=env.server.url, policy=WRITE_POLICY,
        credit_product_id="11111111-1111-4111-8111-111111111111",
    )  # fmt: skip
    try:
        with pytest.raises(ProviderNotFound, match="Customer not found"):
            await credit(env, "C-9", record=ghost, client=bogus)
        with pytest.raises(ProviderNotFound, match="Product"):
            await credit(env, "C-9b", client=bogus)
    finally:
        await bogus.aclose()
    with pytest.raises(ProviderRequestError, match="in EUR is not supported"):
        await env.client.grant_credit(
            customer=await customer_of(env), amount=Money(Decimal("5"), "eur"),
            request_id="C-9", idempotency_key="bt:C-9:credit", description="x",
        )  # fmt: skip


async def test_stored_errors_are_replayed(env: Env) -> None:
    """Metronome keeps a key's first answer even when it was an error: the same request with the
    same key gets the same error back without running again."""
    bogus = MetronomeBillingProvider(
        KEYS["metronome"], base_url=env.server.url, policy=WRITE_POLICY,
        credit_product_id="11111111-1111-4111-8111-111111111111",
    )  # fmt: skip
    try:
        for _ in range(2):
            with pytest.raises(ProviderNotFound):
                await credit(env, "C-10", client=bogus)
    finally:
        await bogus.aclose()
    assert len(env.router._keys) == 1


async def test_find_write_finds_the_credit_by_request_id(env: Env) -> None:
    """The reconciler finds a credit by the request ID inside its uniqueness_key, across
    pages."""
    record = await customer_of(env)
    made = [await credit(env, f"C-11-{n}", "1") for n in range(27)]  # more than one page
    found = await env.client.find_write(customer=record, kind="credit", request_id="C-11-26")
    assert found is not None and found.replayed and found.object_id == made[26].object_id
    assert found.amount == Money(Decimal("1.00"))
    assert await env.client.find_write(customer=record, kind="credit", request_id="C-x") is None


async def test_metronome_has_no_refunds(env: Env) -> None:
    """Refunds go through Stripe: Metronome refuses them without calling Metronome."""
    with pytest.raises(ProviderRequestError, match="refunds go through the Stripe payment"):
        await env.client.refund_payment(
            customer=await customer_of(env), payment_id="ch_1", amount=Money(Decimal("5")),
            request_id="R-1", idempotency_key="bt:R-1:refund",
        )  # fmt: skip
    assert env.posts(".") == []


async def test_writes_never_change_the_shared_world(env: Env) -> None:
    """Credits land in the server's overlay, never in the world's shared objects."""
    data = env.world.metronome(ACCOUNT)
    assert data is not None
    before = copy.deepcopy((data.balances, data.contracts))
    await credit(env, "C-12")
    assert (data.balances, data.contracts) == before
