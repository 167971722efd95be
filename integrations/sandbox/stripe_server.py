"""Stripe's API (version `2026-10-28.endive`) served from the sandbox world in Stripe's wire format.

What it implements is what `integrations.stripe` and the refund flow read: customers (retrieve, list
by email, search), subscriptions, invoices (embedded `lines` truncated to 10 and paged through
`/v1/invoices/{id}/lines`; `payments` only when expanded), invoice payments, charges (`refunds` only
when expanded), refunds, disputes, prices, billing meters and their event summaries, and
`POST /v1/invoices/create_preview`. Behaviour follows Stripe's: Bearer (or Basic) auth with the
key masked in the 401 message, `Stripe-Version` and `Request-Id` headers, `list` and `search_result`
envelopes, `limit` 1–100 with `starting_after`/`ending_before`, bracketed parameters raw or
percent-encoded, `parameter_unknown` for parameters Stripe would not accept, and
`{"error": {type, code, message, param}}` bodies.

Writes (what the approval flow calls): `POST /v1/refunds` (by charge or payment intent; raises the
charge's `amount_refunded`, sets `refunded` when nothing is left, and the refund then shows in
`GET /v1/refunds`, in the charge's expanded `refunds` and so in the client's snapshot) and
`POST /v1/customers/{id}/balance_transactions` (changes the customer's `balance`; listed by
`GET /v1/customers/{id}/balance_transactions`). They validate like Stripe: unknown charge 404
`resource_missing`; nothing left 400 `charge_already_refunded`; more than is left 400
`amount_too_large` with Stripe's "Refund amount ($60.00) is greater than unrefunded amount on
charge ($50.00)"; a charged-back charge 400 `charge_disputed`; bad amounts 400.

Every POST with an `Idempotency-Key` goes through one `IdempotencyStore`: same key and body
replays the first answer (500s included; `Idempotent-Replayed: true`); same key, other body is 400
`idempotency_error`; a duplicate while the first is still running is 409
`idempotency_key_in_use` (Stripe's answer: retry later with the same key); answers that failed
validation are not stored. The key is claimed before anything awaits, and a write validates and
applies in one synchronous step after the optional `write_delay`, so concurrent requests can never
make two objects for one key, nor refund more than a charge has left.

An account's objects are deep-copied from the world when a request first concerns it (the world
generates accounts lazily, so the server does too): the world's shared objects are never changed,
writes change this server's copies only.
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import copy
import dataclasses
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Protocol

from bot.domain.money import Money
from integrations.sandbox.accounts import digest as _digest
from integrations.sandbox.idempotency import (
    MISMATCH,
    IdempotencyStore,
    InFlight,
    Replay,
    fingerprint,
)
from integrations.sandbox.wire import WireRequest, WireResponse

JSON = dict[str, Any]
log = logging.getLogger("integrations.sandbox.stripe")

DEFAULT_API_VERSION = "2026-10-28.endive"
MAX_EMBEDDED = 10  # Stripe embeds the first 10 items of a nested list (`invoice.lines`, …)
_VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$")
_KEY_RE = re.compile(r"^(sk|rk)_(test|live)_[A-Za-z0-9]{4,}$")


# --- the world, as far as this server needs it --------------------------------------------------


class _Account(Protocol):
    @property
    def account_id(self) -> str: ...


class StripeDataLike(Protocol):
    """One account's Stripe objects (the sandbox world's `StripeData`)."""

    @property
    def customer(self) -> Mapping[str, Any]: ...
    @property
    def subscriptions(self) -> Sequence[Mapping[str, Any]]: ...
    @property
    def invoices(self) -> Sequence[Mapping[str, Any]]: ...
    @property
    def invoice_payments(self) -> Sequence[Mapping[str, Any]]: ...
    @property
    def charges(self) -> Sequence[Mapping[str, Any]]: ...
    @property
    def payment_intents(self) -> Sequence[Mapping[str, Any]]: ...
    @property
    def refunds(self) -> Sequence[Mapping[str, Any]]: ...
    @property
    def disputes(self) -> Sequence[Mapping[str, Any]]: ...
    @property
    def meter_event_summaries(self) -> Mapping[str, Sequence[Mapping[str, Any]]]: ...
    @property
    def meters(self) -> Any: ...  # a list of meters, or a mapping of meter ID to meter


class StripeWorldLike(Protocol):
    """What the server reads from the sandbox world."""

    @property
    def accounts(self) -> Sequence[_Account]: ...

    def stripe(self, account_id: str) -> StripeDataLike | None:
        """The account's Stripe objects, or None when it has none."""
        ...


# --- errors -------------------------------------------------------------------------------------


class StripeApiError(Exception):
    """An error answer in Stripe's format."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param

    def body(self, request_id: str) -> JSON:
        """The `{"error": {...}}` body."""
        err: JSON = {"type": self.type, "message": self.message}
        if self.code:
            err["code"] = self.code
            err["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param:
            err["param"] = self.param
        err["request_log_url"] = f"https://dashboard.stripe.com/test/logs/{request_id}"
        return {"error": err}


def _missing(kind: str, object_id: str, param: str = "id") -> StripeApiError:
    return StripeApiError(
        404, f"No such {kind}: '{object_id}'", code="resource_missing", param=param
    )


def _invalid(message: str, param: str | None = None, code: str | None = None) -> StripeApiError:
    return StripeApiError(400, message, code=code or "parameter_invalid", param=param)


def mask_key(key: str) -> str:
    """Mask a key the way Stripe does in errors: prefix, asterisks, last four characters."""
    match = re.match(r"^((?:sk|rk|pk)_(?:test|live)_)", key)
    prefix = match.group(1) if match else key[:3]
    tail = key[-4:] if len(key) > len(prefix) + 4 else ""
    return prefix + "*" * max(4, len(key) - len(prefix) - len(tail)) + tail


# --- parameters ---------------------------------------------------------------------------------


def decode_params(pairs: Iterable[tuple[str, str]]) -> JSON:
    """Nest Stripe's bracketed form/query keys: `created[gte]=1` → `{"created": {"gte": "1"}}`,
    `expand[]=a` and `expand[0]=a` → lists. Brackets arrive decoded (raw or percent-encoded)."""
    root: JSON = {}
    appends: dict[int, int] = {}
    for key, value in pairs:
        head, _, rest = key.partition("[")
        parts = [head] + (re.findall(r"([^\[\]]*)\]", "[" + rest) if rest else [])
        node = root
        for i, part in enumerate(parts):
            if part == "":
                n = appends.get(id(node), 0)
                appends[id(node)] = n + 1
                part = f"\x00{n}"
            last = i == len(parts) - 1
            if last:
                node[part] = value
            else:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = {}
                    node[part] = child
                node = child
    nested = _lists(root)
    assert isinstance(nested, dict)
    return nested


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {k: _lists(v) for k, v in node.items()}
    keys = list(converted)
    if keys and all(k.startswith("\x00") or k.isdigit() for k in keys):
        order = sorted(keys, key=lambda k: int(k.lstrip("\x00")))
        return [converted[k] for k in order]
    return converted


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return list(value.values())
    return [value]


def _int(params: JSON, name: str) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        return int(str(raw))
    except ValueError:
        raise _invalid(f"Invalid integer: {raw}", name, "parameter_invalid_integer") from None


def _range_match(value: int | None, spec: Any, name: str) -> bool:
    """Stripe's range filters: `created=123` or `created[gte]=…&created[lt]=…`."""
    if spec is None:
        return True
    if value is None:
        return False
    if not isinstance(spec, dict):
        return value == _int({name: spec}, name)
    ops = {"gt": value.__gt__, "gte": value.__ge__, "lt": value.__lt__, "lte": value.__le__}
    for op, bound in spec.items():
        if op not in ops:
            raise StripeApiError(
                400, f"Received unknown parameter: {name}[{op}]", code="parameter_unknown",
                param=f"{name}[{op}]",
            )  # fmt: skip
        limit = _int({op: bound}, op)
        assert limit is not None
        if not ops[op](limit):
            return False
    return True


def _check_params(params: JSON, allowed: frozenset[str]) -> None:
    for name in params:
        if name not in allowed:
            raise StripeApiError(
                400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name
            )


LIST_PARAMS = frozenset({"limit", "starting_after", "ending_before", "expand"})


def _metadata(raw: Any) -> dict[str, str]:
    """Validated `metadata[...]`: at most 50 keys of up to 40 characters, values up to 500."""
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, dict):
        raise _invalid("Invalid object", "metadata")
    if len(raw) > 50:
        raise _invalid("You can specify up to 50 keys in metadata.", "metadata")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(value, str):
            raise _invalid("Invalid metadata value: nested objects are not allowed.", "metadata")
        if len(key) > 40:
            raise _invalid("Metadata keys can be at most 40 characters long.", f"metadata[{key}]")
        if len(value) > 500:
            raise _invalid(
                "Metadata values can be at most 500 characters long.", f"metadata[{key}]"
            )
        if value != "":  # an empty value unsets the key
            out[key] = value
    return out


# --- object completion: every key Stripe sends for the object type ----------------------------

_ADDRESS = {"city": None, "country": None, "line1": None, "line2": None, "postal_code": None,
            "state": None}  # fmt: skip

