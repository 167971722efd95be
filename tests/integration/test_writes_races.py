"""Race-freedom of the sandbox servers' writes: 50 identical requests at once over loopback HTTP
make exactly one provider record, with the write delay on to widen the window; a naive
check-await-store fake fails the same test, so the test can tell."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from decimal import Decimal
from typing import Any

import httpx

from bot.domain.identifiers import IdentifierKind
from bot.domain.money import Money
from integrations.http import RetryPolicy
from integrations.sandbox.metronome_server import SANDBOX_CREDIT_PRODUCT_ID, MetronomeSandboxServer
from integrations.sandbox.orb_server import OrbSandboxServer
from integrations.sandbox.stripe_server import StripeSandboxServer
from integrations.sandbox.wire import WireRequest, WireResponse
from integrations.stripe import StripeBillingProvider
from tests.support.fakeserver import FakeProviderServer
from tests.support.providers import KEYS
from tests.support.writes import world

N = 50
DELAY = 0.05  # seconds between claiming a key and applying the write


async def fire(base: str, n: int, **request: Any) -> list[httpx.Response]:
    """`n` copies of one request at once, each on its own connection."""
    return await fire_all(base, [request] * n)


async def fire_all(base: str, requests: list[dict[str, Any]]) -> list[httpx.Response]:
    """All `requests` (httpx `request()` arguments) at once, each on its own connection."""
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10) as http:
        return list(await asyncio.gather(*(http.request(**r) for r in requests)))


def stripe_charge(account: str = "acct_initech") -> tuple[str, str, dict[str, Any]]:
    """(account, customer ID, a succeeded unrefunded charge) of a Stripe-billed account."""
    data = world().stripe(account)
    assert data is not None
    charge = next(
        c for c in data.charges if c["status"] == "succeeded" and not c["amount_refunded"]
    )
    return account, str(data.customer["id"]), charge


async def test_stripe_50_identical_refunds_make_one() -> None:
    """50 concurrent refunds with one key: one refund; the others 409 while it runs, or its
    replay."""
    _, _, charge = stripe_charge()
    router = StripeSandboxServer(world(), api_key=KEYS["stripe"], write_delay=DELAY)
    async with FakeProviderServer(router) as server:
        answers = await fire(
            server.url, N, method="POST", url="/v1/refunds",
            headers={"Authorization": f"Bearer {KEYS['stripe']}", "Idempotency-Key": "bt:R:refund"},
            data={"charge": charge["id"], "amount": "500", "metadata[request_id]": "R"},
        )  # fmt: skip
    statuses = Counter(a.status_code for a in answers)
    assert statuses[200] >= 1 and set(statuses) <= {200, 409}, statuses
    assert statuses[409] > 0, "the delay should make duplicates meet the first in flight"
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 409} == {
        "idempotency_key_in_use"
    }
    assert len({a.json()["id"] for a in answers if a.status_code == 200}) == 1
    made = [r for r in router.refunds.values() if r.get("metadata", {}).get("request_id") == "R"]
    assert len(made) == 1
    assert router.charges[charge["id"]]["amount_refunded"] == 500


async def test_stripe_50_refunds_with_different_keys_never_overdraw_a_charge() -> None:
    """50 concurrent refunds of the whole charge, each with its own key: exactly one succeeds;
    the rest are `charge_already_refunded`."""
    _, _, charge = stripe_charge("acct_hooli")
    router = StripeSandboxServer(world(), api_key=KEYS["stripe"], write_delay=DELAY)
    auth = {"Authorization": f"Bearer {KEYS['stripe']}"}
    async with FakeProviderServer(router) as server:
        answers = await fire_all(server.url, [
            {"method": "POST", "url": "/v1/refunds",
             "headers": {**auth, "Idempotency-Key": f"bt:R{n}:refund"},
             "data": {"charge": charge["id"], "amount": str(charge["amount"])}}
            for n in range(N)
        ])  # fmt: skip
    assert Counter(a.status_code for a in answers) == {200: 1, 400: N - 1}
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 400} == {
        "charge_already_refunded"
    }
    assert router.charges[charge["id"]]["amount_refunded"] == charge["amount"]


async def test_stripe_client_calls_racing_with_one_key_all_get_the_one_refund() -> None:
    """Twenty approval workers calling the client at once with one key all end with the same
    refund: the in-flight 409s are retried with the key until the answer replays."""
    account, _, charge = stripe_charge("acct_soylent")
    router = StripeSandboxServer(world(), api_key=KEYS["stripe"], write_delay=DELAY)
    patient = RetryPolicy(max_attempts=30, backoff_base=0.02, backoff_max=0.05, deadline=10)
    async with FakeProviderServer(router) as server:
        client = StripeBillingProvider(KEYS["stripe"], base_url=server.url, policy=patient)
        try:
            [customer] = await client.find_customers(IdentifierKind.ACCOUNT_ID, account)
            results = await asyncio.gather(*(
                client.refund_payment(customer=customer, payment_id=charge["id"],
                                      amount=Money(Decimal("7.00")), request_id="R-race",
                                      idempotency_key="bt:R-race:refund")
                for _ in range(20)
            ))  # fmt: skip
        finally:
            await client.aclose()
    assert len({r.object_id for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    assert router.charges[charge["id"]]["amount_refunded"] == 700


async def test_orb_50_identical_increments_make_one() -> None:
    """50 concurrent increments with one key: one ledger entry; the others 409 "in progress" or
    the replay with `Idempotent-Replayed`."""
    shared = world()
    orb_id = next(a.orb_customer_id for a in shared.accounts if a.orb_customer_id)
    router = OrbSandboxServer(shared, api_key=KEYS["orb"], write_delay=DELAY)
    async with FakeProviderServer(router) as server:
        answers = await fire(
            server.url, N, method="POST", url=f"/v1/customers/{orb_id}/credits/ledger_entry",
            headers={"Authorization": f"Bearer {KEYS['orb']}", "Idempotency-Key": "bt:C:credit"},
            json={"entry_type": "increment", "amount": 10, "currency": "USD",
                  "metadata": {"request_id": "C"}},
        )  # fmt: skip
    statuses = Counter(a.status_code for a in answers)
    assert statuses[201] >= 1 and statuses[409] > 0 and set(statuses) <= {201, 409}, statuses
    assert all("in progress" in a.json()["detail"] for a in answers if a.status_code == 409)
    assert len({a.json()["id"] for a in answers if a.status_code == 201}) == 1
    assert sum(len(v) for v in router._new_entries.values()) == 1


async def test_metronome_50_identical_credits_make_one() -> None:
    """50 concurrent creates with one key: one credit; the duplicates wait for it and replay
    its answer."""
    shared = world()
    customer_id = next(a.metronome_customer_id for a in shared.accounts if a.metronome_customer_id)
    router = MetronomeSandboxServer(shared, api_key=KEYS["metronome"], write_delay=DELAY)
    body = credit_body(str(customer_id), "bt:C:credit")
    async with FakeProviderServer(router) as server:
        answers = await fire(
            server.url, N, method="POST", url="/v1/contracts/customerCredits/create",
            headers={"Authorization": f"Bearer {KEYS['metronome']}",
                     "Idempotency-Key": "bt:C:credit"},
            json=body,
        )  # fmt: skip
    assert {a.status_code for a in answers} == {200}
    assert len({a.json()["data"]["id"] for a in answers}) == 1
    assert sum(len(v) for v in router._credits.values()) == 1


async def test_metronome_uniqueness_key_holds_across_idempotency_keys() -> None:
    """50 concurrent creates with one uniqueness_key but different Idempotency-Keys: one
    credit, every other answer Metronome's 409."""
    shared = world()
    customer_id = next(a.metronome_customer_id for a in shared.accounts if a.metronome_customer_id)
    router = MetronomeSandboxServer(shared, api_key=KEYS["metronome"], write_delay=DELAY)
    auth = {"Authorization": f"Bearer {KEYS['metronome']}"}
    async with FakeProviderServer(router) as server:
        answers = await fire_all(server.url, [
            {"method": "POST", "url": "/v1/contracts/customerCredits/create",
             "headers": {**auth, "Idempotency-Key": f"attempt-{n}"},
             "json": credit_body(str(customer_id), "bt:C:credit")}
            for n in range(N)
        ])  # fmt: skip
    assert Counter(a.status_code for a in answers) == {200: 1, 409: N - 1}
    assert {a.json()["message"] for a in answers if a.status_code == 409} == {
        "This uniqueness key has already been used"
    }
    assert sum(len(v) for v in router._credits.values()) == 1


