"""Orb's REST API served from the sandbox world, in Orb's wire format (a `WireRouter`).

What it speaks (notes/providers.md §2, §8.3; spec orb-openapi.json): paths under `/v1`; Bearer
auth; JSON objects exactly as the world stores them (decimal strings for money, ISO times with
offsets); lists as `{data, pagination_metadata: {has_more, next_cursor}}` with `limit` (1–100,
default 20) and an opaque `cursor`; bracket filters (`customer_id[]`, `status[]`,
`invoice_date[gte]`…); RFC 7807 errors whose `type` is `https://docs.withorb.com/reference/
error-responses#<code>`.

Writes: `POST /customers/{id}/credits/ledger_entry` (also by `external_customer_id`) with
`entry_type: increment` adds a credit block and a ledger entry (answered 201 with the entry, as the
spec says); both then show in `GET …/credits` (the balance) and `GET …/credits/ledger`. Other
entry types are refused (the sandbox has no use for them). Writes live in an overlay per server
instance: the world's shared objects are never changed.

Idempotency as Orb documents it: `Idempotency-Key` (at most 64 characters) is echoed on the
answer; the same key and payload replays the first success with `Idempotent-Replayed: true`; the
same key with another payload is 409 `resource_conflict`; a duplicate while the first request is
still running is 409 `resource_conflict` too ("still in progress", retry later with the same
key); failed requests are not stored. The key is claimed before anything awaits, and the write
applies in one synchronous step after the optional `write_delay`, so concurrent requests make one
entry.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Protocol
from urllib.parse import unquote

from integrations.sandbox.idempotency import (
    MISMATCH,
    IdempotencyStore,
    InFlight,
    Replay,
    fingerprint,
)
from integrations.sandbox.wire import WireRequest, WireResponse

ERROR_TYPE: Final = "https://docs.withorb.com/reference/error-responses#{code}"
DEFAULT_LIMIT: Final = 20
MAX_LIMIT: Final = 100
_INVOICE_DEFAULT_STATUSES: Final = ("issued", "paid", "synced")
_INVOICE_STATUSES: Final = frozenset({"draft", "issued", "paid", "synced", "void"})
_SUBSCRIPTION_STATUSES: Final = frozenset({"active", "ended", "upcoming"})
#: Orb's documented limit on `Idempotency-Key`.
MAX_IDEMPOTENCY_KEY: Final = 64
_ENTRY_TYPES: Final = frozenset(
    {"increment", "decrement", "expiration_change", "void", "amendment"}
)
#: `AddIncrementCreditLedgerEntryRequestParams` (spec: `additionalProperties: false`).
_INCREMENT_FIELDS: Final = frozenset(
    {
        "entry_type", "amount", "currency", "description", "metadata", "expiry_date",
        "effective_date", "per_unit_cost_basis", "invoice_settings", "filters",
    }
)  # fmt: skip
_LEDGER_ENTRY_TYPES: Final = frozenset(
    {"increment", "decrement", "expiration_change", "credit_block_expiry", "void",
     "void_initiated", "amendment"}
)  # fmt: skip
_B62: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


# --- the part of the sandbox world this server reads ------------------------------------------


class _OrbData(Protocol):
    """One Orb-billed account's objects, in Orb's wire shapes."""

    customer: dict[str, Any]
    subscriptions: list[dict[str, Any]]
    invoices: list[dict[str, Any]]
    costs: list[dict[str, Any]]
    credit_blocks: list[dict[str, Any]]
    ledger_entries: list[dict[str, Any]]


class _Account(Protocol):
    @property
    def account_id(self) -> str: ...

    @property
    def orb_customer_id(self) -> str | None: ...


class OrbWorld(Protocol):
    """What `OrbSandboxServer` needs of `integrations.sandbox.world.SandboxWorld`."""

    @property
    def now(self) -> datetime: ...

    @property
    def accounts(self) -> Sequence[_Account]: ...

    def orb(self, account_id: str) -> _OrbData | None: ...

    def owner_of(self, object_id: str) -> str | None: ...


# --- errors -----------------------------------------------------------------------------------


class OrbApiError(Exception):
    """An error answer: `status`, Orb's `type` code fragment, `title` and `detail`."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str | None = None,
        *,
        validation_errors: list[Any] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.validation_errors = validation_errors

    def response(self) -> WireResponse:
        """The RFC 7807 body Orb sends."""
        body: dict[str, Any] = {
            "type": ERROR_TYPE.format(code=self.code),
            "status": self.status,
            "title": self.title,
            "detail": self.detail,
        }
        if self.validation_errors is not None:
            body["validation_errors"] = self.validation_errors
        return WireResponse.of_json(body, status=self.status)


