"""Orb credit ledger increments through the real client over loopback HTTP against the Orb
sandbox server: exactly once under replays, lost answers, 5xx, 409 in flight, 429 and malformed
bodies; Orb's rejections; finding the entry afterwards; no refunds."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
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
from integrations.orb import OrbBillingProvider
from integrations.sandbox.orb_server import OrbSandboxServer
from tests.support.fakeserver import Fault
from tests.support.providers import KEYS
from tests.support.writes import WRITE_POLICY, WriteEnv, serving, world

Env = WriteEnv[OrbSandboxServer, OrbBillingProvider]
ACCOUNT = "acct_northwind"
ENTRY = r"/credits/ledger_entry$"


@pytest_asyncio.fixture
async def env() -> AsyncIterator[Env]:
    """A fresh Orb sandbox server on loopback and the Orb client pointed at it."""
    shared = world()
    router = OrbSandboxServer(shared, api_key=KEYS["orb"])
    async with serving(router) as server:
        client = OrbBillingProvider(
            KEYS["orb"], base_url=server.url + "/v1", policy=WRITE_POLICY, clock=lambda: shared.now
        )
        try:
            yield WriteEnv(shared, router, server, client)
        finally:
            await client.aclose()


async def customer_of(env: Env, account: str = ACCOUNT) -> CustomerRecord:
    """The account's Orb customer, as lookup finds it."""
    [record] = await env.client.find_customers(IdentifierKind.ACCOUNT_ID, account)
    return record


def entries_for(env: Env, request_id: str) -> list[dict[str, Any]]:
    """The ledger entries Orb holds for one request (its own records)."""
    return [
        e
        for entries in env.router._new_entries.values()
        for e in entries
        if e["metadata"].get("request_id") == request_id
    ]


async def credit(
    env: Env, request_id: str, amount: str = "25.50", *, record: CustomerRecord | None = None
) -> Any:
    """Grant a credit through the client as the approval flow would."""
    return await env.client.grant_credit(
        customer=record or await customer_of(env),
        amount=Money(Decimal(amount)),
        request_id=request_id,
        idempotency_key=f"bt:{request_id}:credit",
        description="Goodwill credit for the outage",
    )


async def test_increment_adds_a_block_and_a_ledger_entry(env: Env) -> None:
    """A credit is a committed increment in the customer's currency: it shows in the ledger,
    as a credit block, and in the status snapshot's balances."""
    result = await credit(env, "C-1")
    assert isinstance(env.client, BillingWriter)
    assert result.provider == "orb" and result.kind == "credit" and result.status == "committed"
    assert result.amount == Money(Decimal("25.50")) and result.request_id == "C-1"
    [posted] = env.posts(ENTRY)
    assert posted.headers["idempotency-key"] == "bt:C-1:credit"
    body = json.loads(posted.body)
    assert body == {
        "entry_type": "increment", "amount": 25.5, "currency": "USD",
        "description": "Goodwill credit for the outage", "metadata": {"request_id": "C-1"},
    }  # fmt: skip
    snapshot = await env.client.get_snapshot(await customer_of(env))
    assert Money(Decimal("25.50")) in [b.remaining for b in snapshot.balances]


async def test_same_key_replays_with_idempotent_replayed(env: Env) -> None:
    """The same key and payload gets the first entry back (`Idempotent-Replayed: true`)."""
    first = await credit(env, "C-2")
    again = await credit(env, "C-2")
    assert again.replayed and again.object_id == first.object_id
    assert len(entries_for(env, "C-2")) == 1


async def test_same_key_other_amount_is_a_conflict(env: Env) -> None:
    """The same key with another payload is Orb's 409 resource_conflict: a conflict."""
    await credit(env, "C-3", "10")
    with pytest.raises(ProviderIdempotencyConflict, match="different request payload"):
        await credit(env, "C-3", "11")
    assert len(entries_for(env, "C-3")) == 1


@pytest.mark.parametrize("kind", ["drop", "hang", "status", "malformed"])
async def test_lost_answer_is_unknown_then_the_same_key_returns_the_entry(
    env: Env, kind: Any
) -> None:
    """Orb added the credit but every answer was lost: unknown, then the retry with the same key
    returns the one entry."""
    env.server.fail_after(kind, path=ENTRY, times=None)
    with pytest.raises(ProviderOutcomeUnknown):
        await credit(env, "C-4")
    assert len(entries_for(env, "C-4")) == 1
    env.server.clear_faults()
    again = await credit(env, "C-4")
    assert again.replayed and len(entries_for(env, "C-4")) == 1
    assert set(env.keys_seen(ENTRY)) == {"bt:C-4:credit"}


async def test_5xx_before_is_unknown_and_the_retry_credits_once(env: Env) -> None:
    """5xx (even marked `Transient-Error`) is unknown when it persists; the retry credits once."""
    env.server.fail(500, path=ENTRY, times=None, headers={"Transient-Error": "true"})
    with pytest.raises(ProviderOutcomeUnknown):
        await credit(env, "C-5")
    assert entries_for(env, "C-5") == []
    env.server.clear_faults()
    await credit(env, "C-5")
    assert len(entries_for(env, "C-5")) == 1