_TEMPLATES: dict[str, JSON] = {
    "customer": {
        "address": None, "balance": 0, "business_name": None, "created": 0, "currency": None,
        "customer_account": None, "default_source": None, "delinquent": False, "description": None,
        "discount": None, "email": None, "individual_name": None, "invoice_prefix": None,
        "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None,
                             "rendering_options": None},
        "livemode": False, "metadata": {}, "name": None, "next_invoice_sequence": 1, "phone": None,
        "preferred_locales": [], "shipping": None, "tax_exempt": "none", "test_clock": None,
    },
    "subscription": {
        "application": None, "application_fee_percent": None,
        "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
        "billing_cycle_anchor": 0, "billing_cycle_anchor_config": None,
        "billing_mode": {"type": "classic"}, "billing_schedules": [], "billing_thresholds": None,
        "cancel_at": None, "cancel_at_period_end": False, "canceled_at": None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": "charge_automatically", "created": 0, "currency": "usd",
        "customer_account": None, "days_until_due": None, "default_payment_method": None,
        "default_source": None, "default_tax_rates": [], "description": None, "discounts": [],
        "ended_at": None,
        "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
        "latest_invoice": None, "livemode": False, "managed_payments": None, "metadata": {},
        "next_pending_invoice_item_invoice": None, "on_behalf_of": None, "pause_collection": None,
        "payment_settings": {"payment_method_options": None, "payment_method_types": None,
                             "save_default_payment_method": "off"},
        "pending_invoice_item_interval": None, "pending_setup_intent": None,
        "pending_update": None, "presentment_details": None, "schedule": None, "start_date": 0,
        "status": "active", "status_details": None, "test_clock": None, "transfer_data": None,
        "trial_end": None, "trial_settings": {"end_behavior": {
            "missing_payment_method": "create_invoice"}}, "trial_start": None,
    },
    "subscription_item": {
        "billed_until": None, "billing_thresholds": None, "created": 0, "current_trial": None,
        "discounts": [], "metadata": {}, "quantity": 1, "tax_rates": [],
    },
    "price": {
        "active": True, "billing_scheme": "per_unit", "created": 0, "currency": "usd",
        "custom_unit_amount": None, "livemode": False, "lookup_key": None, "metadata": {},
        "nickname": None, "recurring": None, "tax_behavior": "unspecified", "tiers_mode": None,
        "transform_quantity": None, "type": "recurring", "unit_amount": None,
        "unit_amount_decimal": None,
    },
    "product": {
        "active": True, "created": 0, "default_price": None, "description": None, "images": [],
        "livemode": False, "marketing_features": [], "metadata": {}, "package_dimensions": None,
        "shippable": None, "statement_descriptor": None, "tax_code": None, "type": "service",
        "unit_label": None, "updated": 0, "url": None,
    },
    "invoice": {
        "account_country": "US", "account_name": None, "account_tax_ids": None, "amount_due": 0,
        "amount_overpaid": 0, "amount_paid": 0, "amount_paid_off_stripe": 0, "amount_remaining": 0,
        "amount_shipping": 0, "application": None, "attempt_count": 0, "attempted": False,
        "auto_advance": False,
        "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None,
                          "provider": None, "status": None},
        "automatically_finalizes_at": None, "billing_reason": "manual",
        "collection_method": "charge_automatically", "confirmation_secret": None, "created": 0,
        "currency": "usd", "custom_fields": None, "customer_account": None,
        "customer_address": None, "customer_email": None, "customer_name": None,
        "customer_phone": None, "customer_shipping": None, "customer_tax_exempt": "none",
        "customer_tax_ids": [], "default_payment_method": None, "default_source": None,
        "default_tax_rates": [], "description": None, "discounts": [], "due_date": None,
        "effective_at": None, "ending_balance": None, "footer": None, "from_invoice": None,
        "hosted_invoice_url": None, "invoice_pdf": None, "issuer": {"type": "self"},
        "last_finalization_error": None, "latest_revision": None, "livemode": False,
        "metadata": {}, "next_payment_attempt": None, "number": None, "on_behalf_of": None,
        "parent": None,
        "payment_settings": {"default_mandate": None, "payment_method_options": None,
                             "payment_method_types": None},
        "period_end": 0, "period_start": 0, "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0, "receipt_number": None,
        "rendering": None, "shipping_cost": None, "shipping_details": None,
        "starting_balance": 0, "statement_descriptor": None, "status": "draft",
        "status_details": None,
        "status_transitions": {"finalized_at": None, "marked_uncollectible_at": None,
                               "paid_at": None, "voided_at": None},
        "subtotal": 0, "subtotal_excluding_tax": 0, "test_clock": None, "threshold_reason": None,
        "total": 0, "total_discount_amounts": [], "total_excluding_tax": 0,
        "total_pretax_credit_amounts": [], "total_taxes": [], "webhooks_delivered_at": None,
    },
    "line_item": {
        "description": None, "discount_amounts": [], "discountable": True, "discounts": [],
        "livemode": False, "metadata": {}, "parent": None, "pretax_credit_amounts": [],
        "pricing": None, "quantity": None, "quantity_decimal": None, "subscription": None,
        "taxes": [],
    },
    "invoice_payment": {
        "amount_paid": None, "is_default": True, "livemode": False,
        "status_transitions": {"canceled_at": None, "paid_at": None},
    },
    "charge": {
        "amount_captured": 0, "amount_refunded": 0, "application": None, "application_fee": None,
        "application_fee_amount": None, "authorization_code": None, "balance_transaction": None,
        "billing_details": {"address": dict(_ADDRESS), "email": None, "name": None,
                            "phone": None, "tax_id": None},
        "calculated_statement_descriptor": None, "captured": True, "customer": None,
        "description": None, "disputed": False, "failure_balance_transaction": None,
        "failure_code": None, "failure_message": None, "fraud_details": {}, "livemode": False,
        "metadata": {}, "on_behalf_of": None, "outcome": None, "paid": True,
        "payment_intent": None, "payment_method": None, "payment_method_details": None,
        "presentment_details": None, "radar_options": None, "receipt_email": None,
        "receipt_number": None, "receipt_url": None, "refunded": False, "review": None,
        "shipping": None, "source_transfer": None, "statement_descriptor": None,
        "statement_descriptor_suffix": None, "transfer_data": None, "transfer_group": None,
    },
    "refund": {
        "balance_transaction": None, "charge": None, "customer": None, "customer_account": None,
        "description": None, "destination_details": None, "failure_balance_transaction": None,
        "failure_reason": None, "instructions_email": None, "metadata": {}, "next_action": None,
        "payment_intent": None, "payment_method": None, "pending_reason": None,
        "presentment_details": None, "reason": None, "receipt_number": None,
        "source_transfer_reversal": None, "status": "succeeded", "transfer_reversal": None,
    },
    "dispute": {
        "balance_transactions": [], "enhanced_eligibility_types": [],
        "evidence": {"enhanced_evidence": {}},
        "evidence_details": {"due_by": None, "enhanced_eligibility": {}, "has_evidence": False,
                             "past_due": False, "submission_count": 0,
                             "submission_method": "not_submitted"},
        "intended_submission_method": None, "is_charge_refundable": False, "livemode": False,
        "metadata": {}, "network_reason_code": None, "payment_intent": None,
        "payment_method_details": None,
    },
    "billing.meter": {
        "created": 0, "customer_mapping": {"event_payload_key": "stripe_customer_id",
                                           "type": "by_id"},
        "default_aggregation": {"formula": "sum"}, "event_time_window": None, "livemode": False,
        "status": "active", "status_transitions": {"deactivated_at": None}, "updated": 0,
        "value_settings": {"event_payload_key": "value"},
    },
    "billing.meter_event_summary": {"livemode": False},
    "customer_balance_transaction": {
        "checkout_session": None, "credit_note": None, "customer_account": None,
        "description": None, "invoice": None, "livemode": False, "metadata": {},
        "type": "adjustment",
    },
}  # fmt: skip


def complete(kind: str, obj: Mapping[str, Any]) -> JSON:
    """`obj` with every key Stripe sends for an object of type `kind` (missing ones defaulted)."""
    template = _TEMPLATES.get(kind, {})
    out: JSON = {**copy.deepcopy(template), **obj}
    out["object"] = kind
    # Nested objects: Stripe sends their full key sets too.
    if kind == "invoice_payment":
        transitions = out.get("status_transitions")
        out["status_transitions"] = {
            **copy.deepcopy(_TEMPLATES["invoice_payment"]["status_transitions"]),
            **(transitions or {}),
        }
    if kind == "dispute":
        out["evidence_details"] = {
            **copy.deepcopy(_TEMPLATES["dispute"]["evidence_details"]),
            **(out.get("evidence_details") or {}),
        }
        out["evidence"] = {"enhanced_evidence": {}, **(out.get("evidence") or {})}
    return out


def plan_from_price(price: Mapping[str, Any]) -> JSON:
    """The legacy `plan` Stripe still mirrors from a recurring price on subscription items."""
    recurring = price.get("recurring") or {}
    product = price.get("product")
    return {
        "id": price.get("id"), "object": "plan", "active": price.get("active", True),
        "amount": price.get("unit_amount"), "amount_decimal": price.get("unit_amount_decimal"),
        "billing_scheme": price.get("billing_scheme", "per_unit"),
        "created": price.get("created", 0), "currency": price.get("currency", "usd"),
        "interval": recurring.get("interval", "month"),
        "interval_count": recurring.get("interval_count", 1),
        "livemode": price.get("livemode", False), "metadata": price.get("metadata") or {},
        "meter": recurring.get("meter"), "nickname": price.get("nickname"),
        "product": product.get("id") if isinstance(product, Mapping) else product,
        "tiers_mode": price.get("tiers_mode"), "transform_usage": None,
        "trial_period_days": recurring.get("trial_period_days"),
        "usage_type": recurring.get("usage_type", "licensed"),
    }  # fmt: skip


# --- search -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SearchClause:
    """One `field:value` clause of Stripe's search query language."""

    field: str  # "email", "name", "metadata", "created", …
    key: str | None  # the metadata key
    op: str  # ":", "~", ">", ">=", "<", "<="
    value: str
    negate: bool = False


_CLAUSE_RE = re.compile(
    r"""\s*(?P<neg>-)?(?P<field>[a-z_]+)(?:\[(?P<kq>['"])(?P<key>(?:\\.|(?!(?P=kq)).)*)(?P=kq)\])?"""
    r"""(?P<op>>=|<=|:|~|>|<)"""
    r"""(?:(?P<q>['"])(?P<value>(?:\\.|(?!(?P=q)).)*)(?P=q)|(?P<bare>[0-9]+|null))\s*"""
)


