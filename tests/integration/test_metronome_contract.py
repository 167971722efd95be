"""The Metronome sandbox server speaks Metronome's real wire format.

Three oracles (notes/providers.md §8.2): Metronome's own SDK (`metronome-sdk`, strict response
validation, no retries) drives every endpoint the client uses against the server, paging the way
the SDK pages; every served body validates against the operation's response schema in
metronome-openapi.json (OpenAPI 3.0, the whole spec in a `referencing.Registry`); and every served
object validates against the SDK's pydantic models in strict mode (no `"12.34"` for a number).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from typing import Any

import httpx
import metronome
import pytest
from metronome.types.shared import Commit, Contract, Credit
from metronome.types.v1 import CustomerDetail, UsageListResponse
from metronome.types.v1.customers import Invoice
from openapi_schema_validator import OAS30Validator, oas30_format_checker
from pydantic import BaseModel
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from integrations.sandbox.metronome_server import MetronomeSandboxServer
from integrations.sandbox.world import build_world
from tests.integration.test_metronome_client import ACME, API_KEY, BULK, build_fixture_world, uid
from tests.support.contracts import load_contract
from tests.support.fakeserver import FakeProviderServer

SPEC_URI = "urn:metronome-openapi"


@pytest.fixture(scope="module")
def spec() -> Mapping[str, Any]:
    """Metronome's OpenAPI spec, vendored in tests/contracts/."""
    return _ref_siblings_ignored(load_contract("metronome-openapi.json"))


def _ref_siblings_ignored(node: Any) -> Any:
    """OpenAPI 3.0 ignores keywords next to `$ref`; the validator does not. The spec has seven
    `type` siblings that contradict their target (Invoice `billable_status`: `type: object` next
    to a `$ref` to a string enum), so drop those. `nullable` siblings are kept: they say what the
    API really sends (`external_invoice: null`)."""
    if isinstance(node, dict):
        drop = {"type"} if "$ref" in node else set()
        return {k: _ref_siblings_ignored(v) for k, v in node.items() if k not in drop}
    if isinstance(node, list):
        return [_ref_siblings_ignored(v) for v in node]
    return node


@pytest.fixture
async def server() -> AsyncIterator[FakeProviderServer]:
    """The sandbox server with small usage pages, so the SDK's paging is exercised too."""
    router = MetronomeSandboxServer(build_fixture_world(), api_key=API_KEY, usage_page_size=50)
    async with FakeProviderServer(router) as fake:
        yield fake


@pytest.fixture
async def sdk(server: FakeProviderServer) -> AsyncIterator[metronome.AsyncMetronome]:
    """Metronome's async client, validating every response strictly, never retrying."""
    client = metronome.AsyncMetronome(
        bearer_token=API_KEY,
        base_url=server.url,
        _strict_response_validation=True,
        max_retries=0,
    )
    yield client
    await client.close()


# --- the SDK against the server -----------------------------------------------------------------


async def test_sdk_reads_customers(sdk: metronome.AsyncMetronome) -> None:
    """The SDK retrieves a customer and lists customers by ingest alias."""
    detail = await sdk.v1.customers.retrieve(customer_id=ACME)
    assert detail.data.id == ACME and detail.data.name == "Acme Corp"
    found = [c async for c in sdk.v1.customers.list(ingest_alias="acct_acme", limit=100)]
    assert [c.id for c in found] == [ACME]
    everyone = [c async for c in sdk.v1.customers.list(limit=1)]  # pages through next_page
    assert sorted(c.id for c in everyone) == sorted([ACME, BULK])


async def test_sdk_reads_invoices(sdk: metronome.AsyncMetronome) -> None:
    """The SDK lists invoices (query cursor) and retrieves one with its line items."""
    invoices = [
        inv
        async for inv in sdk.v1.customers.invoices.list(
            customer_id=BULK, limit=100, starting_on="2024-05-11T00:00:00Z", sort="date_desc"
        )
    ]
    assert len(invoices) == 130
    acme = [inv async for inv in sdk.v1.customers.invoices.list(customer_id=ACME)]
    assert {inv.status for inv in acme} == {"FINALIZED", "VOID", "DRAFT"}
    one = await sdk.v1.customers.invoices.retrieve(customer_id=ACME, invoice_id=acme[0].id)
    assert one.data.line_items and one.data.id == acme[0].id