def _not_found(what: str, ident: str) -> OrbApiError:
    return OrbApiError(
        404, "404-resource-not-found", "Resource not found", f"{what} `{ident}` was not found."
    )


def _invalid(param: str, message: str, where: str = "query") -> OrbApiError:
    return OrbApiError(
        400,
        "400-request-validation-errors",
        "Request validation error",
        f"{param}: {message}",
        validation_errors=[{"loc": [where, param], "msg": message}],
    )


def _body_invalid(param: str, message: str) -> OrbApiError:
    return _invalid(param, message, "body")


def _constraint(detail: str) -> OrbApiError:
    return OrbApiError(400, "400-constraint-violation", "Constraint violation", detail)


def _conflict(detail: str) -> OrbApiError:
    return OrbApiError(409, "409-resource-conflict", "Resource conflict", detail)


# --- routing ----------------------------------------------------------------------------------

Handler = Callable[[WireRequest, Mapping[str, str]], Awaitable[WireResponse]]


@dataclass(frozen=True, slots=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    write: bool = False


class OrbSandboxServer:
    """Orb's API over the sandbox world. `api_key=None` accepts any non-empty Bearer key;
    `write_delay`: seconds a write waits after claiming its key, before it applies."""

    def __init__(
        self,
        world: OrbWorld,
        *,
        api_key: str | None = None,
        write_delay: float = 0.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.world = world
        self.api_key = api_key
        self.write_delay = write_delay
        self._keys = IdempotencyStore()
        started = time.monotonic()
        self._clock = clock or (lambda: world.now + timedelta(seconds=time.monotonic() - started))
        self._mint_seq = 0
        #: The write overlay, per Orb customer ID: blocks and ledger entries added here.
        self._new_blocks: dict[str, list[dict[str, Any]]] = {}
        self._new_entries: dict[str, list[dict[str, Any]]] = {}
        # The world generates an account's objects on first access; index only the account list
        # (Orb customer ID → our account ID, which is the Orb `external_customer_id`) so that
        # serving one customer never builds the others.
        self._account_of: dict[str, str] = {
            a.orb_customer_id: a.account_id for a in world.accounts if a.orb_customer_id
        }
        self._orb_accounts = set(self._account_of.values())
        seg = r"(?P<{}>[^/]+)"
        self._routes: list[_Route] = []
        for method, path, handler in (
            ("GET", "/customers", self._list_customers),
            ("GET", "/customers/external_customer_id/{ext}", self._get_customer),
            ("GET", "/customers/external_customer_id/{ext}/credits", self._list_credits),
            ("GET", "/customers/external_customer_id/{ext}/credits/ledger", self._list_ledger),
            ("POST", "/customers/external_customer_id/{ext}/credits/ledger_entry",
             self._create_ledger_entry),
            ("GET", "/customers/external_customer_id/{ext}/costs", self._list_costs),
            ("GET", "/customers/{cid}", self._get_customer),
            ("GET", "/customers/{cid}/credits", self._list_credits),
            ("GET", "/customers/{cid}/credits/ledger", self._list_ledger),
            ("POST", "/customers/{cid}/credits/ledger_entry", self._create_ledger_entry),
            ("GET", "/customers/{cid}/costs", self._list_costs),
            ("GET", "/subscriptions", self._list_subscriptions),
            ("GET", "/subscriptions/{sid}", self._get_subscription),
            ("GET", "/invoices", self._list_invoices),
            ("GET", "/invoices/{iid}", self._get_invoice),
        ):  # fmt: skip
            regex = re.sub(r"\{(\w+)\}", lambda m: seg.format(m.group(1)), path)
            pattern = re.compile(f"^/v1{regex}/?$")
            self._routes.append(_Route(method, pattern, handler, write=method == "POST"))

    async def handle(self, request: WireRequest) -> WireResponse:
        """Answer one request: authenticate, route, and turn `OrbApiError`s into RFC 7807."""
        try:
            self._authenticate(request)
            for route in self._routes:
                match = route.pattern.match(request.path)
                if match and route.method == request.method:
                    params = {k: unquote(v) for k, v in match.groupdict().items()}
                    if route.write:
                        return await self._write(route, request, params)
                    return await route.handler(request, params)
            raise OrbApiError(
                404, "404-url-not-found", "URL not found", f"{request.method} {request.path}"
            )
        except OrbApiError as exc:
            return exc.response()

    async def _write(
        self, route: _Route, request: WireRequest, params: Mapping[str, str]
    ) -> WireResponse:
        """A write under Orb's idempotency rules (module docstring)."""
        key = request.headers.get("idempotency-key")
        if key is None:
            return await self._apply(route, request, params)
        if not key or len(key) > MAX_IDEMPOTENCY_KEY:
            raise _invalid(
                "Idempotency-Key", f"must be 1 to {MAX_IDEMPOTENCY_KEY} characters", "header"
            )
        try:
            payload: Any = json.loads(request.body) if request.body else {}
        except ValueError:
            payload = request.body.decode(errors="replace")
        echo = {"Idempotency-Key": key}
        # Checked and claimed in one synchronous step: no await before the claim is recorded.
        verdict = self._keys.claim(key, fingerprint(request.method, request.path, payload))
        if verdict is MISMATCH:
            raise _conflict(
                "This Idempotency-Key was already used with a different request payload."
            )
        if isinstance(verdict, InFlight):
            raise _conflict(
                "A request with this Idempotency-Key is still in progress; retry later with "
                "the same key."
            )
        if isinstance(verdict, Replay):
            stored = verdict.response
            headers = {**stored.headers, **echo, "Idempotent-Replayed": "true"}
            return WireResponse(stored.status, stored.body, headers)
        try:
            answer = await self._apply(route, request, params)
        except BaseException:
            self._keys.release(key)  # only successes are kept: a retry runs again
            raise
        answer = WireResponse(answer.status, answer.body, {**answer.headers, **echo})
        self._keys.finish(key, answer)
        return answer

    async def _apply(
        self, route: _Route, request: WireRequest, params: Mapping[str, str]
    ) -> WireResponse:
        """Wait `write_delay`, then run the write handler (which does not await)."""
        if self.write_delay:
            await asyncio.sleep(self.write_delay)
        return await route.handler(request, params)

    def expire_idempotency_keys(self) -> int:
        """Forget every answered idempotency key, as Orb does after 48 hours."""
        return self._keys.expire()

    def _authenticate(self, request: WireRequest) -> None:
        auth = request.headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key or (self.api_key and key != self.api_key):
            raise OrbApiError(
                401,
                "401-authentication-error",
                "Authentication error",
                "The API key is missing or not valid.",
            )

    # -- lookups --

    def _by_customer_id(self, customer_id: str) -> _OrbData | None:
        account_id = self._account_of.get(customer_id)
        data = self.world.orb(account_id) if account_id else None
        return data if data is not None and data.customer.get("id") == customer_id else None

    def _by_external_id(self, external_id: str) -> _OrbData | None:
        data = self.world.orb(external_id) if external_id in self._orb_accounts else None
        if data is not None and data.customer.get("external_customer_id") == external_id:
            return data
        return None

    def _customer_data(self, params: Mapping[str, str]) -> _OrbData:
        if "ext" in params:
            data = self._by_external_id(params["ext"])
            if data is None:
                raise _not_found("Customer with external_customer_id", params["ext"])
            return data
        data = self._by_customer_id(params["cid"])
        if data is None:
            raise _not_found("Customer", params["cid"])
        return data

    def _selected(self, customer_ids: Iterable[str], external_ids: Iterable[str]) -> list[_OrbData]:
        """The customers a list request filters on; every Orb customer when it names none."""
        ids, externals = list(customer_ids), list(external_ids)
        if not ids and not externals:
            return list(self._all_data())
        found = [self._by_customer_id(c) for c in ids] + [
            self._by_external_id(e) for e in externals
        ]
        unique = {id(d): d for d in found if d is not None}
        return list(unique.values())

    def _all_data(self) -> Iterable[_OrbData]:
        for account_id in self._account_of.values():
            data = self.world.orb(account_id)
            if data is not None:
                yield data

    def _owner_data(self, object_id: str) -> Iterable[_OrbData]:
        """The account owning an object ID (the world encodes owners in IDs), else all."""
        owner = self.world.owner_of(object_id)
        if owner is not None and owner in self._orb_accounts:
            data = self.world.orb(owner)
            return [data] if data is not None else []
        return self._all_data()

    # -- handlers --

    async def _get_customer(self, request: WireRequest, params: Mapping[str, str]) -> WireResponse:
        return WireResponse.of_json(self._customer_data(params).customer)

    async def _list_customers(
        self, request: WireRequest, params: Mapping[str, str]
    ) -> WireResponse:
        if not any(k.startswith("created_at[") for k, _ in request.query):
            # Unfiltered: page over the account index and build only the page's customers, so
            # listing 10,000 customers never holds them all (the order is the world's, stable).
            ids = list(self._account_of.values())
            await self._build_page(ids, request)
            return _page(_LazyCustomers(self.world, ids), request)
        items = [d.customer for d in self._all_data()]
        items = _filter_times(items, "created_at", request)
        items.sort(key=lambda c: str(c.get("created_at", "")), reverse=True)
        return _page(items, request)

    async def _build_page(self, account_ids: list[str], request: WireRequest) -> None:
        """Generate the accounts a customer page shows, letting other requests through between
        them (a page of 100 new accounts takes a while); `_page` validates the request."""
        try:
            offset = _decode_cursor(request.q("cursor"))
            limit = int(request.q("limit") or DEFAULT_LIMIT)
        except (ValueError, OrbApiError):
            return
        for account_id in account_ids[offset : offset + min(max(limit, 0), MAX_LIMIT)]:
            self.world.orb(account_id)
            await asyncio.sleep(0)

    async def _get_subscription(
        self, request: WireRequest, params: Mapping[str, str]
    ) -> WireResponse:
        for data in self._owner_data(params["sid"]):
            for sub in data.subscriptions:
                if sub.get("id") == params["sid"]:
                    return WireResponse.of_json(sub)
        raise _not_found("Subscription", params["sid"])

    async def _list_subscriptions(
        self, request: WireRequest, params: Mapping[str, str]
    ) -> WireResponse:
        statuses = set(request.q_all("status[]"))
        if request.q("status"):
            statuses.add(str(request.q("status")))
        if not statuses <= _SUBSCRIPTION_STATUSES:
            raise _invalid("status", f"must be one of {sorted(_SUBSCRIPTION_STATUSES)}")
        items: list[dict[str, Any]] = []
        customers = self._selected(
            request.q_all("customer_id[]"), request.q_all("external_customer_id[]")
        )
        for data in customers:
            items.extend(
                s
                for s in data.subscriptions
                if (not statuses or s.get("status") in statuses)
                and _matches(s, "plan_id", _get(s, "plan", "id"), request)
                and _matches(s, "external_plan_id", _get(s, "plan", "external_plan_id"), request)
            )
        items = _filter_times(items, "created_at", request)
        items.sort(key=lambda s: str(s.get("created_at", "")), reverse=True)
        return _page(items, request)

    async def _get_invoice(self, request: WireRequest, params: Mapping[str, str]) -> WireResponse:
        for data in self._owner_data(params["iid"]):
            for inv in data.invoices:
                if inv.get("id") == params["iid"]:
                    return WireResponse.of_json(inv)
        raise _not_found("Invoice", params["iid"])

    async def _list_invoices(self, request: WireRequest, params: Mapping[str, str]) -> WireResponse:
        statuses = set(request.q_all("status[]")) or set(_INVOICE_DEFAULT_STATUSES)
        if not statuses <= _INVOICE_STATUSES:
            raise _invalid("status[]", f"must be among {sorted(_INVOICE_STATUSES)}")
        customer_id = request.q("customer_id")
        external = request.q("external_customer_id")
        subscription_id = request.q("subscription_id")
        customers = self._selected(
            [customer_id] if customer_id is not None else [],
            [external] if external is not None else [],
        )
        if customer_id is not None and external is not None:
            # Both filters must hold: keep the customer only if they name the same one.
            customers = [
                d
                for d in customers
                if d.customer.get("external_customer_id") == external
                and d.customer.get("id") == customer_id
            ]
        items: list[dict[str, Any]] = []
        for data in customers:
            items.extend(
                inv
                for inv in data.invoices
                if inv.get("status") in statuses
                and (subscription_id is None or _get(inv, "subscription", "id") == subscription_id)
            )
        items = _filter_times(items, "invoice_date", request)
        items = _filter_times(items, "due_date", request)
        if request.q("is_recurring") is not None:
            recurring = request.q("is_recurring") == "true"
            items = [i for i in items if (i.get("invoice_source") == "subscription") == recurring]
        # Newest invoice date first, as Orb lists them.
        items.sort(key=lambda i: _parse_time(i.get("invoice_date")) or _EPOCH, reverse=True)
        return _page(items, request)

    async def _list_credits(self, request: WireRequest, params: Mapping[str, str]) -> WireResponse:
        data = self._customer_data(params)
        # The sandbox keeps one ledger per customer, in the customer's currency; a request for
        # another real currency sees an empty ledger, as in Orb.
        currency = request.q("currency")
        cust_currency = str(data.customer.get("currency") or "").upper()
        if currency and currency.upper() not in (cust_currency, "CREDITS"):
            return _page([], request)
        include_all = request.q("include_all_blocks") == "true"
        now = self.world.now
        blocks = [
            b
            for b in self._blocks_of(data)
            if include_all
            or (
                Decimal(str(b.get("balance", 0))) != 0
                and ((exp := _parse_time(b.get("expiry_date"))) is None or exp > now)
            )
        ]
        blocks = _filter_times(blocks, "effective_date", request)
        return _page(blocks, request)

    async def _list_ledger(self, request: WireRequest, params: Mapping[str, str]) -> WireResponse:
        data = self._customer_data(params)
        currency = request.q("currency")
        cust_currency = str(data.customer.get("currency") or "").upper()
        if currency and currency.upper() not in (cust_currency, "CREDITS"):
            return _page([], request)
        entry_type = request.q("entry_type")
        if entry_type is not None and entry_type not in _LEDGER_ENTRY_TYPES:
            raise _invalid("entry_type", f"must be one of {sorted(_LEDGER_ENTRY_TYPES)}")
        status = request.q("entry_status")
        if status is not None and status not in ("committed", "pending"):
            raise _invalid("entry_status", "must be `committed` or `pending`")
        minimum = request.q("minimum_amount")
        try:
            floor = Decimal(minimum) if minimum else None
        except InvalidOperation:
            raise _invalid("minimum_amount", "must be a number") from None
        entries = [
            e
            for e in self._entries_of(data)
            if (entry_type is None or e.get("entry_type") == entry_type)
            and (status is None or e.get("entry_status") == status)
            and (floor is None or Decimal(str(e.get("amount", 0))) >= floor)
        ]
        entries = _filter_times(entries, "created_at", request)
        # Newest first: the highest ledger sequence number leads.
        entries.sort(key=lambda e: int(e.get("ledger_sequence_number") or 0), reverse=True)
        return _page(entries, request)

    async def _create_ledger_entry(
        self, request: WireRequest, params: Mapping[str, str]
    ) -> WireResponse:
        # No await from here on: validation and the new block and entry are one step.
        data = self._customer_data(params)
        try:
            body = json.loads(request.body, parse_float=Decimal) if request.body else None
        except ValueError:
            raise _body_invalid("body", "is not valid JSON") from None
        if not isinstance(body, dict):
            raise _body_invalid("body", "must be a JSON object")
        entry_type = body.get("entry_type")
        if entry_type not in _ENTRY_TYPES:
            raise _body_invalid("entry_type", f"must be one of {sorted(_ENTRY_TYPES)}")
        if entry_type != "increment":
            raise _constraint(f"The sandbox supports only `increment` entries, not {entry_type}.")
        unknown = sorted(set(body) - _INCREMENT_FIELDS)
        if unknown:
            raise _body_invalid(unknown[0], "extra fields not permitted")
        amount = body.get("amount")
        if isinstance(amount, bool) or not isinstance(amount, int | Decimal):
            raise _body_invalid("amount", "field required and must be a number")
        amount = Decimal(amount)
        if amount <= 0:
            raise _constraint("An increment must add a positive amount of credits.")
        cust_currency = str(data.customer.get("currency") or "")
        currency = body.get("currency")
        if currency is not None and not isinstance(currency, str):
            raise _body_invalid("currency", "must be a string")
        if currency is not None and currency.upper() != cust_currency.upper():
            raise _constraint(
                f"Currency {currency} does not match the customer's invoicing currency "
                f"{cust_currency or '(none)'}; the sandbox keeps one ledger per customer."
            )
        description = body.get("description")
        if description is not None and not isinstance(description, str):
            raise _body_invalid("description", "must be a string")
        metadata = body.get("metadata")
        if metadata is not None and (
            not isinstance(metadata, dict)
            or not all(isinstance(v, str | None) for v in metadata.values())
        ):
            raise _body_invalid("metadata", "must map keys to strings or null")
        if body.get("invoice_settings") is not None:
            raise _constraint("The sandbox does not invoice credits (invoice_settings).")
        if body.get("filters") not in (None, []):
            raise _constraint("The sandbox does not support block filters.")
        cost_basis = body.get("per_unit_cost_basis")
        if cost_basis is not None and not isinstance(cost_basis, str):
            raise _body_invalid("per_unit_cost_basis", "must be a string")
        now = self._clock().replace(microsecond=0)
        effective = _body_time(body, "effective_date") or now
        expiry = _body_time(body, "expiry_date")
        if expiry is not None and expiry <= effective:
            raise _constraint("expiry_date must be after effective_date.")
        customer = data.customer
        cid = str(customer["id"])
        starting = sum(
            (Decimal(str(b.get("balance", 0))) for b in self._live_blocks(data)), Decimal(0)
        )
        block_id = self._mint()
        block = {
            "id": block_id,
            "balance": float(amount),
            "credit_allocation": None,
            "credit_block_source": "manual",
            "credit_commitment": None,
            "effective_date": effective.isoformat(),
            "expiry_date": expiry.isoformat() if expiry else None,
            "filters": [],
            "maximum_initial_balance": float(amount),
            "metadata": {},
            "per_unit_cost_basis": cost_basis,
            "status": "active",
        }
        sequence = max(
            (int(e.get("ledger_sequence_number") or 0) for e in self._entries_of(data)), default=0
        )
        entry = {
            "id": self._mint(),
            "amount": float(amount),
            "created_at": now.isoformat(),
            "credit_block": {
                "id": block_id,
                "expiry_date": block["expiry_date"],
                "filters": [],
                "per_unit_cost_basis": cost_basis,
            },
            "currency": cust_currency.upper() or "USD",
            "customer": {
                "id": cid,
                "external_customer_id": customer.get("external_customer_id"),
            },
            "description": description,
            "ending_balance": float(starting + amount),
            "entry_status": "committed",
            "entry_type": "increment",
            "ledger_sequence_number": sequence + 1,
            "metadata": {k: v for k, v in (metadata or {}).items() if v is not None},
            "starting_balance": float(starting),
            "created_invoices": None,
        }
        self._new_blocks.setdefault(cid, []).append(block)
        self._new_entries.setdefault(cid, []).append(entry)
        return WireResponse.of_json(entry, status=201)

    def _blocks_of(self, data: _OrbData) -> list[dict[str, Any]]:
        """The customer's credit blocks: the world's, then those added here."""
        return [*data.credit_blocks, *self._new_blocks.get(str(data.customer["id"]), [])]

    def _entries_of(self, data: _OrbData) -> list[dict[str, Any]]:
        """The customer's ledger entries: the world's, then those added here."""
        return [*data.ledger_entries, *self._new_entries.get(str(data.customer["id"]), [])]

    def _live_blocks(self, data: _OrbData) -> list[dict[str, Any]]:
        now = self.world.now
        return [
            b
            for b in self._blocks_of(data)
            if (exp := _parse_time(b.get("expiry_date"))) is None or exp > now
        ]

    def _mint(self) -> str:
        """A new opaque Orb ID (16 base62 characters), unique within this server."""
        self._mint_seq += 1
        value = int.from_bytes(hashlib.sha256(f"orb:{self._mint_seq}".encode()).digest())
        chars = []
        for _ in range(16):
            value, digit = divmod(value, 62)
            chars.append(_B62[digit])
        return "".join(chars)

    async def _list_costs(self, request: WireRequest, params: Mapping[str, str]) -> WireResponse:
        data = self._customer_data(params)
        view_mode = request.q("view_mode") or "cumulative"
        if view_mode not in ("periodic", "cumulative"):
            raise _invalid("view_mode", "must be `periodic` or `cumulative`")
        start = _query_time(request, "timeframe_start")
        end = _query_time(request, "timeframe_end")
        if start is None:
            start = self._current_period_start(data)
        if end is None:
            end = self.world.now
        if end <= start:
            raise _invalid("timeframe_end", "must be after timeframe_start")
        # Timeframe bounds: start inclusive, end exclusive (whole daily buckets only).
        buckets = [
            b
            for b in data.costs
            if (bs := _parse_time(b.get("timeframe_start"))) is not None
            and (be := _parse_time(b.get("timeframe_end"))) is not None
            and bs >= start
            and be <= end
        ]
        buckets.sort(key=lambda b: _parse_time(b.get("timeframe_start")) or _EPOCH)
        if view_mode == "cumulative":
            buckets = _cumulative(buckets)
        return WireResponse.of_json({"data": buckets})

    def _current_period_start(self, data: _OrbData) -> datetime:
        """Orb's default timeframe: the active subscription's current billing period."""
        for sub in data.subscriptions:
            if sub.get("status") == "active":
                started = _parse_time(sub.get("current_billing_period_start_date"))
                if started is not None:
                    return started
        return self.world.now - timedelta(days=30)


# --- list helpers -----------------------------------------------------------------------------

_EPOCH: Final = datetime.fromtimestamp(0, UTC)


class _LazyCustomers(Sequence[Mapping[str, Any]]):
    """The Orb customers of `account_ids` as a sequence whose items are built on access."""

    def __init__(self, world: OrbWorld, account_ids: list[str]) -> None:
        self._world = world
        self._ids = account_ids

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self._ids)))]
        data = self._world.orb(self._ids[index])
        assert data is not None, "the index lists only Orb accounts"
        return data.customer


