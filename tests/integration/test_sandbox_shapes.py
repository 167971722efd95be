"""Sandbox objects checked against what the providers wrote: the Orb and Metronome SDK models in
strict JSON mode and their OpenAPI component schemas, and the Stripe SDK's class annotations and
sample objects."""

from __future__ import annotations

import json
import typing
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import metronome.types.shared as metronome_shared
import metronome.types.v1 as metronome_v1
import metronome.types.v1.customers as metronome_customers
import orb.types as orb_types
import orb.types.customers as orb_customers
import orb.types.customers.credits as orb_credits
import pytest
import stripe
from openapi_schema_validator import (
    OAS30Validator,
    OAS31Validator,
    oas30_format_checker,
    oas31_format_checker,
)
from pydantic import BaseModel, TypeAdapter
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4, DRAFT202012
from stripe._list_object import ListObject
from stripe._stripe_object import StripeObject

from integrations.sandbox.world import SandboxAccount, SandboxWorld, build_world
from tests.support.contracts import load_contract

NOW = datetime(2026, 3, 15, tzinfo=UTC)
Obj = dict[str, Any]


@pytest.fixture(scope="module")
def world() -> SandboxWorld:
    """The sandbox world these checks read."""
    return build_world(seed=7, now=NOW)


@pytest.fixture(scope="module")
def sample(world: SandboxWorld) -> list[SandboxAccount]:
    """Every story account and every 15th ordinary account."""
    ordinary = [a for a in world.accounts if a.story is None]
    return [a for a in world.accounts if a.story is not None] + ordinary[::15]


def _strict(model: Any, obj: Any) -> None:
    """Validate like the SDK would parse the wire body, but strictly (no coercion)."""
    body = json.dumps(obj)
    if isinstance(model, type) and issubclass(model, BaseModel):
        model.model_validate_json(body, strict=True)
    else:
        TypeAdapter(model).validate_json(body, strict=True)


class SpecCheck:
    """Validates objects against one OpenAPI document's component schemas."""

    def __init__(self, spec: Obj, uri: str, *, oas31: bool) -> None:
        draft = DRAFT202012 if oas31 else DRAFT4
        self.registry: Registry[Any] = Registry().with_resource(
            uri, Resource.from_contents(spec, default_specification=draft)
        )
        self.uri = uri
        self.oas31 = oas31

    def errors(self, schema: str, obj: Any) -> list[str]:
        """Every validation error of `obj` against `#/components/schemas/<schema>`."""
        ref = {"$ref": f"{self.uri}#/components/schemas/{schema}"}
        if self.oas31:
            validator: Any = OAS31Validator(
                ref, registry=self.registry, format_checker=oas31_format_checker
            )
        else:
            validator = OAS30Validator(
                ref, registry=self.registry, format_checker=oas30_format_checker
            )
        return [
            f"{schema} {list(e.absolute_path)}: {e.message[:300]}"
            for e in validator.iter_errors(obj)
        ]


@pytest.fixture(scope="module")
def orb_spec() -> SpecCheck:
    """Orb's OpenAPI 3.1 document, read in place."""
    spec = load_contract("orb-openapi.json")
    # The spec's invoice `discount` is oneOf[DEPRECATED_InvoiceLevelDiscount, null] where the
    # deprecated schema is `{}`, so null matches both branches and no value could ever be null;
    # Orb sends null when there is no discount. anyOf is what the spec means.
    discount = spec["components"]["schemas"]["Invoice"]["properties"]["discount"]
    discount["anyOf"] = discount.pop("oneOf")
    return SpecCheck(spec, "urn:spec:orb", oas31=True)


@pytest.fixture(scope="module")
def metronome_spec() -> SpecCheck:
    """Metronome's OpenAPI 3.0 document, read in place."""
    spec = load_contract("metronome-openapi.json")
    return SpecCheck(spec, "urn:spec:metronome", oas31=False)


def _invoices_to_check(acct: SandboxAccount, invoices: list[Obj]) -> list[Obj]:
    """All invoices of story accounts; the newest three and the oldest of the others."""
    return invoices if acct.story else [*invoices[:3], invoices[-1]]


# --- Orb ---------------------------------------------------------------------------------------