def parse_search(query: str) -> tuple[list[SearchClause], str]:
    """Parse a search query into clauses and the combinator ("AND" or "OR").

    Raises `StripeApiError` (400, param `query`) for what Stripe would reject.
    """
    clauses: list[SearchClause] = []
    joins: set[str] = set()
    pos = 0
    text = query.strip()
    if not text:
        raise _invalid("Search query is empty.", "query")
    while True:
        match = _CLAUSE_RE.match(text, pos)
        if not match:
            raise _invalid(
                f"We were unable to parse your search query. Try using the format "
                f"`metadata['key']:'value'` or `email:'value'`. Near: {text[pos : pos + 20]!r}",
                "query",
            )
        value = match.group("value")
        value = match.group("bare") if value is None else re.sub(r"\\(.)", r"\1", value)
        key = match.group("key")
        clauses.append(
            SearchClause(
                field=match.group("field"),
                key=re.sub(r"\\(.)", r"\1", key) if key is not None else None,
                op=match.group("op"),
                value=value,
                negate=match.group("neg") is not None,
            )
        )
        pos = match.end()
        if pos >= len(text):
            break
        join = re.match(r"(AND|OR)\s+", text[pos:])
        if not join:
            raise _invalid(f"Expected AND or OR near {text[pos : pos + 20]!r}.", "query")
        joins.add(join.group(1))
        pos += join.end()
    if len(joins) > 1:
        raise _invalid("Search queries cannot combine AND and OR.", "query")
    if len(clauses) > 10:
        raise _invalid("Search queries can have at most 10 clauses.", "query")
    return clauses, (joins.pop() if joins else "AND")


_CUSTOMER_SEARCH_FIELDS = frozenset({"created", "email", "metadata", "name", "phone"})


def _customer_matches(customer: Mapping[str, Any], clause: SearchClause) -> bool:
    if clause.field == "metadata":
        if clause.key is None or clause.op not in (":", "~"):
            raise _invalid("metadata clauses look like metadata['key']:'value'.", "query")
        actual = (customer.get("metadata") or {}).get(clause.key)
        hit = actual is not None and (
            actual == clause.value if clause.op == ":" else clause.value in actual
        )
    elif clause.field == "created":
        created = int(customer.get("created") or 0)
        try:
            bound = int(clause.value)
        except ValueError:
            raise _invalid("created must be compared with a Unix timestamp.", "query") from None
        hit = {":": created == bound, ">": created > bound, ">=": created >= bound,
               "<": created < bound, "<=": created <= bound}[clause.op]  # fmt: skip
    else:
        raw = customer.get(clause.field)
        if clause.value == "null":
            hit = raw is None
        elif raw is None:
            hit = False
        elif clause.op == ":":
            # String equality in Stripe search is case-insensitive.
            hit = str(raw).lower() == clause.value.lower()
        elif clause.op == "~":
            if len(clause.value) < 3:
                raise _invalid("Substring matches need at least 3 characters.", "query")
            hit = clause.value.lower() in str(raw).lower()
        else:
            raise _invalid(f"{clause.field} does not support {clause.op}.", "query")
    return hit != clause.negate


# --- the server ---------------------------------------------------------------------------------

Handler = Callable[[WireRequest, JSON, "re.Match[str]"], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    allowed: frozenset[str]
    write: bool = False  # changes state: the write delay and scripted write failures apply


_REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _ts(dt: datetime) -> int:
    return int(dt.timestamp())


def _sort_newest(items: Iterable[JSON]) -> list[JSON]:
    return sorted(items, key=lambda o: -int(o.get("created") or 0))


#: Secondary indexes (store → the field naming its owner), so a list filtered by a customer,
#: an invoice or a charge reads that owner's objects only, not every loaded account's: what a
#: real Stripe's indexes do, and what keeps a 10,000-account benchmark's fake off the critical
#: path. Owners never change once an object exists.
_INDEXED = {
    "subscriptions": "customer", "invoices": "customer", "charges": "customer",
    "invoice_payments": "invoice", "refunds": "charge", "disputes": "charge",
    "balance_transactions": "customer",
}  # fmt: skip


class StripeSandboxServer:
    """A `WireRouter` answering Stripe's API from the sandbox world.

    `api_key`: the one key accepted (any well-formed `sk_`/`rk_` key when None).
    """

    def __init__(
        self,
        world: StripeWorldLike,
        *,
        api_key: str | None = None,
        write_delay: float = 0.0,
        clock: Callable[[], datetime] | None = None,
        max_loaded: int | None = None,
    ) -> None:
        self._api_key = api_key
        #: Accounts indexed at most (benchmarks over 10,000 accounts); the oldest loaded is
        #: forgotten first. None (the default) keeps everything, as writes must persist.
        self._max_loaded = max_loaded
        self._owned: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        self._request_seq = 0
        self._mint_seq = 0
        self._keys = IdempotencyStore()
        #: Seconds every write waits after claiming its key and before it applies (tests widen
        #: the race window with it).
        self.write_delay = write_delay
        self._broken_writes = 0
        started, base = time.monotonic(), getattr(world, "now", None)
        self._clock = clock or (
            (lambda: base + timedelta(seconds=time.monotonic() - started))
            if isinstance(base, datetime)
            else (lambda: datetime.now(UTC))
        )
        self.customers: dict[str, JSON] = {}
        self.subscriptions: dict[str, JSON] = {}
        self.invoices: dict[str, JSON] = {}
        self.lines: dict[str, list[JSON]] = {}  # invoice ID -> every line
        self.invoice_payments: dict[str, JSON] = {}
        self.charges: dict[str, JSON] = {}
        self.payment_intents: dict[str, JSON] = {}
        self.refunds: dict[str, JSON] = {}
        self.disputes: dict[str, JSON] = {}
        self.balance_transactions: dict[str, JSON] = {}
        self.prices: dict[str, JSON] = {}
        self.products: dict[str, JSON] = {}
        self.meters: dict[str, JSON] = {}
        self.summaries: dict[tuple[str, str], list[JSON]] = {}  # (meter, customer) -> daily
        #: (store name, owner ID) -> IDs of that owner's objects (see `_INDEXED`).
        self._index: dict[tuple[str, str], dict[str, None]] = {}
        self._world = world
        self._loaded: set[str] = set()
        self._all_loaded = False
        self._prefixes: dict[str, str] | None = None
        catalog = getattr(world, "stripe_catalog", None)
        if callable(catalog):
            self._load_catalog(catalog())
        self._routes = self._build_routes()

    # -- loading ---------------------------------------------------------------------------------
    # The world generates an account's objects on first access, so the server indexes only the
    # accounts a request concerns: an object ID names its owner (`world.owner_of`), an email or
    # our account ID names accounts through the world's index. Lists without such a filter load
    # every account. A world without `owner_of` is loaded whole on first use.

    def _load_account(self, account_id: str) -> None:
        if account_id in self._loaded:
            return
        self._loaded.add(account_id)
        data = self._world.stripe(account_id)
        if data is None:
            return
        added = self._load(data)
        if self._max_loaded is None:
            return
        self._owned[account_id] = added
        while len(self._owned) > self._max_loaded:
            oldest = next(iter(self._owned))
            names = {id(d): name for name, d in self._stores().items()}
            for store, key in self._owned.pop(oldest):
                gone = store.pop(key, None)
                if isinstance(gone, dict):
                    self._unindex(names[id(store)], str(key), gone)
            self._loaded.discard(oldest)
            self._all_loaded = False

    def _stores(self) -> dict[str, dict[Any, Any]]:
        return {
            "customers": self.customers, "subscriptions": self.subscriptions,
            "invoices": self.invoices, "lines": self.lines,
            "invoice_payments": self.invoice_payments, "charges": self.charges,
            "payment_intents": self.payment_intents, "refunds": self.refunds,
            "disputes": self.disputes, "summaries": self.summaries,
        }  # fmt: skip

    def _load_all(self) -> None:
        if not self._all_loaded:
            for account in self._world.accounts:
                self._load_account(account.account_id)
            self._all_loaded = True

    def _load_until(self, found: Callable[[], bool]) -> None:
        """Load accounts in order until `found()`: catalogue objects (prices, meters) belong to
        no account, so the first accounts that use one reveal it. The answer does not depend on
        what earlier requests loaded."""
        for account in self._world.accounts:
            if found():
                return
            self._load_account(account.account_id)
        self._all_loaded = True

    def _load_for(self, object_id: Any) -> None:
        """Index the account owning `object_id` (any Stripe ID the world made)."""
        if object_id is None or self._all_loaded:
            return
        owner_of = getattr(self._world, "owner_of", None)
        if not callable(owner_of):
            self._load_all()
            return
        owner = owner_of(str(object_id))
        if owner is not None:
            self._load_account(str(owner))

    def _load_for_email(self, email: str) -> None:
        accounts = self._world.accounts
        if not all(isinstance(getattr(a, "email", None), str) for a in accounts):
            self._load_all()
            return
        for account in accounts:
            if str(getattr(account, "email", "")).lower() == email.lower():
                self._load_account(account.account_id)

    def _load_for_search(self, clauses: Sequence[SearchClause]) -> None:
        find = getattr(self._world, "account", None)
        for clause in clauses:
            if clause.field == "email" and clause.op == ":" and not clause.negate:
                self._load_for_email(clause.value)
            elif (
                clause.field == "metadata" and clause.key == "account_id" and clause.op == ":"
                and not clause.negate and callable(find)
            ):  # fmt: skip
                if find(clause.value) is not None:
                    self._load_account(clause.value)
            else:
                self._load_all()
                return

    def _load_catalog(self, objects: Iterable[Mapping[str, Any]]) -> None:
        """Shared catalogue objects (prices, products, meters) a world may offer."""
        for obj in objects:
            kind = obj.get("object")
            if kind == "price":
                self._learn_price(obj)
            elif kind == "product":
                self.products[str(obj["id"])] = copy.deepcopy(dict(obj))
            elif kind == "billing.meter":
                self.meters[str(obj["id"])] = copy.deepcopy(dict(obj))

    def _load(self, data: StripeDataLike) -> list[tuple[dict[Any, Any], Any]]:
        """Index one account's objects; the (store, key) pairs added.

        Objects are copied one level deep: writes change only top-level fields (a charge's
        `amount_refunded`, a customer's `balance`), so the world's shared objects stay as they
        were without the cost of deep copies of whole histories."""
        added: list[tuple[dict[Any, Any], Any]] = []
        customer = dict(data.customer)
        cid = str(customer["id"])
        self.customers[cid] = customer
        added.append((self.customers, cid))
        for sub in data.subscriptions:
            sub_copy = dict(sub)
            added.append((self.subscriptions, self._put("subscriptions", sub_copy)))
            for item in (sub_copy.get("items") or {}).get("data", []):
                self._learn_price(item.get("price"))
        for inv in data.invoices:
            inv_copy = dict(inv)
            iid = str(inv_copy["id"])
            lines = inv_copy.pop("lines", None) or {}
            self.lines[iid] = list(lines.get("data", []) if isinstance(lines, Mapping) else lines)
            added.append((self.lines, iid))
            inv_copy.pop("payments", None)  # served from invoice_payments when expanded
            added.append((self.invoices, self._put("invoices", inv_copy)))
        for name, source in (
            ("invoice_payments", data.invoice_payments),
            ("charges", data.charges),
            ("payment_intents", data.payment_intents),
            ("refunds", data.refunds),
            ("disputes", data.disputes),
        ):
            for obj in source:
                obj_copy = dict(obj)
                if name == "charges":
                    obj_copy.pop("refunds", None)  # includable: served only when expanded
                added.append((getattr(self, name), self._put(name, obj_copy)))
        for txn in getattr(data, "balance_transactions", None) or []:
            self._put("balance_transactions", dict(txn))
        meters = data.meters
        for meter in meters.values() if isinstance(meters, Mapping) else meters or []:
            self.meters[str(meter["id"])] = copy.deepcopy(dict(meter))
        for meter_id, rows in (data.meter_event_summaries or {}).items():
            bucket = self.summaries.setdefault((meter_id, cid), [])
            bucket.extend(dict(r) for r in rows)
            added.append((self.summaries, (meter_id, cid)))
        # Optional extras a world may carry: a price and product catalogue.
        for price in _as_list(getattr(data, "prices", None)):
            self._learn_price(price)
        for product in _as_list(getattr(data, "products", None)):
            if isinstance(product, Mapping):
                self.products[str(product["id"])] = copy.deepcopy(dict(product))
        return added

    def _put(self, name: str, obj: JSON) -> str:
        """Store `obj` in the store `name` and its owner's index; its key."""
        key = str(obj["id"])
        getattr(self, name)[key] = obj
        field = _INDEXED.get(name)
        owner = obj.get(field) if field else None
        if isinstance(owner, str):
            self._index.setdefault((name, owner), {})[key] = None
        return key

    def _unindex(self, name: str, key: str, obj: JSON) -> None:
        field = _INDEXED.get(name)
        owner = obj.get(field) if field else None
        if isinstance(owner, str):
            ids = self._index.get((name, owner))
            if ids is not None:
                ids.pop(key, None)
                if not ids:
                    del self._index[(name, owner)]

    def _of(self, name: str, owner: str) -> list[JSON]:
        """The objects of store `name` owned by `owner` (see `_INDEXED`), newest first."""
        store: dict[str, JSON] = getattr(self, name)
        ids = self._index.get((name, owner), {})
        return _sort_newest(store[k] for k in ids if k in store)

    def _learn_price(self, price: Any) -> None:
        if not isinstance(price, Mapping) or "id" not in price:
            return
        price_copy = copy.deepcopy(dict(price))
        product = price_copy.get("product")
        if isinstance(product, Mapping):
            self.products[str(product["id"])] = dict(product)
            price_copy["product"] = product["id"]
        self.prices[str(price_copy["id"])] = price_copy

    # -- dispatch --------------------------------------------------------------------------------

    def _build_routes(self) -> list[_Route]:
        def route(method: str, path: str, handler: Handler, *allowed: str) -> _Route:
            pattern = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "$")
            return _Route(method, pattern, handler, frozenset(allowed))

        def write(path: str, handler: Handler, *allowed: str) -> _Route:
            return dataclasses.replace(route("POST", path, handler, *allowed), write=True)

        lp = tuple(LIST_PARAMS)
        return [
            route("GET", "/v1/customers/search", self._search_customers,
                  "query", "limit", "page", "expand"),
            route("GET", "/v1/customers/{id}/balance_transactions",
                  self._list_balance_transactions, *lp, "created", "invoice"),
            write("/v1/customers/{id}/balance_transactions", self._create_balance_transaction,
                  "amount", "currency", "description", "metadata", "expand", "invoice"),
            route("GET", "/v1/customers/{id}", self._get_customer, "expand"),
            route("GET", "/v1/customers", self._list_customers,
                  *lp, "email", "created", "test_clock"),
            route("GET", "/v1/subscriptions/{id}", self._get_subscription, "expand"),
            route("GET", "/v1/subscriptions", self._list_subscriptions,
                  *lp, "customer", "status", "price", "created", "collection_method",
                  "current_period_start", "current_period_end", "test_clock", "automatic_tax"),
            route("POST", "/v1/invoices/create_preview", self._create_preview,
                  "customer", "subscription", "expand", "preview_mode"),
            route("GET", "/v1/invoices/search", self._search_invoices,
                  "query", "limit", "page", "expand"),
            route("GET", "/v1/invoices/{id}/lines", self._list_lines, *lp),
            route("GET", "/v1/invoices/{id}", self._get_invoice, "expand"),
            route("GET", "/v1/invoices", self._list_invoices,
                  *lp, "customer", "status", "subscription", "created", "due_date",
                  "collection_method"),
            route("GET", "/v1/invoice_payments/{id}", self._get_invoice_payment, "expand"),
            route("GET", "/v1/invoice_payments", self._list_invoice_payments,
                  *lp, "invoice", "payment", "status", "created"),
            route("GET", "/v1/charges/{id}", self._get_charge, "expand"),
            route("GET", "/v1/charges", self._list_charges,
                  *lp, "customer", "created", "payment_intent", "transfer_group"),
            route("GET", "/v1/payment_intents/{id}", self._get_payment_intent, "expand",
                  "client_secret"),
            write("/v1/refunds", self._create_refund,
                  "charge", "payment_intent", "amount", "reason", "metadata", "expand",
                  "instructions_email", "refund_application_fee", "reverse_transfer", "origin"),
            route("GET", "/v1/refunds/{id}", self._get_refund, "expand"),
            route("GET", "/v1/refunds", self._list_refunds,
                  *lp, "charge", "payment_intent", "created"),
            route("GET", "/v1/disputes/{id}", self._get_dispute, "expand"),
            route("GET", "/v1/disputes", self._list_disputes,
                  *lp, "charge", "payment_intent", "created"),
            route("GET", "/v1/prices/{id}", self._get_price, "expand"),
            route("GET", "/v1/billing/meters/{id}/event_summaries", self._list_summaries,
                  *lp, "customer", "start_time", "end_time", "value_grouping_window"),
            route("GET", "/v1/billing/meters/{id}", self._get_meter, "expand"),
            route("GET", "/v1/billing/meters", self._list_meters, *lp, "status"),
        ]  # fmt: skip

    async def handle(self, request: WireRequest) -> WireResponse:
        """Answer one request the way Stripe would."""
        self._request_seq += 1
        request_id = "req_" + hashlib.sha256(str(self._request_seq).encode()).hexdigest()[:14]
        version = request.headers.get("stripe-version") or DEFAULT_API_VERSION
        headers = {"request-id": request_id, "stripe-version": version}
        idem_key = request.headers.get("idempotency-key")
        if idem_key and request.method == "POST":
            headers["idempotency-key"] = idem_key
        try:
            self._authenticate(request)
            if not _VERSION_RE.match(version):
                raise _invalid(f"Invalid Stripe API version: {version}", code="api_version_invalid")
            route, match = self._route(request)
            if request.method == "POST":
                params = decode_params(request.form())
            else:
                params = decode_params(request.query)
            _check_params(params, route.allowed)
            if request.method == "POST" and idem_key:
                return await self._idempotent(request, idem_key, route, params, match, headers)
            body = await self._run(route, request, params, match)
            return WireResponse.of_json(body, headers=headers)
        except StripeApiError as err:
            return WireResponse.of_json(err.body(request_id), status=err.status, headers=headers)
        except Exception:
            # A bug in the sandbox answers like a Stripe outage, not a dropped connection.
            log.exception("stripe sandbox failed", extra={"path": request.path})
            outage = StripeApiError(500, "An unknown error occurred", type_="api_error")
            return WireResponse.of_json(outage.body(request_id), status=500, headers=headers)

    def _authenticate(self, request: WireRequest) -> None:
        auth = request.headers.get("authorization", "")
        key = ""
        if auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        elif auth.lower().startswith("basic "):
            try:
                key = base64.b64decode(auth[6:].strip()).decode().split(":", 1)[0]
            except ValueError:
                key = ""
        if not key:
            raise StripeApiError(
                401,
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, "
                "or we can help at https://support.stripe.com/.",
            )
        valid = key == self._api_key if self._api_key is not None else bool(_KEY_RE.match(key))
        if not valid:
            raise StripeApiError(401, f"Invalid API Key provided: {mask_key(key)}")

    def _route(self, request: WireRequest) -> tuple[_Route, re.Match[str]]:
        for candidate in self._routes:
            if candidate.method != request.method:
                continue
            match = candidate.pattern.match(request.path)
            if match:
                return candidate, match
        raise StripeApiError(
            404,
            f"Unrecognized request URL ({request.method}: {request.path}). Please see "
            "https://stripe.com/docs or we can help at https://support.stripe.com/.",
        )

    async def _idempotent(
        self,
        request: WireRequest,
        key: str,
        route: _Route,
        params: JSON,
        match: re.Match[str],
        headers: dict[str, str],
    ) -> WireResponse:
        if len(key) > 255:
            raise _invalid("Idempotency keys are limited to 255 characters.", "idempotency_key")
        # Checked and claimed in one synchronous step: no await before the claim is recorded.
        verdict = self._keys.claim(key, fingerprint(request.method, request.path, params))
        if verdict is MISMATCH:
            raise StripeApiError(
                400,
                "Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{key}' if you meant to "
                "execute a different request.",
                type_="idempotency_error",
            )
        if isinstance(verdict, InFlight):
            raise StripeApiError(
                409,
                "There is currently another in-progress request using this Idempotent Key "
                "(that probably means you submitted twice, and the other request is still going "
                f"through): {key}. Please try again later.",
                type_="idempotency_error",
                code="idempotency_key_in_use",
            )
        if isinstance(verdict, Replay):
            stored = verdict.response
            return WireResponse(
                status=stored.status,
                body=stored.body,
                headers={**stored.headers, **headers, "idempotent-replayed": "true"},
            )
        try:
            body = await self._run(route, request, params, match)
            response = WireResponse.of_json(body, headers=headers)
        except StripeApiError as err:
            if err.status < 500:
                self._keys.release(key)  # validation failures are not stored: a retry is safe
                raise
            response = WireResponse.of_json(
                err.body(headers["request-id"]), status=err.status, headers=headers
            )
        except BaseException:
            self._keys.release(key)
            raise
        self._keys.finish(key, response)
        return response

    async def _run(
        self, route: _Route, request: WireRequest, params: JSON, match: re.Match[str]
    ) -> Any:
        """Run a handler; a write first waits `write_delay` (its key already claimed), then
        validates and applies without awaiting again, so concurrent writes cannot interleave."""
        if route.write:
            if self.write_delay:
                await asyncio.sleep(self.write_delay)
            if self._broken_writes:
                self._broken_writes -= 1
                raise StripeApiError(500, "An unknown error occurred", type_="api_error")
        return await route.handler(request, params, match)

    # -- test controls ---------------------------------------------------------------------------

    def break_writes(self, times: int = 1) -> None:
        """The next `times` writes fail with a 500 before changing anything; a write with an
        idempotency key stores that 500, so its retries get it replayed, as in Stripe."""
        self._broken_writes += times

    def expire_idempotency_keys(self) -> int:
        """Forget every answered idempotency key, as Stripe may after 24 hours."""
        return self._keys.expire()

    # -- helpers ---------------------------------------------------------------------------------

    def _page(self, items: list[JSON], params: JSON, url: str) -> JSON:
        """One page of a `list` envelope, with `limit`, `starting_after` and `ending_before`."""
        limit = _int(params, "limit")
        if limit is None:
            limit = 10
        if not 1 <= limit <= 100:
            raise _invalid(
                "This value must be greater than or equal to 1 and less than or equal to 100.",
                "limit", "parameter_invalid_integer",
            )  # fmt: skip
        after, before = params.get("starting_after"), params.get("ending_before")
        if after and before:
            raise _invalid(
                "You may only specify one of these parameters: ending_before, starting_after."
            )
        ids = [str(o.get("id")) for o in items]
        if after:
            if after not in ids:
                raise _missing("object", str(after), "starting_after")
            start = ids.index(after) + 1
            page, has_more = items[start : start + limit], start + limit < len(items)
        elif before:
            if before not in ids:
                raise _missing("object", str(before), "ending_before")
            end = ids.index(before)
            start = max(0, end - limit)
            page, has_more = items[start:end], start > 0
        else:
            page, has_more = items[:limit], len(items) > limit
        return {"object": "list", "data": page, "has_more": has_more, "url": url}

    @staticmethod
    def _embedded(items: list[JSON], url: str) -> JSON:
        return {
            "object": "list",
            "data": items[:MAX_EMBEDDED],
            "has_more": len(items) > MAX_EMBEDDED,
            "url": url,
        }

    @staticmethod
    def _expand(params: JSON, allowed: Iterable[str]) -> set[str]:
        wanted = {str(e) for e in _as_list(params.get("expand"))}
        for path in wanted - set(allowed):
            raise _invalid(f"This property cannot be expanded ({path}).", "expand")
        return wanted

    def _customer_id(self, params: JSON, *, required: bool = False) -> str | None:
        cid = params.get("customer")
        if cid is None:
            if required:
                raise _invalid("Missing required param: customer.", "customer", "parameter_missing")
            return None
        return str(cid)

    def _load_scope(self, object_id: Any) -> None:
        """Index what a list filtered by `object_id` needs (everything when unfiltered)."""
        if object_id is None:
            self._load_all()
        else:
            self._load_for(object_id)

    # -- customers -------------------------------------------------------------------------------

    def _customer_out(self, customer: JSON) -> JSON:
        if customer.get("deleted"):
            return {"id": customer["id"], "object": "customer", "deleted": True}
        return complete("customer", customer)

    def _live_customers(self) -> list[JSON]:
        return _sort_newest(c for c in self.customers.values() if not c.get("deleted"))

    async def _get_customer(self, _r: WireRequest, params: JSON, m: re.Match[str]) -> JSON:
        self._expand(params, ())
        self._load_for(m["id"])
        customer = self.customers.get(m["id"])
        if customer is None:
            raise _missing("customer", m["id"])
        return self._customer_out(customer)

    async def _list_customers(self, _r: WireRequest, params: JSON, _m: re.Match[str]) -> JSON:
        self._expand(params, ())
        email = params.get("email")
        if email is not None:
            if len(str(email)) > 512:
                raise _invalid("email is too long.", "email")
            self._load_for_email(str(email))
        elif params.get("created") is None and callable(getattr(self._world, "owner_of", None)):
            return await self._lazy_customer_page(params)
        else:
            self._load_all()
        items = self._live_customers()
        if email is not None:
            items = [c for c in items if c.get("email") == email]  # exact and case-sensitive
        items = [c for c in items if _range_match(c.get("created"), params.get("created"),
                                                  "created")]  # fmt: skip
        page = self._page(items, params, "/v1/customers")
        page["data"] = [self._customer_out(c) for c in page["data"]]
        return page

    async def _lazy_customer_page(self, params: JSON) -> JSON:
        """An unfiltered customer list built a page at a time from the world's index (so listing
        every customer never loads every account). Its order is the world's (stable), not
        newest-first: nothing Billing Triage does depends on the order of this list."""
        limit = _int(params, "limit")
        limit = 10 if limit is None else limit
        if not 1 <= limit <= 100:
            raise _invalid(
                "This value must be greater than or equal to 1 and less than or equal to 100.",
                "limit", "parameter_invalid_integer",
            )  # fmt: skip
        if params.get("ending_before"):
            self._load_all()
            return self._page(self._live_customers(), params, "/v1/customers")
        accounts = self._world.accounts
        start = 0
        after = params.get("starting_after")
        if after:
            owner_of = getattr(self._world, "owner_of")  # noqa: B009 - optional on the protocol
            owner = owner_of(str(after))
            self._load_for(after)
            if owner is None or str(after) not in self.customers:
                raise _missing("object", str(after), "starting_after")
            start = next(i for i, a in enumerate(accounts) if a.account_id == owner) + 1
        page: list[JSON] = []
        position = start
        while position < len(accounts) and len(page) < limit:
            account_id = accounts[position].account_id
            position += 1
            if account_id not in self._loaded:
                self._load_account(account_id)
                # Generating a page of accounts takes a while: let other requests through.
                await asyncio.sleep(0)
            data = self._world.stripe(account_id)
            customer = self.customers.get(str(data.customer["id"])) if data is not None else None
            if customer is not None and not customer.get("deleted"):
                page.append(self._customer_out(customer))
        return {"object": "list", "data": page, "has_more": position < len(accounts),
                "url": "/v1/customers"}  # fmt: skip

    async def _search_customers(self, _r: WireRequest, params: JSON, _m: re.Match[str]) -> JSON:
        self._expand(params, ("total_count",))
        query = params.get("query")
        if not query:
            raise _invalid("Missing required param: query.", "query", "parameter_missing")
        clauses, join = parse_search(str(query))
        for clause in clauses:
            if clause.field not in _CUSTOMER_SEARCH_FIELDS:
                raise _invalid(f"Field '{clause.field}' is not supported for customer search.",
                               "query")  # fmt: skip
        if join == "AND":
            # One indexable clause narrows an AND query; the others only filter.
            indexable = [
                c
                for c in clauses
                if not c.negate
                and c.op == ":"
                and (c.field == "email" or (c.field == "metadata" and c.key == "account_id"))
            ]
            self._load_for_search(indexable[:1] or clauses)
        else:
            self._load_for_search(clauses)
        combine = all if join == "AND" else any
        hits = [c for c in self._live_customers()
                if combine(_customer_matches(c, cl) for cl in clauses)]  # fmt: skip
        limit = _int(params, "limit") or 10
        if not 1 <= limit <= 100:
            raise _invalid("limit must be between 1 and 100.", "limit", "parameter_invalid_integer")
        offset = 0
        if params.get("page"):
            try:
                offset = int(base64.urlsafe_b64decode(str(params["page"]).encode()).decode())
            except (ValueError, UnicodeDecodeError):
                raise _invalid("Invalid page token.", "page") from None
        page = hits[offset : offset + limit]
        has_more = offset + limit < len(hits)
        next_page = (
            base64.urlsafe_b64encode(str(offset + limit).encode()).decode() if has_more else None
        )
        out: JSON = {
            "object": "search_result",
            "data": [self._customer_out(c) for c in page],
            "has_more": has_more,
            "next_page": next_page,
            "url": "/v1/customers/search",
        }
        if "total_count" in _as_list(params.get("expand")):
            out["total_count"] = len(hits)
        return out

    # -- subscriptions ---------------------------------------------------------------------------

    _SUB_EXPAND = ("data.items.data.price.product", "data.latest_invoice")

    def _subscription_out(self, sub: JSON, expand: set[str], prefix: str = "data.") -> JSON:
        out = complete("subscription", sub)
        items = []
        for item in (sub.get("items") or {}).get("data", []):
            item_out = complete("subscription_item", {**item, "subscription": sub["id"]})
            price = item_out.get("price")
            if isinstance(price, str):
                price = self.prices.get(price, {"id": price})
            price_out = complete("price", price or {})
            if f"{prefix}items.data.price.product" in expand:
                price_out["product"] = self._product_out(price_out)
            elif isinstance(price_out.get("product"), Mapping):
                price_out["product"] = price_out["product"]["id"]
            item_out["price"] = price_out
            item_out.setdefault("plan", plan_from_price(price_out))
            items.append(item_out)
        out["items"] = {
            "object": "list",
            "data": items,
            "has_more": False,
            "url": f"/v1/subscription_items?subscription={sub['id']}",
        }
        latest = out.get("latest_invoice")
        if f"{prefix}latest_invoice" in expand and isinstance(latest, str):
            invoice = self.invoices.get(latest)
            if invoice is not None:
                out["latest_invoice"] = self._invoice_out(invoice, set(), "")
        return out

    async def _get_subscription(self, _r: WireRequest, params: JSON, m: re.Match[str]) -> JSON:
        expand = self._expand(params, ("items.data.price.product", "latest_invoice"))
        self._load_for(m["id"])
        sub = self.subscriptions.get(m["id"])
        if sub is None:
            raise _missing("subscription", m["id"])
        return self._subscription_out(sub, expand, "")

    async def _list_subscriptions(self, _r: WireRequest, params: JSON, _m: re.Match[str]) -> JSON:
        expand = self._expand(params, self._SUB_EXPAND)
        cid = self._customer_id(params)
        self._load_scope(cid)
        status = str(params.get("status") or "")
        valid = {"active", "past_due", "unpaid", "canceled", "incomplete", "incomplete_expired",
                 "trialing", "paused", "all", "ended", ""}  # fmt: skip
        if status not in valid:
            raise _invalid(f"Invalid status: must be one of {', '.join(sorted(valid - {''}))}",
                           "status")  # fmt: skip
        items = []
        candidates = (
            self._of("subscriptions", cid) if cid is not None
            else _sort_newest(self.subscriptions.values())
        )  # fmt: skip
        for sub in candidates:
            if cid is not None and sub.get("customer") != cid:
                continue
            st = sub.get("status")
            if status == "" and st in ("canceled", "incomplete_expired"):
                continue  # by default Stripe lists subscriptions that are not canceled
            if status == "ended" and st not in ("canceled", "incomplete_expired"):
                continue
            if status not in ("", "all", "ended") and st != status:
                continue
            if params.get("price") and not any(
                _ref_id(i.get("price")) == params["price"]
                for i in (sub.get("items") or {}).get("data", [])
            ):
                continue
            if not _range_match(sub.get("created"), params.get("created"), "created"):
                continue
            items.append(sub)
        page = self._page(items, params, "/v1/subscriptions")
        page["data"] = [self._subscription_out(s, expand) for s in page["data"]]
        return page

    # -- invoices --------------------------------------------------------------------------------

    def _line_out(self, line: JSON, invoice_id: str) -> JSON:
        return complete("line_item", {"invoice": invoice_id, **line})

    def _invoice_out(self, invoice: JSON, expand: set[str], prefix: str = "data.") -> JSON:
        iid = str(invoice["id"])
        out = complete("invoice", invoice)
        lines = [self._line_out(line, iid) for line in self.lines.get(iid, [])]
        out["lines"] = self._embedded(lines, f"/v1/invoices/{iid}/lines")
        if f"{prefix}payments" in expand:
            payments = [complete("invoice_payment", p) for p in self._payments_of(iid)]
            out["payments"] = self._embedded(payments, f"/v1/invoice_payments?invoice={iid}")
        return out

    def _payments_of(self, invoice_id: str) -> list[JSON]:
        return self._of("invoice_payments", invoice_id)

    async def _get_invoice(self, _r: WireRequest, params: JSON, m: re.Match[str]) -> JSON:
        expand = self._expand(params, ("payments", "customer"))
        self._load_for(m["id"])
        invoice = self.invoices.get(m["id"])
        if invoice is None:
            raise _missing("invoice", m["id"])
        return self._with_customer(self._invoice_out(invoice, expand, ""), "customer" in expand)

    def _with_customer(self, out: JSON, expand: bool) -> JSON:
        """`out` with its `customer` ID replaced by the customer object when expanded."""
        cid = out.get("customer")
        if expand and isinstance(cid, str) and cid in self.customers:
            out["customer"] = self._customer_out(self.customers[cid])
        return out

    def _invoice_prefixes(self) -> dict[str, str]:
        """Invoice number prefix → account ID (prefixes are derived from account IDs)."""
        if self._prefixes is None:
            self._prefixes = {
                f"{_digest(f'prefix|{a.account_id}') % 16**8:08X}": a.account_id
                for a in getattr(self._world, "accounts", ())
            }
        return self._prefixes

    async def _search_invoices(self, _r: WireRequest, params: JSON, _m: re.Match[str]) -> JSON:
        """Invoice search (`number:'…'`, `customer:'…'`, `status:'…'`), as Stripe answers it."""
        expand = self._expand(params, ("data.customer", "total_count"))
        query = params.get("query")
        if not query:
            raise _invalid("Missing required param: query.", "query", "parameter_missing")
        clauses, join = parse_search(str(query))
        for clause in clauses:
            if clause.field not in ("number", "customer", "status") or clause.op != ":":
                raise _invalid(f"Field '{clause.field}' is not supported for invoice search.",
                               "query")  # fmt: skip
        for clause in clauses:
            if clause.field == "number" and not clause.negate:
                owner = self._invoice_prefixes().get(clause.value.rsplit("-", 1)[0].upper())
                if owner is not None:
                    self._load_account(owner)
            elif clause.field == "customer" and not clause.negate:
                self._load_for(clause.value)
            else:
                self._load_all()

        def matches(invoice: JSON, clause: SearchClause) -> bool:
            value = str(invoice.get(clause.field) or "")
            hit = (
                value.lower() == clause.value.lower()
                if clause.field != "customer"
                else (value == clause.value)
            )
            return hit != clause.negate

        combine = all if join == "AND" else any
        hits = [i for i in _sort_newest(self.invoices.values())
                if combine(matches(i, c) for c in clauses)]  # fmt: skip
        limit = _int(params, "limit") or 10
        if not 1 <= limit <= 100:
            raise _invalid("limit must be between 1 and 100.", "limit", "parameter_invalid_integer")
        page = hits[:limit]
        out: JSON = {
            "object": "search_result",
            "data": [
                self._with_customer(self._invoice_out(i, set()), "data.customer" in expand)
                for i in page
            ],
            "has_more": len(hits) > limit,
            "next_page": None,
            "url": "/v1/invoices/search",
        }
        if "total_count" in expand:
            out["total_count"] = len(hits)
        return out

    async def _list_invoices(self, _r: WireRequest, params: JSON, _m: re.Match[str]) -> JSON:
        expand = self._expand(params, ("data.payments",))
        cid = self._customer_id(params)
        self._load_scope(cid or params.get("subscription"))
        status = params.get("status")
        if status is not None and status not in ("draft", "open", "paid", "uncollectible", "void"):
            raise _invalid("Invalid status.", "status")
        items = []
        candidates = (
            self._of("invoices", cid) if cid is not None else _sort_newest(self.invoices.values())
        )
        for inv in candidates:
            if cid is not None and inv.get("customer") != cid:
                continue
            if status is not None and inv.get("status") != status:
                continue
            if params.get("subscription") is not None:
                parent = inv.get("parent") or {}
                sub = (parent.get("subscription_details") or {}).get("subscription")
                if sub != params["subscription"]:
                    continue
            if params.get("collection_method") and (
                inv.get("collection_method") != params["collection_method"]
            ):
                continue
            if not _range_match(inv.get("created"), params.get("created"), "created"):
                continue
            if not _range_match(inv.get("due_date"), params.get("due_date"), "due_date"):
                continue
            items.append(inv)
        page = self._page(items, params, "/v1/invoices")
        page["data"] = [self._invoice_out(i, expand) for i in page["data"]]
        return page

    async def _list_lines(self, _r: WireRequest, params: JSON, m: re.Match[str]) -> JSON:
        self._expand(params, ())
        iid = m["id"]
        self._load_for(iid)
        if iid not in self.invoices:
            raise _missing("invoice", iid)
        lines = [self._line_out(line, iid) for line in self.lines.get(iid, [])]
        return self._page(lines, params, f"/v1/invoices/{iid}/lines")

    async def _get_invoice_payment(self, _r: WireRequest, params: JSON, m: re.Match[str]) -> JSON:
        self._expand(params, ())
        self._load_for(m["id"])
        payment = self.invoice_payments.get(m["id"])
        if payment is None:
            raise _missing("invoice_payment", m["id"])
        return complete("invoice_payment", payment)

    async def _list_invoice_payments(
        self, _r: WireRequest, params: JSON, _m: re.Match[str]
    ) -> JSON:
        self._expand(params, ())
        ref = params.get("payment")
        self._load_scope(
            params.get("invoice") or (ref.get("payment_intent") if isinstance(ref, dict) else None)
        )
        items = (
            self._of("invoice_payments", str(params["invoice"]))
            if params.get("invoice") is not None
            else _sort_newest(self.invoice_payments.values())
        )
        if params.get("invoice") is not None:
            items = [p for p in items if p.get("invoice") == params["invoice"]]
        if params.get("status") is not None:
            items = [p for p in items if p.get("status") == params["status"]]
        payment = params.get("payment")
        if isinstance(payment, dict):
            kind = payment.get("type")
            if kind not in ("payment_intent", "payment_record"):
                raise _invalid("payment[type] must be payment_intent or payment_record.",
                               "payment[type]")  # fmt: skip
            wanted = payment.get(str(kind))
            items = [p for p in items if (p.get("payment") or {}).get(str(kind)) == wanted]
        items = [p for p in items if _range_match(p.get("created"), params.get("created"),
                                                  "created")]  # fmt: skip
        page = self._page(items, params, "/v1/invoice_payments")
        page["data"] = [complete("invoice_payment", p) for p in page["data"]]
        return page

    async def _create_preview(self, _r: WireRequest, params: JSON, _m: re.Match[str]) -> JSON:
        self._expand(params, ())
        cid = self._customer_id(params)
        sub_id = params.get("subscription")
        if cid is None and sub_id is None:
            raise _invalid("Missing required param: customer.", "customer", "parameter_missing")
        self._load_for(cid)
        self._load_for(sub_id)
        sub: JSON | None = None
        if sub_id is not None:
            sub = self.subscriptions.get(str(sub_id))
            if sub is None:
                raise _missing("subscription", str(sub_id), "subscription")
            if cid is not None and sub.get("customer") != cid:
                raise _invalid("The subscription does not belong to this customer.",
                               "subscription")  # fmt: skip
            cid = str(sub["customer"])
        assert cid is not None
        customer = self.customers.get(cid)
        if customer is None or customer.get("deleted"):
            raise _missing("customer", cid, "customer")
        if sub is None or sub.get("status") in ("canceled", "incomplete_expired"):
            raise StripeApiError(
                400, f"No upcoming invoices for customer: {cid}", code="invoice_upcoming_none"
            )
        return self._preview(customer, sub)

    def _preview(self, customer: JSON, sub: JSON) -> JSON:
        """The next invoice of `sub`: licensed items for the next period (in advance) and
        metered usage so far in the current period (in arrears)."""
        currency = str(sub.get("currency") or customer.get("currency") or "usd")
        lines: list[JSON] = []
        period_start = period_end = 0
        for item in (sub.get("items") or {}).get("data", []):
            price = item.get("price")
            if isinstance(price, str):
                price = self.prices.get(price, {"id": price})
            price = price or {}
            recurring = price.get("recurring") or {}
            start, end = (
                int(item.get("current_period_start", 0)),
                int(item.get("current_period_end", 0)),
            )
            period_start, period_end = start, end
            if recurring.get("usage_type") == "metered":
                meter = recurring.get("meter")
                quantity = Decimal(0)
                for row in self.summaries.get((str(meter), str(customer["id"])), []):
                    if start <= int(row["start_time"]) < end:
                        quantity += Decimal(str(row["aggregated_value"]))
                line_start, line_end = start, end
            else:
                quantity = Decimal(item.get("quantity") or 1)
                line_start = end
                line_end = _add_interval(
                    end, str(recurring.get("interval", "month")),
                    int(recurring.get("interval_count", 1)),
                )  # fmt: skip
            amount, unit = _price_amount(price, quantity)
            qty_int = int(quantity) if quantity == quantity.to_integral_value() else None
            lines.append(
                {
                    "id": f"il_tmp_{hashlib.sha256(str(item.get('id')).encode()).hexdigest()[:20]}",
                    "amount": amount, "currency": currency, "subtotal": amount,
                    "description": _line_description(price, quantity),
                    "period": {"start": line_start, "end": line_end},
                    "quantity": qty_int,
                    "quantity_decimal": f"{quantity:f}",
                    "parent": {
                        "type": "subscription_item_details",
                        "subscription_item_details": {
                            "invoice_item": None, "proration": False, "proration_details": {
                                "credited_items": None},
                            "subscription": sub["id"], "subscription_item": item.get("id"),
                        },
                    },
                    "pricing": {
                        "type": "price_details",
                        "price_details": {"price": price.get("id"),
                                          "product": _ref_id(price.get("product"))},
                        "unit_amount_decimal": unit,
                    },
                }
            )  # fmt: skip
        subtotal = sum(int(line["amount"]) for line in lines)
        balance = int(customer.get("balance") or 0)
        amount_due = max(0, subtotal + balance)
        iid = f"upcoming_in_{str(sub['id']).removeprefix('sub_')}"
        invoice = {
            "id": iid, "customer": customer["id"], "currency": currency,
            "customer_email": customer.get("email"), "customer_name": customer.get("name"),
            "billing_reason": "upcoming", "created": period_end, "status": "draft",
            "period_start": period_start, "period_end": period_end,
            "subtotal": subtotal, "subtotal_excluding_tax": subtotal, "total": subtotal,
            "total_excluding_tax": subtotal, "amount_due": amount_due,
            "amount_remaining": amount_due, "starting_balance": balance,
            "automatically_finalizes_at": period_end + 3600,
            "next_payment_attempt": period_end + 3600,
            "parent": {"type": "subscription_details", "quote_details": None,
                       "subscription_details": {"metadata": sub.get("metadata") or {},
                                                "subscription": sub["id"]}},
        }  # fmt: skip
        out = complete("invoice", invoice)
        out["lines"] = self._embedded(
            [self._line_out(line, iid) for line in lines], f"/v1/invoices/{iid}/lines"
        )
        return out

    # -- charges, refunds, disputes --------------------------------------------------------------

    def _charge_out(self, charge: JSON, expand: set[str], prefix: str = "data.") -> JSON:
        out = complete("charge", charge)
        if f"{prefix}refunds" in expand:
            refunds = [complete("refund", r) for r in self._of("refunds", str(charge["id"]))]
            out["refunds"] = self._embedded(refunds, f"/v1/charges/{charge['id']}/refunds")
        return out

    async def _get_charge(self, _r: WireRequest, params: JSON, m: re.Match[str]) -> JSON:
        expand = self._expand(params, ("refunds", "customer"))
        self._load_for(m["id"])
        charge = self.charges.get(m["id"])
        if charge is None:
            raise _missing("charge", m["id"])
        return self._with_customer(self._charge_out(charge, expand, ""), "customer" in expand)

    async def _list_charges(self, _r: WireRequest, params: JSON, _m: re.Match[str]) -> JSON:
        expand = self._expand(params, ("data.refunds",))
        cid = self._customer_id(params)
        self._load_scope(cid or params.get("payment_intent"))
        candidates = (
            self._of("charges", cid) if cid is not None else _sort_newest(self.charges.values())
        )
        items = [
            c for c in candidates
            if (cid is None or c.get("customer") == cid)
            and (params.get("payment_intent") is None
                 or c.get("payment_intent") == params["payment_intent"])
            and _range_match(c.get("created"), params.get("created"), "created")
        ]  # fmt: skip
        page = self._page(items, params, "/v1/charges")
        page["data"] = [self._charge_out(c, expand) for c in page["data"]]
        return page

    async def _get_refund(self, _r: WireRequest, params: JSON, m: re.Match[str]) -> JSON:
        self._expand(params, ())
        self._load_for(m["id"])
        refund = self.refunds.get(m["id"])
        if refund is None:
            raise _missing("refund", m["id"])
        return complete("refund", refund)

    async def _list_refunds(self, _r: WireRequest, params: JSON, _m: re.Match[str]) -> JSON:
        self._expand(params, ())
        charge, intent = params.get("charge"), params.get("payment_intent")
        self._load_scope(charge or intent)
        if charge is not None and charge not in self.charges:
            raise _missing("charge", str(charge), "charge")
        candidates = (
            self._of("refunds", str(charge)) if charge is not None
            else _sort_newest(self.refunds.values())
        )  # fmt: skip
        items = [
            r for r in candidates
            if (charge is None or r.get("charge") == charge)
            and (intent is None or r.get("payment_intent") == intent)
            and _range_match(r.get("created"), params.get("created"), "created")
        ]  # fmt: skip
        page = self._page(items, params, "/v1/refunds")
        page["data"] = [complete("refund", r) for r in page["data"]]
        return page

    async def _get_payment_intent(self, _r: WireRequest, params: JSON, m: re.Match[str]) -> JSON:
        expand = self._expand(params, ("latest_charge",))
        self._load_for(m["id"])
        intent = self.payment_intents.get(m["id"])
        if intent is None:
            raise _missing("payment_intent", m["id"])
        out = complete("payment_intent", intent)
        latest = self.charges.get(str(intent.get("latest_charge")))
        if "latest_charge" in expand and latest is not None:
            out["latest_charge"] = complete("charge", latest)
        return out

    # -- writes ----------------------------------------------------------------------------------

    def _mint(self, prefix: str) -> str:
        """A new object ID in Stripe's style (`re_…`, `cbtxn_…`), unique within this server."""
        self._mint_seq += 1
        value = int.from_bytes(hashlib.sha256(f"{prefix}:{self._mint_seq}".encode()).digest())
        body = ""
        for _ in range(24):
            value, digit = divmod(value, 62)
            body += _B62[digit]
        return f"{prefix}_{body}"

    def _now(self) -> int:
        return _ts(self._clock())

    async def _create_refund(self, _r: WireRequest, params: JSON, _m: re.Match[str]) -> JSON:
        # Everything below is synchronous: validation and the change to the charge happen in
        # one step, so concurrent refunds of one charge can never take more than it has left.
        self._expand(params, ())
        charge_id, intent_id = params.get("charge"), params.get("payment_intent")
        if charge_id and intent_id:
            raise _invalid("You may only specify one of these parameters: charge, payment_intent.")
        if not charge_id and not intent_id:
            raise _invalid(
                "One of the following params should be provided for this request: "
                "payment_intent or charge.",
                code="parameter_missing",
            )
        if intent_id:
            self._load_for(intent_id)
            intent = self.payment_intents.get(str(intent_id))
            if intent is None:
                raise _missing("payment_intent", str(intent_id), "payment_intent")
            charge_id = intent.get("latest_charge")
            latest = self.charges.get(str(charge_id))
            if intent.get("status") != "succeeded" or latest is None:
                raise StripeApiError(
                    400,
                    f"This PaymentIntent ({intent_id}) does not have a successful charge to "
                    "refund.",
                    param="payment_intent",
                )
        self._load_for(charge_id)
        charge = self.charges.get(str(charge_id))
        if charge is None:
            raise _missing("charge", str(charge_id), "charge")
        amount = _int(params, "amount")
        if amount is not None and amount < 1:
            raise _invalid(
                "This value must be greater than or equal to 1.",
                "amount",
                "parameter_invalid_integer",
            )
        reason = params.get("reason")
        if reason is not None and reason not in _REFUND_REASONS:
            raise _invalid(f"Invalid reason: must be one of {', '.join(_REFUND_REASONS)}", "reason")
        metadata = _metadata(params.get("metadata"))
        if charge.get("status") != "succeeded":
            raise StripeApiError(
                400,
                f"Charge {charge['id']} has a status of {charge.get('status')} and cannot be "
                "refunded.",
                param="charge",
            )
        if charge.get("disputed") and not any(
            d.get("is_charge_refundable") for d in self._of("disputes", str(charge["id"]))
        ):
            raise StripeApiError(
                400,
                f"Charge {charge['id']} has been charged back; you cannot issue a refund.",
                code="charge_disputed",
                param="charge",
            )
        captured = int(charge.get("amount_captured") or charge.get("amount") or 0)
        remaining = captured - int(charge.get("amount_refunded") or 0)
        if remaining <= 0:
            raise StripeApiError(
                400,
                f"Charge {charge['id']} has already been refunded.",
                code="charge_already_refunded",
                param="charge",
            )
        if amount is None:
            amount = remaining
        currency = str(charge.get("currency") or "usd")
        if amount > remaining:
            raise StripeApiError(
                400,
                f"Refund amount ({Money.from_minor(amount, currency).format()}) is greater "
                f"than unrefunded amount on charge "
                f"({Money.from_minor(remaining, currency).format()})",
                code="amount_too_large",
                param="amount",
            )
        refund_id = self._mint("re")
        refund = {
            "id": refund_id,
            "amount": amount,
            "balance_transaction": self._mint("txn"),
            "charge": charge["id"],
            "created": max(self._now(), int(charge.get("created") or 0) + 1),
            "currency": currency,
            "customer": charge.get("customer"),
            "destination_details": {
                "card": {
                    "reference": None,
                    "reference_status": "pending",
                    "reference_type": "acquirer_reference_number",
                    "type": "refund",
                },
                "type": "card",
            },
            "metadata": metadata,
            "payment_intent": charge.get("payment_intent"),
            "payment_method": charge.get("payment_method"),
            "reason": reason,
            "status": "succeeded",
        }
        self._put("refunds", refund)
        charge["amount_refunded"] = captured - remaining + amount
        charge["refunded"] = charge["amount_refunded"] >= captured
        return complete("refund", refund)

    async def _create_balance_transaction(
        self, _r: WireRequest, params: JSON, m: re.Match[str]
    ) -> JSON:
        self._expand(params, ())
        self._load_for(m["id"])
        customer = self.customers.get(m["id"])
        if customer is None or customer.get("deleted"):
            raise _missing("customer", m["id"])
        amount = _int(params, "amount")
        if amount is None:
            raise _invalid("Missing required param: amount.", "amount", "parameter_missing")
        if amount == 0:
            raise _invalid("The amount must be a non-zero integer.", "amount")
        currency = params.get("currency")
        if not currency:
            raise _invalid("Missing required param: currency.", "currency", "parameter_missing")
        currency = str(currency).lower()
        own = customer.get("currency")
        if own and own != currency:
            raise _invalid(
                f"The currency {currency} does not match the customer's currency ({own}).",
                "currency",
            )
        description = params.get("description")
        if description is not None and len(str(description)) > 350:
            raise _invalid("description must be at most 350 characters.", "description")
        metadata = _metadata(params.get("metadata"))
        customer["currency"] = currency
        customer["balance"] = int(customer.get("balance") or 0) + amount
        txn = {
            "id": self._mint("cbtxn"),
            "amount": amount,
            "created": self._now(),
            "currency": currency,
            "customer": customer["id"],
            "description": description,
            "ending_balance": customer["balance"],
            "invoice": params.get("invoice"),
            "metadata": metadata,
            "type": "adjustment",
        }
        self._put("balance_transactions", txn)
        return complete("customer_balance_transaction", txn)

    async def _list_balance_transactions(
        self, _r: WireRequest, params: JSON, m: re.Match[str]
    ) -> JSON:
        self._expand(params, ())
        self._load_for(m["id"])
        if m["id"] not in self.customers:
            raise _missing("customer", m["id"])
        items = [
            t for t in self._of("balance_transactions", m["id"])
            if t.get("customer") == m["id"]
            and (params.get("invoice") is None or t.get("invoice") == params["invoice"])
            and _range_match(t.get("created"), params.get("created"), "created")
        ]  # fmt: skip
        page = self._page(items, params, f"/v1/customers/{m['id']}/balance_transactions")
        page["data"] = [complete("customer_balance_transaction", t) for t in page["data"]]
        return page

    async def _get_dispute(self, _r: WireRequest, params: JSON, m: re.Match[str]) -> JSON:
        self._expand(params, ())
        self._load_for(m["id"])
        dispute = self.disputes.get(m["id"])
        if dispute is None:
            raise _missing("dispute", m["id"])
        return complete("dispute", dispute)

    async def _list_disputes(self, _r: WireRequest, params: JSON, _m: re.Match[str]) -> JSON:
        self._expand(params, ())
        charge, intent = params.get("charge"), params.get("payment_intent")
        self._load_scope(charge or intent)
        candidates = (
            self._of("disputes", str(charge)) if charge is not None
            else _sort_newest(self.disputes.values())
        )  # fmt: skip
        items = [
            d for d in candidates
            if (charge is None or d.get("charge") == charge)
            and (intent is None or d.get("payment_intent") == intent)
            and _range_match(d.get("created"), params.get("created"), "created")
        ]  # fmt: skip
        page = self._page(items, params, "/v1/disputes")
        page["data"] = [complete("dispute", d) for d in page["data"]]
        return page

    # -- prices and meters -----------------------------------------------------------------------

    async def _get_price(self, _r: WireRequest, params: JSON, m: re.Match[str]) -> JSON:
        expand = self._expand(params, ("product",))
        self._load_until(lambda: m["id"] in self.prices)
        price = self.prices.get(m["id"])
        if price is None:
            raise _missing("price", m["id"])
        out = complete("price", price)
        if "product" in expand:
            out["product"] = self._product_out(out)
        return out

    def _product_out(self, price: Mapping[str, Any]) -> JSON:
        """The expanded product of `price`. A world without a product catalogue gets one made up
        from the price (named after its nickname), since Stripe always expands when asked."""
        product_id = str(_ref_id(price.get("product")))
        product = self.products.get(product_id)
        if product is None:
            created = price.get("created", 0)
            product = {
                "id": product_id,
                "name": str(price.get("nickname") or product_id),
                "created": created,
                "updated": created,
                "default_price": price.get("id"),
            }
        return complete("product", product)

    async def _get_meter(self, _r: WireRequest, params: JSON, m: re.Match[str]) -> JSON:
        self._expand(params, ())
        self._load_until(lambda: m["id"] in self.meters)
        meter = self.meters.get(m["id"])
        if meter is None:
            raise _missing("billing.meter", m["id"])
        return complete("billing.meter", meter)

    async def _list_meters(self, _r: WireRequest, params: JSON, _m: re.Match[str]) -> JSON:
        self._expand(params, ())
        self._load_all()  # the meters any customer uses
        status = params.get("status")
        items = [
            mt for mt in _sort_newest(self.meters.values())
            if status is None or mt.get("status", "active") == status
        ]  # fmt: skip
        page = self._page(items, params, "/v1/billing/meters")
        page["data"] = [complete("billing.meter", mt) for mt in page["data"]]
        return page

    async def _list_summaries(self, _r: WireRequest, params: JSON, m: re.Match[str]) -> JSON:
        self._expand(params, ())
        meter_id = m["id"]
        cid = self._customer_id(params, required=True)
        assert cid is not None
        self._load_for(cid)
        self._load_until(lambda: meter_id in self.meters)
        if meter_id not in self.meters:
            raise _missing("billing.meter", meter_id)
        if cid not in self.customers:
            raise _missing("customer", cid, "customer")
        start, end = _int(params, "start_time"), _int(params, "end_time")
        for name, value in (("start_time", start), ("end_time", end)):
            if value is None:
                raise _invalid(f"Missing required param: {name}.", name, "parameter_missing")
            if value % 60:
                raise _invalid(f"{name} must be aligned with minute boundaries.", name)
        assert start is not None and end is not None
        if end <= start:
            raise _invalid("end_time must be after start_time.", "end_time")
        window = params.get("value_grouping_window")
        if window not in (None, "day", "hour"):
            raise _invalid("value_grouping_window must be one of day, hour.",
                           "value_grouping_window")  # fmt: skip
        rows = [
            r for r in self.summaries.get((meter_id, cid), [])
            if start <= int(r["start_time"]) and int(r["end_time"]) <= end
        ]  # fmt: skip
        if window is None:
            # One summary over the whole range.
            total = sum((Decimal(str(r["aggregated_value"])) for r in rows), Decimal(0))
            digest = hashlib.sha256(f"{meter_id}{cid}{start}{end}".encode()).hexdigest()[:24]
            rows = [{"id": f"mtrusg_{digest}", "aggregated_value": total, "start_time": start,
                     "end_time": end, "meter": meter_id}]  # fmt: skip
        # Newest first, as Stripe lists them.
        rows = sorted(rows, key=lambda r: -int(r["start_time"]))
        out = [complete("billing.meter_event_summary", {**r, "meter": meter_id}) for r in rows]
        return self._page(out, params, f"/v1/billing/meters/{meter_id}/event_summaries")


