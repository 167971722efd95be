"""The sandbox servers' write endpoints speak the providers' real wire format: the official SDKs
(`stripe`, `orb-billing`, `metronome-sdk`; strict response validation, no retries) create,
replay and list refunds and credits against them, and the served bodies validate against the
Orb and Metronome OpenAPI specs and the Stripe SDK's classes (notes/providers.md §8.2)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from functools import cache
from typing import Any
from urllib.parse import quote

import httpx
import metronome
import orb
import pytest
import pytest_asyncio
import stripe
from metronome.types.shared import Credit
from openapi_schema_validator import OAS30Validator, OAS31Validator, oas30_format_checker
from orb.types.customers.credits import IncrementLedgerEntry
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from integrations.sandbox.metronome_server import SANDBOX_CREDIT_PRODUCT_ID, MetronomeSandboxServer
from integrations.sandbox.orb_server import OrbSandboxServer
from integrations.sandbox.stripe_server import StripeSandboxServer
from tests.integration import test_metronome_contract as metronome_contract
from tests.integration import test_orb_contract as orb_contract
from tests.integration.test_stripe_contract import assert_sdk_shape
from tests.support.fakeserver import FakeProviderServer
from tests.support.providers import KEYS
from tests.support.writes import world

# The SDK's HTTPXClient hands httpx its form body as `data=<str>`, which httpx deprecates; that is
# the SDK's business, not a failure of the server under test.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Use 'content=<...>' to upload raw bytes/text content.:DeprecationWarning"
)


# --- Stripe ---------------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def stripe_sdk() -> AsyncIterator[tuple[stripe.StripeClient, StripeSandboxServer]]:
    """Stripe's SDK, async over httpx, against a fresh Stripe sandbox server."""
    router = StripeSandboxServer(world(), api_key=KEYS["stripe"])
    async with FakeProviderServer(router) as server:
        http = stripe.HTTPXClient()
        client = stripe.StripeClient(
            KEYS["stripe"], base_addresses={"api": server.url}, http_client=http
        )
        yield client, router
        await http.close_async()


def _stripe_charge(account: str = "acct_initech") -> dict[str, Any]:
    data = world().stripe(account)
    assert data is not None
    return next(c for c in data.charges if c["status"] == "succeeded" and not c["amount_refunded"])


async def test_stripe_sdk_creates_replays_and_lists_refunds(
    stripe_sdk: tuple[stripe.StripeClient, StripeSandboxServer],
) -> None:
    """`refunds.create` answers a complete `Refund`; the same key replays it; other parameters
    are the SDK's IdempotencyError; the refund lists by charge and by intent."""
    client, _ = stripe_sdk
    charge = _stripe_charge()
    params: Any = {"charge": charge["id"], "amount": 500, "reason": "requested_by_customer",
                   "metadata": {"request_id": "R-1"}}  # fmt: skip
    made = await client.v1.refunds.create_async(params, {"idempotency_key": "bt:R-1:refund"})
    assert isinstance(made, stripe.Refund) and made.amount == 500 and made.status == "succeeded"
    assert made.metadata is not None and made.metadata["request_id"] == "R-1"
    assert_sdk_shape(made)
    again = await client.v1.refunds.create_async(params, {"idempotency_key": "bt:R-1:refund"})
    assert again.id == made.id and again.last_response is not None
    assert again.last_response.headers.get("idempotent-replayed") == "true"
    with pytest.raises(stripe.IdempotencyError):
        await client.v1.refunds.create_async(
            {**params, "amount": 501}, {"idempotency_key": "bt:R-1:refund"}
        )
    by_charge = await client.v1.refunds.list_async({"charge": charge["id"]})
    assert [r.id for r in by_charge.data] == [made.id]
    assert_sdk_shape(by_charge)
    by_intent = await client.v1.refunds.list_async({"payment_intent": charge["payment_intent"]})
    assert [r.id for r in by_intent.data] == [made.id]
    charged = await client.v1.charges.retrieve_async(charge["id"], {"expand": ["refunds"]})
    assert charged.amount_refunded == 500 and not charged.refunded
    assert charged.refunds is not None and [r.id for r in charged.refunds.data] == [made.id]
    assert_sdk_shape(charged)


async def test_stripe_sdk_sees_stripes_refund_errors(
    stripe_sdk: tuple[stripe.StripeClient, StripeSandboxServer],
) -> None:
    """Too large, already refunded and unknown charges raise the SDK's InvalidRequestError with
    Stripe's codes."""
    client, _ = stripe_sdk
    charge = _stripe_charge("acct_hooli")
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await client.v1.refunds.create_async(
            {"charge": charge["id"], "amount": charge["amount"] + 1}
        )
    assert caught.value.code == "amount_too_large" and caught.value.param == "amount"
    await client.v1.refunds.create_async({"charge": charge["id"]})  # everything that is left
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await client.v1.refunds.create_async({"charge": charge["id"], "amount": 1})
    assert caught.value.code == "charge_already_refunded"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await client.v1.refunds.create_async({"charge": "ch_3NoSuchCharge0000000000"})
    assert caught.value.http_status == 404 and caught.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await client.v1.refunds.create_async({"charge": charge["id"], "reason": "bored"})
    assert caught.value.param == "reason"


async def test_stripe_sdk_balance_transactions_and_payment_intents(
    stripe_sdk: tuple[stripe.StripeClient, StripeSandboxServer],
) -> None:
    """Balance transactions create and list as `CustomerBalanceTransaction`s and move the
    balance; a payment intent retrieves with its latest charge expanded."""
    client, _ = stripe_sdk
    data = world().stripe("acct_initech")
    assert data is not None
    cid = str(data.customer["id"])
    before = (await client.v1.customers.retrieve_async(cid)).balance
    txn = await client.v1.customers.balance_transactions.create_async(
        cid, {"amount": -2500, "currency": "usd", "description": "Goodwill",
              "metadata": {"request_id": "C-1"}}, {"idempotency_key": "bt:C-1:credit"},
    )  # fmt: skip
    assert (
        isinstance(txn, stripe.CustomerBalanceTransaction) and txn.ending_balance == before - 2500
    )
    assert_sdk_shape(txn)
    listed = await client.v1.customers.balance_transactions.list_async(cid)
    assert txn.id in [t.id for t in listed.data]
    assert_sdk_shape(listed)
    assert (await client.v1.customers.retrieve_async(cid)).balance == before - 2500
    intent = await client.v1.payment_intents.retrieve_async(
        str(data.payment_intents[0]["id"]), {"expand": ["latest_charge"]}
    )
    assert isinstance(intent, stripe.PaymentIntent)
    assert isinstance(intent.latest_charge, stripe.Charge)
    assert_sdk_shape(intent, tolerate=frozenset({"payment_method_details.card.network"}))


# --- Orb ------------------------------------------------------------------------------------------


def orb_validator(path: str, method: str, status: int) -> OAS31Validator:
    """The response schema of `method path` answering `status` in orb-openapi.json."""
    pointer = "/".join(
        p.replace("~", "~0").replace("/", "~1")
        for p in ("paths", path, method, "responses", str(status), "content", "application/json")
    )
    schema = {"$ref": f"{orb_contract.SPEC_URI}#/{quote(pointer)}/schema"}
    return OAS31Validator(schema, registry=orb_contract._registry())


def check_orb(path: str, method: str, status: int, body: Any) -> None:
    """Every schema error of an Orb body, as one failure."""
    errors = sorted(orb_validator(path, method, status).iter_errors(body), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message[:200]}" for e in errors)


@pytest_asyncio.fixture
async def orb_served() -> AsyncIterator[tuple[str, str]]:
    """(server URL, an Orb customer ID) of a fresh Orb sandbox server."""
    shared = world()
    cid = next(a.orb_customer_id for a in shared.accounts if a.orb_customer_id)
    async with FakeProviderServer(OrbSandboxServer(shared, api_key=KEYS["orb"])) as server:
        yield server.url, str(cid)


@pytest.mark.skipif(not orb_contract.SPEC_PATH.exists(), reason="Orb spec missing")
async def test_orb_sdk_creates_and_lists_ledger_entries(orb_served: tuple[str, str]) -> None:
    """`credits.ledger.create_entry` answers an `IncrementLedgerEntry` (strict), replays the
    same key, is ResourceConflict for another payload; the entry lists in the ledger and the
    block in the credits."""
    url, cid = orb_served
    sdk = orb.AsyncOrb(api_key=KEYS["orb"], base_url=url + "/v1",
                       _strict_response_validation=True, max_retries=0)  # fmt: skip
    try:
        entry = await sdk.customers.credits.ledger.create_entry(
            cid, entry_type="increment", amount=25.5, currency="USD",
            description="Goodwill", metadata={"request_id": "C-1"}, idempotency_key="bt:C-1:credit",
        )  # fmt: skip
        assert isinstance(entry, IncrementLedgerEntry) and entry.amount == 25.5
        raw = await sdk.customers.credits.ledger.with_raw_response.create_entry(
            cid, entry_type="increment", amount=25.5, currency="USD",
            description="Goodwill", metadata={"request_id": "C-1"}, idempotency_key="bt:C-1:credit",
        )  # fmt: skip
        assert raw.status_code == 201 and raw.headers["idempotent-replayed"] == "true"
        assert raw.headers["idempotency-key"] == "bt:C-1:credit"
        assert raw.parse().id == entry.id
        with pytest.raises(orb.ConflictError):
            await sdk.customers.credits.ledger.create_entry(
                cid, entry_type="increment", amount=26, currency="USD",
                idempotency_key="bt:C-1:credit",
            )  # fmt: skip
        ledger = [e async for e in sdk.customers.credits.ledger.list(cid, limit=1)]
        assert entry.id in [e.id for e in ledger]
        blocks = [b async for b in sdk.customers.credits.list(cid, currency="USD")]
        assert entry.credit_block.id in [b.id for b in blocks]
    finally:
        await sdk.close()


@pytest.mark.skipif(not orb_contract.SPEC_PATH.exists(), reason="Orb spec missing")
async def test_orb_write_bodies_match_the_openapi_spec(orb_served: tuple[str, str]) -> None:
    """The 201 entry, the ledger page, the credits page and the 409/400 errors fit the spec."""
    url, cid = orb_served
    auth = {"Authorization": f"Bearer {KEYS['orb']}"}
    async with httpx.AsyncClient(base_url=url + "/v1", headers=auth) as http:
        body = {"entry_type": "increment", "amount": 10, "currency": "USD",
                "metadata": {"request_id": "C-2"}}  # fmt: skip
        made = await http.post(f"/customers/{cid}/credits/ledger_entry", json=body,
                               headers={"Idempotency-Key": "bt:C-2:credit"})  # fmt: skip
        assert made.status_code == 201
        check_orb("/customers/{customer_id}/credits/ledger_entry", "post", 201, made.json())
        IncrementLedgerEntry.model_validate_json(made.content, strict=True)
        conflict = await http.post(f"/customers/{cid}/credits/ledger_entry",
                                   json={**body, "amount": 11},
                                   headers={"Idempotency-Key": "bt:C-2:credit"})  # fmt: skip
        assert conflict.status_code == 409
        check_orb("/customers/{customer_id}/credits/ledger_entry", "post", 409, conflict.json())
        bad = await http.post(f"/customers/{cid}/credits/ledger_entry",
                              json={"entry_type": "increment"})  # fmt: skip
        assert bad.status_code == 400
        check_orb("/customers/{customer_id}/credits/ledger_entry", "post", 400, bad.json())
        ledger = await http.get(f"/customers/{cid}/credits/ledger", params={"limit": 100})
        check_orb("/customers/{customer_id}/credits/ledger", "get", 200, ledger.json())
        credits = await http.get(f"/customers/{cid}/credits", params={"currency": "USD"})
        check_orb("/customers/{customer_id}/credits", "get", 200, credits.json())
        assert made.json()["credit_block"]["id"] in [b["id"] for b in credits.json()["data"]]


# --- Metronome ------------------------------------------------------------------------------------


@cache
def metronome_spec() -> dict[str, Any]:
    """Metronome's spec with the contradicting `$ref` siblings dropped (see its contract test)."""
    return metronome_contract._ref_siblings_ignored(  # type: ignore[no-any-return]
        json.loads(metronome_contract.SPEC_PATH.read_text())
    )


def check_metronome(template: str, status: int, body: Any) -> None:
    """Every schema error of a Metronome POST answer, as one failure."""
    registry: Registry[Any] = Registry().with_resource(
        metronome_contract.SPEC_URI,
        Resource.from_contents(metronome_spec(), default_specification=DRAFT4),
    )
    pointer = "/".join(["#", "paths", template.replace("/", "~1"), "post", "responses",
                        str(status), "content", "application~1json", "schema"])  # fmt: skip
    validator = OAS30Validator({"$ref": f"{metronome_contract.SPEC_URI}{pointer}"},
                               registry=registry, format_checker=oas30_format_checker)  # fmt: skip
    errors = sorted(validator.iter_errors(body), key=lambda e: str(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])