def test_orb_objects_match_the_sdk_models_and_the_spec(
    world: SandboxWorld, sample: list[SandboxAccount], orb_spec: SpecCheck
) -> None:
    """Orb customers, subscriptions, invoices, costs, credit blocks and ledger entries parse with
    orb-billing's models in strict mode and validate against Orb's OpenAPI schemas."""
    errors: list[str] = []
    checked = 0
    for acct in sample:
        data = world.orb(acct.account_id)
        if data is None:
            continue
        checked += 1
        pairs: list[tuple[Any, str, Any]] = [(orb_types.Customer, "Customer", data.customer)]
        pairs += [(orb_types.Subscription, "Subscription", s) for s in data.subscriptions]
        pairs += [
            (orb_types.Invoice, "Invoice", inv) for inv in _invoices_to_check(acct, data.invoices)
        ]
        costs = {"data": [*data.costs[:2], *data.costs[-7:]]}
        pairs.append((orb_customers.CostListResponse, "CustomerCosts", costs))
        pairs += [
            (orb_customers.CreditListResponse, "CustomerCreditBalance", b)
            for b in data.credit_blocks
        ]
        pairs += [
            (orb_credits.LedgerListResponse, "CreditLedgerEntry", e) for e in data.ledger_entries
        ]
        for model, schema, obj in pairs:
            try:
                _strict(model, obj)
            except Exception as exc:  # collect every failure, not only the first
                errors.append(f"{acct.account_id} {schema} (SDK): {exc}"[:2000])
            errors += [f"{acct.account_id} {e}" for e in orb_spec.errors(schema, obj)]
    assert checked >= 5
    assert not errors, "\n".join(errors[:20])


def test_orb_money_is_decimal_strings_and_times_are_iso_8601(world: SandboxWorld) -> None:
    """Orb amounts are decimal strings with cents, currencies are ISO codes, times carry offsets."""
    data = world.orb("acct_northwind")
    assert data is not None
    inv = data.invoices[0]
    for key in ("amount_due", "subtotal", "total"):
        assert isinstance(inv[key], str) and inv[key].split(".")[1].isdigit()
    assert inv["currency"] == "USD"
    assert inv["invoice_date"].endswith("+00:00")
    for line in inv["line_items"]:
        assert isinstance(line["amount"], str) and isinstance(line["quantity"], float)


# --- Metronome -----------------------------------------------------------------------------------


def test_metronome_objects_match_the_sdk_models_and_the_spec(
    world: SandboxWorld, sample: list[SandboxAccount], metronome_spec: SpecCheck
) -> None:
    """Metronome customers, invoices, contracts, balances and usage parse with metronome-sdk's
    models in strict mode and validate against Metronome's OpenAPI schemas."""
    errors: list[str] = []
    checked = 0
    for acct in sample:
        data = world.metronome(acct.account_id)
        if data is None:
            continue
        checked += 1
        pairs: list[tuple[Any, str, Any]] = [
            (metronome_v1.CustomerDetail, "CustomerDetail", data.customer)
        ]
        pairs += [
            (metronome_customers.Invoice, "Invoice", inv)
            for inv in _invoices_to_check(acct, data.invoices)
        ]
        pairs += [(metronome_shared.Contract, "Contract", c) for c in data.contracts]
        for grant in data.balances:
            if grant["type"] == "CREDIT":
                pairs.append((metronome_shared.Credit, "Credit", grant))
            else:
                pairs.append((metronome_shared.Commit, "Commit", grant))
        pairs += [
            (metronome_v1.UsageListResponse, "UsageBatchAggregate", u)
            for u in [*data.usage[:3], *data.usage[-3:]]
        ]
        for model, schema, obj in pairs:
            try:
                _strict(model, obj)
            except Exception as exc:  # collect every failure, not only the first
                errors.append(f"{acct.account_id} {schema} (SDK): {exc}"[:2000])
            errors += [f"{acct.account_id} {e}" for e in metronome_spec.errors(schema, obj)]
    assert checked >= 4
    assert not errors, "\n".join(errors[:20])


def test_metronome_money_is_numbers_in_cents(world: SandboxWorld) -> None:
    """Metronome totals are JSON numbers in the USD (cents) credit type, times are RFC 3339."""
    data = world.metronome("acct_tyrell")
    assert data is not None
    inv = data.invoices[0]
    assert inv["credit_type"]["name"] == "USD (cents)"
    assert isinstance(inv["total"], int) and not isinstance(inv["total"], bool)
    assert all(isinstance(li["total"], int) for li in inv["line_items"])
    assert inv["start_timestamp"].endswith("Z")