async def test_sdk_reads_contracts(sdk: metronome.AsyncMetronome) -> None:
    """The SDK lists contracts, following the body `cursor` past 20."""
    contracts = [c async for c in sdk.v1.contracts.list(customer_id=BULK)]
    assert len(contracts) == 22
    acme = [c async for c in sdk.v1.contracts.list(customer_id=ACME)]
    assert {c.current.name for c in acme} == {"Acme Enterprise 2025", "Acme Starter"}


async def test_sdk_reads_balances(sdk: metronome.AsyncMetronome) -> None:
    """The SDK lists commit and credit balances, its cursor going back in the JSON body."""
    balances = [
        b async for b in sdk.v1.contracts.list_balances(customer_id=BULK, include_balance=True)
    ]
    assert len(balances) == 30 and all(b.balance is not None for b in balances)
    acme = [b async for b in sdk.v1.contracts.list_balances(customer_id=ACME)]
    assert {type(b).__name__ for b in acme} == {"Commit", "Credit"}
    assert all(b.balance is None for b in acme)  # only with include_balance


async def test_sdk_reads_usage(sdk: metronome.AsyncMetronome) -> None:
    """The SDK reads daily usage, its cursor going back in the query string."""
    usage = [
        u
        async for u in sdk.v1.usage.list(
            starting_on="2025-05-12T00:00:00Z",
            ending_before="2025-06-16T00:00:00Z",
            window_size="DAY",
            customer_ids=[BULK],
        )
    ]
    assert len(usage) == 105
    assert {u.billable_metric_name for u in usage} == {"Requests", "Storage", "Egress"}


async def test_sdk_sees_metronome_errors(sdk: metronome.AsyncMetronome) -> None:
    """Unknown customers are the SDK's NotFoundError, bad tokens its AuthenticationError."""
    with pytest.raises(metronome.NotFoundError):
        await sdk.v1.customers.retrieve(customer_id=uid("nobody"))
    with pytest.raises(metronome.BadRequestError):
        await sdk.v1.customers.retrieve(customer_id="not-a-uuid")
    wrong = sdk.with_options(bearer_token="wrong")
    with pytest.raises(metronome.AuthenticationError):
        await wrong.v1.customers.retrieve(customer_id=ACME)


# --- served bodies against the OpenAPI spec and the SDK's strict models --------------------------

#: (method, path template, how to call it) for every endpoint the client uses.
CALLS: list[tuple[str, str, dict[str, Any]]] = [
    ("get", "/v1/customers/{customer_id}", {"path": f"/v1/customers/{ACME}"}),
    ("get", "/v1/customers", {"path": "/v1/customers", "params": {"ingest_alias": "acct_acme"}}),
    ("get", "/v1/customers/{customer_id}/invoices",
     {"path": f"/v1/customers/{ACME}/invoices", "params": {"limit": 100, "sort": "date_desc"}}),
    ("get", "/v1/customers/{customer_id}/invoices",
     {"path": f"/v1/customers/{BULK}/invoices", "params": {"limit": 5}}),
    ("post", "/v1/contracts/list", {"path": "/v1/contracts/list", "json": {"customer_id": ACME}}),
    ("post", "/v1/contracts/customerBalances/list",
     {"path": "/v1/contracts/customerBalances/list",
      "json": {"customer_id": ACME, "include_balance": True, "include_ledgers": True}}),
    ("post", "/v1/usage",
     {"path": "/v1/usage", "json": {"starting_on": "2025-05-12T00:00:00Z",
                                    "ending_before": "2025-06-16T00:00:00Z",
                                    "window_size": "DAY", "customer_ids": [ACME]}}),
]  # fmt: skip

#: The SDK model each endpoint's items (or wrapped object) must satisfy in strict mode.
MODELS: dict[str, tuple[type[BaseModel], ...]] = {
    "/v1/customers/{customer_id}": (CustomerDetail,),
    "/v1/customers": (CustomerDetail,),
    "/v1/customers/{customer_id}/invoices": (Invoice,),
    "/v1/contracts/list": (Contract,),
    "/v1/contracts/customerBalances/list": (Commit, Credit),
    "/v1/usage": (UsageListResponse,),
}


def response_validator(spec: Mapping[str, Any], method: str, template: str) -> OAS30Validator:
    """A validator for the operation's 200 JSON schema, resolving `$ref`s into the whole spec."""
    registry: Registry[Any] = Registry().with_resource(
        SPEC_URI, Resource.from_contents(dict(spec), default_specification=DRAFT4)
    )
    pointer = "/".join(
        ["#", "paths", template.replace("/", "~1"), method, "responses", "200", "content",
         "application~1json", "schema"]
    )  # fmt: skip
    return OAS30Validator(
        {"$ref": f"{SPEC_URI}{pointer}"}, registry=registry, format_checker=oas30_format_checker
    )


def check_body(spec: Mapping[str, Any], method: str, template: str, body: Any) -> None:
    """Fail unless `body` fits the operation's OpenAPI response schema and its items fit the SDK's
    models in strict mode."""
    errors = sorted(
        response_validator(spec, method, template).iter_errors(body), key=lambda e: e.path
    )
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])
    items = body["data"] if isinstance(body["data"], list) else [body["data"]]
    models = MODELS[template]
    for item in items:
        raw = json.dumps(item)
        failures = []
        for model in models:
            try:
                model.model_validate_json(raw, strict=True)
                break
            except ValueError as exc:
                failures.append(f"{model.__name__}: {exc}")
        else:
            pytest.fail("\n".join(failures))


@pytest.mark.parametrize(("method", "template", "call"), CALLS, ids=[c[1] for c in CALLS])
async def test_served_bodies_match_the_openapi_spec_and_sdk_models(
    server: FakeProviderServer,
    spec: Mapping[str, Any],
    method: str,
    template: str,
    call: dict[str, Any],
) -> None:
    """Each endpoint's body fits Metronome's published response schema and the SDK's models."""
    async with httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}
    ) as http:
        response = await http.request(
            method.upper(), call["path"], params=call.get("params"), json=call.get("json")
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["data"], "the fixture world should give every endpoint something to serve"
    check_body(spec, method, template, body)


async def test_the_sandbox_worlds_metronome_accounts_are_served_in_metronome_format(
    spec: Mapping[str, Any],
) -> None:
    """The sandbox world's Metronome accounts fit the spec and the SDK's strict models."""
    world = build_world(ordinary_accounts=20)
    accounts = [a for a in world.accounts if a.metronome_customer_id]
    router = MetronomeSandboxServer(world, api_key=API_KEY, usage_page_size=200)
    async with FakeProviderServer(router) as fake:
        async with httpx.AsyncClient(
            base_url=fake.url, headers={"Authorization": f"Bearer {API_KEY}"}
        ) as http:
            for account in accounts:
                cid = account.metronome_customer_id
                day = world.now.strftime("%Y-%m-%dT00:00:00Z")
                month_ago = (world.now - timedelta(days=35)).strftime("%Y-%m-%dT00:00:00Z")
                calls = [
                    ("get", "/v1/customers/{customer_id}", f"/v1/customers/{cid}", {}, None),
                    ("get", "/v1/customers", "/v1/customers",
                     {"ingest_alias": account.account_id}, None),
                    ("get", "/v1/customers/{customer_id}/invoices",
                     f"/v1/customers/{cid}/invoices", {"limit": 100}, None),
                    ("post", "/v1/contracts/list", "/v1/contracts/list", {},
                     {"customer_id": cid}),
                    ("post", "/v1/contracts/customerBalances/list",
                     "/v1/contracts/customerBalances/list", {},
                     {"customer_id": cid, "include_balance": True, "include_ledgers": True}),
                    ("post", "/v1/usage", "/v1/usage", {},
                     {"starting_on": month_ago, "ending_before": day, "window_size": "DAY",
                      "customer_ids": [cid]}),
                ]  # fmt: skip
                for method, template, path, params, body in calls:
                    response = await http.request(method.upper(), path, params=params, json=body)
                    assert response.status_code == 200, (account.account_id, response.text)
                    check_body(spec, method, template, response.json())

        sdk = metronome.AsyncMetronome(
            bearer_token=API_KEY, base_url=fake.url, _strict_response_validation=True,
            max_retries=0,
        )  # fmt: skip
        try:
            for account in accounts:
                cid = str(account.metronome_customer_id)
                invoices = [i async for i in sdk.v1.customers.invoices.list(customer_id=cid)]
                contracts = [c async for c in sdk.v1.contracts.list(customer_id=cid)]
                balances = [b async for b in sdk.v1.contracts.list_balances(customer_id=cid)]
                assert invoices and contracts
                assert all(b.id for b in balances)
        finally:
            await sdk.close()