@pytest_asyncio.fixture
async def metronome_served() -> AsyncIterator[tuple[str, str]]:
    """(server URL, a Metronome customer ID) of a fresh Metronome sandbox server."""
    shared = world()
    cid = next(a.metronome_customer_id for a in shared.accounts if a.metronome_customer_id)
    router = MetronomeSandboxServer(shared, api_key=KEYS["metronome"])
    async with FakeProviderServer(router) as server:
        yield server.url, str(cid)


def _schedule() -> dict[str, Any]:
    start = world().now
    end = start + timedelta(days=365)
    return {"schedule_items": [{
        "amount": 4000, "starting_at": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ending_before": end.strftime("%Y-%m-%dT%H:%M:%SZ")}]}  # fmt: skip


@pytest.mark.skipif(not metronome_contract.SPEC_PATH.exists(), reason="Metronome spec missing")
async def test_metronome_sdk_creates_and_lists_credits(metronome_served: tuple[str, str]) -> None:
    """`customers.credits.create` answers `{data: {id}}`; a reused uniqueness_key is the SDK's
    ConflictError; the credit lists (strict `Credit`) and shows in the balances."""
    url, cid = metronome_served
    sdk = metronome.AsyncMetronome(bearer_token=KEYS["metronome"], base_url=url,
                                   _strict_response_validation=True, max_retries=0)  # fmt: skip
    try:
        made = await sdk.v1.customers.credits.create(
            customer_id=cid, product_id=SANDBOX_CREDIT_PRODUCT_ID, priority=1,
            access_schedule=_schedule(), name="Account credit",  # type: ignore[arg-type]
            uniqueness_key="bt:C-1:credit", extra_headers={"Idempotency-Key": "bt:C-1:credit"},
        )  # fmt: skip
        with pytest.raises(metronome.ConflictError, match="uniqueness key"):
            await sdk.v1.customers.credits.create(
                customer_id=cid, product_id=SANDBOX_CREDIT_PRODUCT_ID, priority=1,
                access_schedule=_schedule(), uniqueness_key="bt:C-1:credit",  # type: ignore[arg-type]
            )  # fmt: skip
        listed = [c async for c in sdk.v1.customers.credits.list(customer_id=cid)]
        [credit] = [c for c in listed if c.id == made.data.id]
        assert isinstance(credit, Credit) and credit.uniqueness_key == "bt:C-1:credit"
        balances = [
            b async for b in sdk.v1.contracts.list_balances(customer_id=cid, include_balance=True)
        ]
        assert [b.balance for b in balances if b.id == made.data.id] == [4000]
    finally:
        await sdk.close()


@pytest.mark.skipif(not metronome_contract.SPEC_PATH.exists(), reason="Metronome spec missing")
async def test_metronome_write_bodies_match_the_openapi_spec(
    metronome_served: tuple[str, str],
) -> None:
    """The create answer, the credits and balances pages and the error bodies fit the spec."""
    url, cid = metronome_served
    auth = {"Authorization": f"Bearer {KEYS['metronome']}"}
    body = {"customer_id": cid, "product_id": SANDBOX_CREDIT_PRODUCT_ID, "priority": 1,
            "access_schedule": _schedule(), "uniqueness_key": "bt:C-2:credit"}  # fmt: skip
    async with httpx.AsyncClient(base_url=url, headers=auth) as http:
        made = await http.post("/v1/contracts/customerCredits/create", json=body)
        assert made.status_code == 200
        check_metronome("/v1/contracts/customerCredits/create", 200, made.json())
        bad = await http.post("/v1/contracts/customerCredits/create",
                              json={**body, "product_id": "not-a-uuid"})  # fmt: skip
        assert bad.status_code == 400
        check_metronome("/v1/contracts/customerCredits/create", 400, bad.json())
        listed = await http.post("/v1/contracts/customerCredits/list",
                                 json={"customer_id": cid, "include_balance": True,
                                       "include_ledgers": True})  # fmt: skip
        check_metronome("/v1/contracts/customerCredits/list", 200, listed.json())
        for item in listed.json()["data"]:
            Credit.model_validate_json(json.dumps(item), strict=True)
        balances = await http.post("/v1/contracts/customerBalances/list",
                                   json={"customer_id": cid, "include_balance": True})  # fmt: skip
        check_metronome("/v1/contracts/customerBalances/list", 200, balances.json())
        assert made.json()["data"]["id"] in [b["id"] for b in balances.json()["data"]]