# --- pricing helpers (upcoming invoice) ---------------------------------------------------------


def _ref_id(value: Any) -> str | None:
    """The ID of an expandable field, expanded or not."""
    if isinstance(value, Mapping):
        return str(value.get("id"))
    return None if value is None else str(value)


def _unit_decimal(price: Mapping[str, Any]) -> Decimal | None:
    raw = price.get("unit_amount_decimal")
    if raw is None:
        raw = price.get("unit_amount")
    if raw is None:
        return None
    try:
        return Decimal(str(raw))
    except InvalidOperation:
        return None


def _price_amount(price: Mapping[str, Any], quantity: Decimal) -> tuple[int, str | None]:
    """Amount in minor units for `quantity` of `price` (per-unit or tiered), and the unit price."""
    transform = price.get("transform_quantity")
    if transform:
        divided = quantity / Decimal(int(transform.get("divide_by", 1)))
        rounding = "ROUND_UP" if transform.get("round") == "up" else "ROUND_DOWN"
        quantity = divided.quantize(Decimal(1), rounding=rounding)
    if price.get("billing_scheme") == "tiered" and price.get("tiers"):
        total = _tiered(price, quantity)
        return int(total.quantize(Decimal(1), rounding=ROUND_HALF_EVEN)), None
    unit = _unit_decimal(price)
    if unit is None:
        return 0, None
    total = quantity * unit
    return int(total.quantize(Decimal(1), rounding=ROUND_HALF_EVEN)), f"{unit:f}"