# --- Stripe --------------------------------------------------------------------------------------

STRIPE_CLASSES: dict[str, type[Any]] = {
    "customer": stripe.Customer,
    "subscriptions": stripe.Subscription,
    "invoices": stripe.Invoice,
    "invoice_payments": stripe.InvoicePayment,
    "charges": stripe.Charge,
    "payment_intents": stripe.PaymentIntent,
    "refunds": stripe.Refund,
    "disputes": stripe.Dispute,
    "balance_transactions": stripe.CustomerBalanceTransaction,
    "meters": stripe.billing.Meter,
}
FIXTURE_NAMES = {
    "customer": "customer", "subscriptions": "subscription", "invoices": "invoice",
    "invoice_payments": "invoice_payment", "charges": "charge",
    "payment_intents": "payment_intent", "refunds": "refund", "disputes": "dispute",
    "balance_transactions": "customer_balance_transaction", "meters": "billing.meter",
}  # fmt: skip


def _annotations(cls: type[Any]) -> dict[str, Any]:
    """Field annotations of a Stripe class, its Stripe bases included."""
    out: dict[str, Any] = {}
    for base in reversed(cls.__mro__):
        if base.__module__.startswith("stripe"):
            out.update(getattr(base, "__annotations__", {}))
    out.pop("OBJECT_NAME", None)
    if isinstance(getattr(cls, "OBJECT_NAME", None), str):
        out.setdefault("object", str)
    return out


def _named(name: str) -> type[Any] | None:
    for namespace in (stripe, stripe.billing):
        found = getattr(namespace, name, None)
        if isinstance(found, type):
            return found
    return None


def _shapes(annotation: Any) -> Iterator[tuple[str, type[Any]]]:
    """("object" | "list" | "list_object", Stripe class) for each shape an annotation admits."""
    if isinstance(annotation, typing.ForwardRef):
        annotation = annotation.__forward_arg__
    if isinstance(annotation, str):
        found = _named(annotation)
        if found is not None:
            yield "object", found
        return
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        for arg in typing.get_args(annotation):
            yield from _shapes(arg)
    elif origin is list:
        for _, cls in _shapes(typing.get_args(annotation)[0]):
            yield "list", cls
    elif origin is ListObject:
        for _, cls in _shapes(typing.get_args(annotation)[0]):
            yield "list_object", cls
    elif (
        isinstance(annotation, type)
        and issubclass(annotation, StripeObject)
        and annotation.__name__ != "UntypedStripeObject"
    ):
        yield "object", annotation


def _check_stripe(obj: Obj, cls: type[Any], path: str, errors: list[str]) -> None:
    """Every key known to the class (recursively), and `object` naming the class."""
    known = _annotations(cls)
    name = getattr(cls, "OBJECT_NAME", None)
    if isinstance(name, str) and obj.get("object") != name:
        errors.append(f"{path}: object {obj.get('object')!r}, expected {name!r}")
    for key, value in obj.items():
        if key not in known:
            errors.append(f"{path}.{key}: not a field of {cls.__qualname__}")
            continue
        if value is None:
            continue
        for shape, inner in _shapes(known[key]):
            if shape == "object" and isinstance(value, dict):
                _check_stripe(value, inner, f"{path}.{key}", errors)
                break
            if shape == "list" and isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, dict):
                        _check_stripe(item, inner, f"{path}.{key}[{i}]", errors)
                break
            if shape == "list_object" and isinstance(value, dict):
                envelope = {k: v for k, v in value.items() if k != "data"}
                _check_stripe(envelope, ListObject, f"{path}.{key}", errors)
                for i, item in enumerate(value["data"]):
                    _check_stripe(item, inner, f"{path}.{key}.data[{i}]", errors)
                break


def _stripe_objects(world: SandboxWorld, acct: SandboxAccount) -> Iterator[tuple[str, Obj]]:
    data = world.stripe(acct.account_id)
    assert data is not None
    for attr in STRIPE_CLASSES:
        value = getattr(data, attr)
        for obj in [value] if isinstance(value, dict) else value:
            yield attr, obj