def credit_body(customer_id: str, uniqueness_key: str) -> dict[str, Any]:
    """A customerCredits/create body for 10 USD on the sandbox's credit product."""
    return {
        "customer_id": customer_id, "product_id": SANDBOX_CREDIT_PRODUCT_ID, "priority": 1,
        "access_schedule": {"schedule_items": [{
            "amount": 1000, "starting_at": "2026-01-01T00:00:00Z",
            "ending_before": "2027-01-01T00:00:00Z"}]},
        "uniqueness_key": uniqueness_key,
    }  # fmt: skip


# --- the test can tell: a naive fake fails it -----------------------------------------------------


class NaiveIdempotentRouter:
    """What a careless fake does: look the key up, await the work, then store the answer."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.stored: dict[str, WireResponse] = {}
        self.created: list[str] = []

    async def handle(self, request: WireRequest) -> WireResponse:
        """Check, await, store: the window in which duplicates slip through."""
        key = request.headers.get("idempotency-key", "")
        if key in self.stored:
            return self.stored[key]
        await asyncio.sleep(self.delay)
        object_id = f"re_{len(self.created)}"
        self.created.append(object_id)
        answer = WireResponse.of_json({"id": object_id})
        self.stored[key] = answer
        return answer


async def test_a_naive_check_await_store_fake_would_fail_this_test() -> None:
    """Fired the same 50 identical requests, a check-await-store fake makes many objects,
    so the race tests above would catch a server with that bug."""
    router = NaiveIdempotentRouter(DELAY)
    async with FakeProviderServer(router) as server:
        answers = await fire(
            server.url, N, method="POST", url="/v1/refunds",
            headers={"Idempotency-Key": "bt:R:refund"}, content=b"charge=ch_1",
        )  # fmt: skip
    assert {a.status_code for a in answers} == {200}
    assert len(router.created) > 1
    assert len({json.loads(a.content)["id"] for a in answers}) > 1