def _tiered(price: Mapping[str, Any], quantity: Decimal) -> Decimal:
    tiers = list(price.get("tiers") or [])
    total = Decimal(0)
    previous = Decimal(0)
    for tier in tiers:
        upto = tier.get("up_to")
        cap = Decimal(str(upto)) if upto is not None else None
        unit = Decimal(str(tier.get("unit_amount_decimal") or tier.get("unit_amount") or 0))
        flat = Decimal(str(tier.get("flat_amount_decimal") or tier.get("flat_amount") or 0))
        if price.get("tiers_mode") == "volume":
            if cap is None or quantity <= cap:
                return quantity * unit + flat
            continue
        if quantity <= previous:
            break
        in_tier = (min(quantity, cap) if cap is not None else quantity) - previous
        total += in_tier * unit + flat
        if cap is None:
            break
        previous = cap
    return total


def _line_description(price: Mapping[str, Any], quantity: Decimal) -> str:
    name = price.get("nickname") or _ref_id(price.get("product")) or "item"
    return f"{quantity:f} × {name}"


def _add_interval(ts: int, interval: str, count: int) -> int:
    dt = datetime.fromtimestamp(ts, tz=UTC)
    if interval in ("month", "year"):
        months = count * (12 if interval == "year" else 1)
        year, month = divmod(dt.month - 1 + months, 12)
        year += dt.year
        day = min(dt.day, calendar.monthrange(year, month + 1)[1])
        return _ts(dt.replace(year=year, month=month + 1, day=day))
    seconds = {"day": 86400, "week": 7 * 86400}.get(interval, 86400)
    return ts + seconds * count