def test_stripe_objects_use_only_fields_the_sdk_knows(
    world: SandboxWorld, sample: list[SandboxAccount]
) -> None:
    """Every key of every Stripe object (nested objects and lists too) is a field of the pinned
    SDK's class for it, and `object` names that class."""
    errors: list[str] = []
    for acct in sample:
        for attr, obj in _stripe_objects(world, acct):
            _check_stripe(obj, STRIPE_CLASSES[attr], f"{acct.account_id}:{attr}", errors)
        data = world.stripe(acct.account_id)
        assert data is not None
        for summaries in data.meter_event_summaries.values():
            for obj in [*summaries[:2], summaries[-1]]:
                _check_stripe(obj, stripe.billing.MeterEventSummary, "summary", errors)
    assert not errors, "\n".join(sorted(set(errors))[:30])


def test_stripe_objects_keep_the_sample_objects_field_names(
    world: SandboxWorld, sample: list[SandboxAccount]
) -> None:
    """Every field of Stripe's sample object that the pinned SDK still has is present on ours
    (the stale top-level invoice `subscription` is the one the SDK dropped)."""
    fixtures = load_contract("stripe-fixtures3.json")["resources"]
    missing: set[str] = set()
    seen: set[str] = set()
    for acct in sample:
        for attr, obj in _stripe_objects(world, acct):
            seen.add(attr)
            known = _annotations(STRIPE_CLASSES[attr])
            for key in fixtures[FIXTURE_NAMES[attr]]:
                if key in known and key not in obj:
                    missing.add(f"{attr}.{key}")
    assert seen == set(STRIPE_CLASSES)
    assert not missing, sorted(missing)
    assert "subscription" in fixtures["invoice"] and "subscription" not in _annotations(
        stripe.Invoice
    )


def _walk(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield f"{path}.{key}", value
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _walk(value, f"{path}[{i}]")


def test_stripe_objects_have_none_of_the_samples_placeholders(
    world: SandboxWorld, sample: list[SandboxAccount]
) -> None:
    """No placeholder currencies, IDs, statuses or timestamps, and only the `parent` variant
    that `parent.type` names is filled."""
    problems: list[str] = []
    for acct in sample:
        for attr, obj in _stripe_objects(world, acct):
            for path, value in _walk(obj, attr):
                field = path.rsplit(".", 1)[-1]
                if field == "currency" and value != "usd":
                    problems.append(f"{path} = {value!r}")
                if value in ("obj_123", "status", "type") or value == 1234567890:
                    problems.append(f"{path} = {value!r}")
                if field == "parent" and isinstance(value, dict) and "type" in value:
                    filled = {k for k, v in value.items() if k != "type" and v is not None}
                    if filled != {value["type"]}:
                        problems.append(f"{path}: type {value['type']}, filled {filled}")
    assert not problems, problems[:20]


def test_stripe_money_is_integer_minor_units_and_times_are_epoch_seconds(
    world: SandboxWorld,
) -> None:
    """Stripe amounts are integers in cents and timestamps are Unix seconds."""
    data = world.stripe("acct_initech")
    assert data is not None
    inv = data.invoices[0]
    for key in ("amount_due", "amount_paid", "subtotal", "total", "created", "period_end"):
        assert type(inv[key]) is int
    for line in inv["lines"]["data"]:
        assert type(line["amount"]) is int
        assert type(line["period"]["start"]) is int


def test_the_checks_reject_wrong_shapes(
    world: SandboxWorld, orb_spec: SpecCheck, metronome_spec: SpecCheck
) -> None:
    """The oracles above are not vacuous: the mistakes they exist for are caught."""
    orb_data, met_data = world.orb("acct_northwind"), world.metronome("acct_tyrell")
    stripe_data = world.stripe("acct_initech")
    assert orb_data and met_data and stripe_data
    orb_invoice = {**orb_data.invoices[0], "amount_due": 8}  # a number, not a decimal string
    with pytest.raises(ValueError, match="amount_due"):
        _strict(orb_types.Invoice, orb_invoice)
    assert any("amount_due" in e for e in orb_spec.errors("Invoice", orb_invoice))
    met_invoice = {**met_data.invoices[0], "total": "12.34"}  # a string, not a number
    with pytest.raises(ValueError, match="total"):
        _strict(metronome_customers.Invoice, met_invoice)
    assert any("total" in e for e in metronome_spec.errors("Invoice", met_invoice))
    stale = {**stripe_data.invoices[0], "subscription": "sub_123"}  # removed in basil
    errors: list[str] = []
    _check_stripe(stale, stripe.Invoice, "invoice", errors)
    assert errors == ["invoice.subscription: not a field of Invoice"]