async def test_409_in_flight_is_retried_with_the_same_key(env: Env) -> None:
    """Orb's 409 "still in progress" is retried with the same key; persisting, it is unknown."""
    in_flight = (
        b'{"type": "https://docs.withorb.com/reference/error-responses#409-resource-conflict",'
        b' "status": 409, "title": "Resource conflict",'
        b' "detail": "A request with this Idempotency-Key is still in progress"}'
    )
    env.server.add_fault(Fault("status", status=409, body=in_flight, path=ENTRY, times=1))
    assert not (await credit(env, "C-6")).replayed
    assert env.keys_seen(ENTRY) == ["bt:C-6:credit"] * 2
    env.server.add_fault(Fault("status", status=409, body=in_flight, path=ENTRY, times=None))
    with pytest.raises(ProviderOutcomeUnknown, match="in flight"):
        await credit(env, "C-6b")


@pytest.mark.parametrize("retry_after", [None, "0"])
async def test_429_is_retried_with_the_same_key(env: Env, retry_after: str | None) -> None:
    """429s with or without Retry-After are retried, each attempt with the same key."""
    env.server.fail(429, path=ENTRY, times=2, retry_after=retry_after)
    await credit(env, "C-7")
    assert env.keys_seen(ENTRY) == ["bt:C-7:credit"] * 3
    assert len(entries_for(env, "C-7")) == 1


async def test_unknown_customer_and_wrong_currency(env: Env) -> None:
    """An unknown customer is Orb's 404; a credit in another currency, or for a customer with no
    invoicing currency, is refused with a reason before anything is sent."""
    record = await customer_of(env)
    ghost = CustomerRecord(provider="orb", customer_id="NoSuchOrbCust01", account_id=None,
                           currency="usd")  # fmt: skip
    with pytest.raises(ProviderNotFound, match="was not found"):
        await credit(env, "C-8", record=ghost)
    with pytest.raises(ProviderRequestError, match="invoiced in USD"):
        await env.client.grant_credit(
            customer=record, amount=Money(Decimal("5"), "eur"), request_id="C-8",
            idempotency_key="bt:C-8:credit", description="x",
        )  # fmt: skip
    no_currency = CustomerRecord(provider="orb", customer_id=record.customer_id,
                                 account_id=record.account_id)  # fmt: skip
    with pytest.raises(ProviderRequestError, match="no invoicing currency"):
        await credit(env, "C-8", record=no_currency)
    assert len(env.posts(ENTRY)) == 1  # only the ghost's


async def test_server_refuses_what_orb_refuses(env: Env) -> None:
    """The sandbox is no more forgiving than Orb: a currency other than the customer's is a
    constraint violation, unknown fields a validation error, long keys are refused."""
    record = await customer_of(env)
    http = env.client.http
    path = f"customers/{record.customer_id}/credits/ledger_entry"
    for body, pattern in (
        ({"entry_type": "increment", "amount": 5, "currency": "EUR"}, "does not match"),
        ({"entry_type": "increment", "amount": 5, "colour": "red"}, "extra fields"),
        ({"entry_type": "increment", "amount": -5}, "positive"),
        ({"entry_type": "decrement", "amount": 5}, "only `increment`"),
    ):
        with pytest.raises(ProviderRequestError, match=pattern):
            await http.send("POST", path, json_body=body, idempotency_key="bt:X:credit",
                            write=True)  # fmt: skip
    with pytest.raises(ProviderRequestError, match="64"):
        await http.send("POST", path, json_body={"entry_type": "increment", "amount": 1},
                        idempotency_key="k" * 65, write=True)  # fmt: skip
    assert entries_for(env, "X") == []


async def test_malformed_answer_is_unknown(env: Env) -> None:
    """An unreadable 2xx answer to a write is unknown, never failed."""
    env.server.fail_after("malformed", path=ENTRY, times=None)
    with pytest.raises(ProviderOutcomeUnknown, match="unreadable"):
        await credit(env, "C-9")


async def test_find_write_finds_the_entry_by_request_id(env: Env) -> None:
    """The reconciler finds an earlier increment by request ID in the paged ledger."""
    record = await customer_of(env)
    made = [await credit(env, f"C-10-{n}", "1") for n in range(3)]
    found = await env.client.find_write(customer=record, kind="credit", request_id="C-10-1")
    assert found is not None and found.replayed and found.object_id == made[1].object_id
    assert await env.client.find_write(customer=record, kind="credit", request_id="C-x") is None
    assert await env.client.find_write(customer=record, kind="refund", request_id="C-10-1") is None


async def test_orb_has_no_refunds(env: Env) -> None:
    """Refunds go through Stripe: Orb refuses them without calling Orb."""
    with pytest.raises(ProviderRequestError, match="refunds go through the Stripe payment"):
        await env.client.refund_payment(
            customer=await customer_of(env), payment_id="ch_1", amount=Money(Decimal("5")),
            request_id="R-1", idempotency_key="bt:R-1:refund",
        )  # fmt: skip
    assert env.posts(".") == []


async def test_writes_never_change_the_shared_world(env: Env) -> None:
    """Credits land in the server's overlay, never in the world's shared objects."""
    data = env.world.orb(ACCOUNT)
    assert data is not None
    before = copy.deepcopy((data.credit_blocks, data.ledger_entries))
    await credit(env, "C-11")
    assert (data.credit_blocks, data.ledger_entries) == before