def _page(items: Sequence[Mapping[str, Any]], request: WireRequest) -> WireResponse:
    """One page of `items` with `pagination_metadata`; the cursor is an opaque offset token."""
    raw_limit = request.q("limit")
    try:
        limit = int(raw_limit) if raw_limit is not None else DEFAULT_LIMIT
    except ValueError:
        raise _invalid("limit", "must be an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise _invalid("limit", f"must be between 1 and {MAX_LIMIT}")
    offset = _decode_cursor(request.q("cursor"))
    chunk = list(items[offset : offset + limit])
    more = offset + limit < len(items)
    return WireResponse.of_json(
        {
            "data": chunk,
            "pagination_metadata": {
                "has_more": more,
                "next_cursor": _encode_cursor(offset + limit) if more else None,
            },
        }
    )


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"orb-sandbox:{offset}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, number = text.partition(":")
        if prefix != "orb-sandbox" or not number.isdigit():
            raise ValueError(cursor)
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _invalid("cursor", "is not a valid cursor") from None


def _filter_times(
    items: list[dict[str, Any]], field: str, request: WireRequest
) -> list[dict[str, Any]]:
    """Apply `field[gt|gte|lt|lte]` filters (ISO times or dates)."""
    bounds = {op: _query_time(request, f"{field}[{op}]") for op in ("gt", "gte", "lt", "lte")}
    exact = _query_time(request, field) if field == "due_date" else None
    if all(v is None for v in bounds.values()) and exact is None:
        return items
    out = []
    for item in items:
        when = _parse_time(item.get(field))
        if when is None:
            continue
        if (
            (bounds["gt"] is not None and not when > bounds["gt"])
            or (bounds["gte"] is not None and not when >= bounds["gte"])
            or (bounds["lt"] is not None and not when < bounds["lt"])
            or (bounds["lte"] is not None and not when <= bounds["lte"])
            or (exact is not None and when.date() != exact.date())
        ):
            continue
        out.append(item)
    return out


def _matches(obj: Mapping[str, Any], param: str, value: Any, request: WireRequest) -> bool:
    wanted = request.q(param)
    return wanted is None or value == wanted


def _cumulative(buckets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Running totals from the first bucket's start (Orb's default `cumulative` view)."""
    if not buckets:
        return []
    start = buckets[0]["timeframe_start"]
    subtotal = total = Decimal(0)
    per_price: dict[str, dict[str, Any]] = {}
    out = []
    for bucket in buckets:
        subtotal += Decimal(str(bucket.get("subtotal", "0")))
        total += Decimal(str(bucket.get("total", "0")))
        for pc in bucket.get("per_price_costs") or ():
            acc = per_price.setdefault(
                str(pc.get("price_id")),
                {**pc, "subtotal": "0", "total": "0", "quantity": None},
            )
            acc["subtotal"] = _money_str(Decimal(acc["subtotal"]) + Decimal(str(pc["subtotal"])))
            acc["total"] = _money_str(Decimal(acc["total"]) + Decimal(str(pc["total"])))
            if pc.get("quantity") is not None:
                acc["quantity"] = (acc["quantity"] or Decimal(0)) + Decimal(str(pc["quantity"]))
        out.append(
            {
                **bucket,
                "timeframe_start": start,
                "subtotal": _money_str(subtotal),
                "total": _money_str(total),
                "per_price_costs": [dict(v) for v in per_price.values()],
            }
        )
    return out


def _money_str(value: Decimal) -> str:
    return f"{value:f}"


def _body_time(body: Mapping[str, Any], name: str) -> datetime | None:
    value = body.get(name)
    if value is None:
        return None
    parsed = _parse_time(value) if isinstance(value, str) else None
    if parsed is None:
        raise _body_invalid(name, "must be an ISO 8601 date-time")
    return parsed


def _query_time(request: WireRequest, name: str) -> datetime | None:
    value = request.q(name)
    if value is None or value == "":
        return None
    parsed = _parse_time(value)
    if parsed is None:
        raise _invalid(name, "must be an ISO 8601 date-time")
    return parsed


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace(" ", "+"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _get(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj
