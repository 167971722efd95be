"""Metronome's REST API served from the sandbox world, in Metronome's wire format (a `WireRouter`).

What it speaks (notes/providers.md §3, §8.3; spec metronome-openapi.json): paths under `/v1` on a
base without `/v1`; Bearer auth; JSON objects exactly as the world stores them (numbers for money in
the credit type's unit, RFC 3339 times); single objects wrapped as `{"data": …}`; lists as
`{"data": […], "next_page": cursor-or-null}` whose cursor comes back in the **query** on GET lists
and `POST /v1/usage`, and in the **JSON body** on `customerBalances/list`; `contracts/list` pages
with a body `cursor` like metronome-sdk 4.12 (the published spec answers only `{data}` there, so
`cursor` appears only when there is a next page); every error is `{"message": "…"}`.

Writes: `POST /v1/contracts/customerCredits/create` makes a customer-level credit (answered
`{"data": {"id"}}`) that then shows in `customerCredits/list` and `customerBalances/list`. The
product must be one the customer's contracts, invoices or balances name, or one of the server's
catalogue `credit_products` (by default `SANDBOX_CREDIT_PRODUCT_ID`); amounts are USD cents, the
only credit type the sandbox knows. Writes live in an overlay per server instance: the world's
shared objects are never changed.

Idempotency as Metronome documents it: `uniqueness_key` (1–128 characters) may make one credit
ever, a second use is 409 "This uniqueness key has already been used"; `Idempotency-Key` replays
the first answer, errors included, and is 409 when it comes back with other parameters. Metronome
does not say what a duplicate gets while the first request is still running; the sandbox makes it
wait for the first and replay its answer. Keys are claimed before anything awaits, and the write
applies in one synchronous step after the optional `write_delay`, so concurrent requests make one
credit.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, Protocol

from integrations.sandbox.idempotency import MISMATCH, IdempotencyStore, Replay, fingerprint
from integrations.sandbox.wire import WireRequest, WireResponse

#: `PageLimit` in the spec: GET lists take 1..100.
MAX_LIMIT: Final = 100
DEFAULT_LIMIT: Final = 25  # unverified: Metronome does not publish its default page size
#: customerBalances/list: 1..25, default 25 (spec).
MAX_BALANCE_LIMIT: Final = 25
#: contracts/list: 1..20, default 20 (metronome-sdk 4.12 docstring).
MAX_CONTRACT_LIMIT: Final = 20
#: /v1/usage has no `limit`; its page size is Metronome's choice (unpublished).
DEFAULT_USAGE_PAGE: Final = 500

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

#: Metronome's default fiat credit type (and the only one the sandbox knows).
USD_CENTS: Final = {"id": "2714e483-4ff1-48e4-9e25-ac732e8f24f2", "name": "USD (cents)"}
#: The catalogue product the sandbox offers for credits (Billing Triage's `credit_product_id`
#: in the sandbox), so every sandbox customer can be credited.
SANDBOX_CREDIT_PRODUCT_ID: Final = "8c1b7c52-3f0e-4a6d-9d2a-5be0c3a4f7e1"
#: customerCredits/list: 1..25, default 25 (spec).
MAX_CREDIT_LIMIT: Final = 25
#: `CreateCustomerCreditPayload` fields (the spec's; anything else is refused).
_CREDIT_FIELDS: Final = frozenset(
    {
        "customer_id", "name", "description", "priority", "product_id", "access_schedule",
        "applicable_product_ids", "applicable_product_tags", "specifiers",
        "applicable_contract_ids", "custom_fields", "rate_type", "uniqueness_key",
    }
)  # fmt: skip


# --- the part of the sandbox world this server reads ------------------------------------------


class _MetronomeData(Protocol):
    """One Metronome-billed account's objects, in Metronome's wire shapes."""

    @property
    def customer(self) -> Mapping[str, Any]: ...

    @property
    def contracts(self) -> Sequence[Mapping[str, Any]]: ...

    @property
    def invoices(self) -> Sequence[Mapping[str, Any]]: ...

    @property
    def balances(self) -> Sequence[Mapping[str, Any]]: ...

    @property
    def usage(self) -> Sequence[Mapping[str, Any]]: ...


class _Account(Protocol):
    @property
    def account_id(self) -> str: ...

    @property
    def metronome_customer_id(self) -> str | None: ...


class MetronomeWorld(Protocol):
    """What `MetronomeSandboxServer` needs of `integrations.sandbox.world.SandboxWorld`."""

    @property
    def now(self) -> datetime: ...

    @property
    def accounts(self) -> Sequence[_Account]: ...

    def metronome(self, account_id: str) -> _MetronomeData | None: ...


# --- errors and small parsers ------------------------------------------------------------------


class MetronomeApiError(Exception):
    """An error answer: HTTP `status` and Metronome's `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> WireResponse:
        """The `{"message": …}` body Metronome sends for every 4xx."""
        return WireResponse.of_json({"message": self.message}, status=self.status)


def _bad_request(message: str) -> MetronomeApiError:
    return MetronomeApiError(400, message)


def _not_found(what: str) -> MetronomeApiError:
    return MetronomeApiError(404, f"{what} not found")


def parse_time(value: Any) -> datetime | None:
    """RFC 3339 string (or datetime) → aware UTC; None when absent or unparseable."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _required_time(value: Any, name: str) -> datetime:
    parsed = parse_time(value)
    if parsed is None:
        raise _bad_request(f"{name} must be an RFC 3339 timestamp")
    return parsed


def _optional_time(value: Any, name: str) -> datetime | None:
    if value is None or value == "":
        return None
    return _required_time(value, name)


def _uuid(value: Any, name: str) -> str:
    if not isinstance(value, str) or not _UUID.match(value):
        raise _bad_request(f"{name} must be a valid UUID")
    return value.lower()


def _limit(value: Any, *, default: int, maximum: int) -> int:
    if value is None or value == "":
        return default
    try:
        limit = int(value)
    except (TypeError, ValueError):
        raise _bad_request("limit must be an integer") from None
    if isinstance(value, bool) or not 1 <= limit <= maximum:
        raise _bad_request(f"limit must be between 1 and {maximum}")
    return limit


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.lower() == "true"


def _encode_cursor(kind: str, offset: int) -> str:
    raw = f"{kind}:{offset}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(kind: str, cursor: Any) -> int:
    if cursor is None or cursor == "":
        return 0
    if not isinstance(cursor, str):
        raise _bad_request("next_page must be a string")
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        found, offset = text.split(":", 1)
        value = int(offset)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _bad_request("invalid next_page cursor") from None
    if found != kind or value < 0:
        raise _bad_request("invalid next_page cursor")
    return value


def _window(
    items: Sequence[Any], kind: str, cursor: Any, limit: int
) -> tuple[list[Any], str | None]:
    start = _decode_cursor(kind, cursor)
    page = list(items[start : start + limit])
    end = start + limit
    return page, (_encode_cursor(kind, end) if end < len(items) else None)


def _split_ids(values: Iterable[str]) -> set[str]:
    """`customer_ids=a,b` (the SDK's comma format) or repeated `customer_ids=a&customer_ids=b`."""
    return {part.strip().lower() for value in values for part in value.split(",") if part.strip()}


def _json_body(request: WireRequest) -> Mapping[str, Any]:
    try:
        body = request.json()
    except (ValueError, UnicodeDecodeError):
        raise _bad_request("request body must be JSON") from None
    if not isinstance(body, Mapping):
        raise _bad_request("request body must be a JSON object")
    return body


def _sum(values: Iterable[Any]) -> Decimal | None:
    total: Decimal | None = None
    for value in values:
        if value is None or isinstance(value, bool):
            continue
        total = (total or Decimal(0)) + Decimal(str(value))
    return total


# --- the server ---------------------------------------------------------------------------------

Handler = Callable[[WireRequest, Mapping[str, str]], Awaitable[WireResponse]]


class MetronomeSandboxServer:
    """The sandbox world's Metronome-billed accounts behind Metronome's API (a `WireRouter`)."""

    def __init__(
        self,
        world: MetronomeWorld,
        *,
        api_key: str | None = None,
        usage_page_size: int = DEFAULT_USAGE_PAGE,
        write_delay: float = 0.0,
        credit_products: Mapping[str, str] | None = None,
    ) -> None:
        self._world = world
        self._api_key = api_key
        self._usage_page_size = max(1, usage_page_size)
        self._ids: dict[str, str] | None = None
        #: Seconds a write waits after claiming its keys, before it applies.
        self.write_delay = write_delay
        #: Catalogue products any customer's credit may use: product ID -> name.
        self._catalogue = dict(
            credit_products
            if credit_products is not None
            else {SANDBOX_CREDIT_PRODUCT_ID: "Account credit"}
        )
        self._keys = IdempotencyStore()
        #: uniqueness_key -> credit ID; claimed in the same step that creates the credit.
        self._uniqueness: dict[str, str] = {}
        #: The write overlay: customer-level credits made here, per customer ID.
        self._credits: dict[str, list[dict[str, Any]]] = {}
        self._mint_seq = 0
        #: Ingest alias (an account ID, or a lower-cased email) -> Metronome customer IDs.
        self._aliases: dict[str, list[str]] | None = None
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("GET", re.compile(r"^/v1/customers/?$"), self._list_customers),
            ("GET", re.compile(r"^/v1/customers/(?P<customer_id>[^/]+)$"), self._get_customer),
            (
                "GET",
                re.compile(r"^/v1/customers/(?P<customer_id>[^/]+)/invoices$"),
                self._list_invoices,
            ),
            (
                "GET",
                re.compile(
                    r"^/v1/customers/(?P<customer_id>[^/]+)/invoices/(?P<invoice_id>[^/]+)$"
                ),
                self._get_invoice,
            ),
            ("POST", re.compile(r"^/v1/contracts/list$"), self._list_contracts),
            ("POST", re.compile(r"^/v1/contracts/customerBalances/list$"), self._list_balances),
            ("POST", re.compile(r"^/v1/contracts/customerCredits/list$"), self._list_credits),
            (
                "POST",
                re.compile(r"^/v1/contracts/customerCredits/create$"),
                self._create_credit_keyed,
            ),
            ("POST", re.compile(r"^/v1/usage$"), self._usage),
        ]

    async def handle(self, request: WireRequest) -> WireResponse:
        """Answer one request: authenticate, route, or answer Metronome's error shape."""
        try:
            self._authenticate(request)
            for method, pattern, handler in self._routes:
                match = pattern.match(request.path)
                if match and method == request.method:
                    return await handler(request, match.groupdict())
            raise MetronomeApiError(404, "Not found")
        except MetronomeApiError as exc:
            return exc.response()

    def _authenticate(self, request: WireRequest) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise MetronomeApiError(401, "Unauthorized")
        if self._api_key is not None and token.strip() != self._api_key:
            raise MetronomeApiError(401, "Unauthorized")

    # --- the world's Metronome customers ---------------------------------------------------

    def _customer_ids(self) -> dict[str, str]:
        """Metronome customer ID (lower-case) → our account ID, from the index alone (building
        no account)."""
        if self._ids is None:
            self._ids = {
                a.metronome_customer_id.lower(): a.account_id
                for a in self._world.accounts
                if a.metronome_customer_id
            }
        return self._ids

    def _data_of(self, customer_id: str) -> _MetronomeData | None:
        account_id = self._customer_ids().get(customer_id)
        return self._world.metronome(account_id) if account_id else None

    def _customer_data(self, customer_id: Any) -> _MetronomeData:
        data = self._data_of(_uuid(customer_id, "customer_id"))
        if data is None:
            raise _not_found("Customer")
        return data

    def _alias_candidates(self, alias: str) -> list[str]:
        """Customer IDs that may carry `alias`: the sandbox's ingest aliases are the account ID
        and the billing email, so only the accounts with that ID or email are built."""
        if self._aliases is None:
            accounts = [a for a in self._world.accounts if a.metronome_customer_id]
            if not all(isinstance(getattr(a, "email", None), str) for a in accounts):
                return sorted(self._customer_ids())  # a world without emails: look at every one
            # Built once (the world's index never changes): a lookup is then a dictionary read.
            aliases: dict[str, list[str]] = {}
            for a in accounts:
                cid = str(a.metronome_customer_id).lower()
                email = str(getattr(a, "email", "")).lower()
                for key in dict.fromkeys((a.account_id, f"@{email}")):
                    aliases.setdefault(key, []).append(cid)
            self._aliases = aliases
        found = {*self._aliases.get(alias, ()), *self._aliases.get(f"@{alias.lower()}", ())}
        return sorted(found)

    # --- customers ---------------------------------------------------------------------------

    async def _get_customer(self, request: WireRequest, params: Mapping[str, str]) -> WireResponse:
        data = self._customer_data(params["customer_id"])
        return WireResponse.of_json({"data": data.customer})

    async def _list_customers(
        self, request: WireRequest, params: Mapping[str, str]
    ) -> WireResponse:
        alias = request.q("ingest_alias")
        wanted_ids = _split_ids(request.q_all("customer_ids"))
        only_archived = _flag(request.q("only_archived"))
        limit = _limit(request.q("limit"), default=DEFAULT_LIMIT, maximum=MAX_LIMIT)
        ids = self._alias_candidates(alias) if alias is not None else sorted(self._customer_ids())
        if wanted_ids:
            ids = [i for i in ids if i in wanted_ids]
        # Walk the sorted IDs from the cursor, building only the customers a page needs.
        start = _decode_cursor("customers", request.q("next_page"))
        page: list[Any] = []
        position = start
        while position < len(ids) and len(page) < limit:
            data = self._data_of(ids[position])
            position += 1
            await asyncio.sleep(0)  # generating a page of accounts takes a while: let others in
            if data is None:
                continue
            customer = data.customer
            if alias is not None and alias not in (customer.get("ingest_aliases") or []):
                continue
            if bool(customer.get("archived_at")) != only_archived:
                continue
            page.append(customer)
        cursor = _encode_cursor("customers", position) if position < len(ids) else None
        return WireResponse.of_json({"data": page, "next_page": cursor})

    # --- invoices ----------------------------------------------------------------------------

    async def _list_invoices(self, request: WireRequest, params: Mapping[str, str]) -> WireResponse:
        data = self._customer_data(params["customer_id"])
        limit = _limit(request.q("limit"), default=DEFAULT_LIMIT, maximum=MAX_LIMIT)
        starting_on = _optional_time(request.q("starting_on"), "starting_on")
        ending_before = _optional_time(request.q("ending_before"), "ending_before")
        sort = request.q("sort") or "date_asc"
        if sort not in ("date_asc", "date_desc"):
            raise _bad_request("sort must be one of date_asc, date_desc")
        status = (request.q("status") or "").upper()
        invoice_type = (request.q("type") or "").upper()
        contract_id = request.q("contract_id")
        credit_type_id = request.q("credit_type_id")
        skip_zero = _flag(request.q("skip_zero_qty_line_items"))
        chosen = []
        for invoice in data.invoices:
            if status and str(invoice.get("status", "")).upper() != status:
                continue
            if invoice_type and str(invoice.get("type", "")).upper() != invoice_type:
                continue
            if contract_id and invoice.get("contract_id") != contract_id:
                continue
            if credit_type_id and (invoice.get("credit_type") or {}).get("id") != credit_type_id:
                continue
            # The date filters apply to the billing period (SDK docstring), not the issue date.
            period_start = parse_time(invoice.get("start_timestamp")) or _invoice_date(invoice)
            period_end = parse_time(invoice.get("end_timestamp")) or _invoice_date(invoice)
            if starting_on and period_start < starting_on:
                continue
            # The period's end is itself exclusive, so a period ending at the bound is before it.
            if ending_before and period_end > ending_before:
                continue
            chosen.append(_without_zero_lines(invoice) if skip_zero else invoice)
        chosen.sort(key=_invoice_date, reverse=sort == "date_desc")
        page, cursor = _window(chosen, "invoices", request.q("next_page"), limit)
        return WireResponse.of_json({"data": page, "next_page": cursor})

    async def _get_invoice(self, request: WireRequest, params: Mapping[str, str]) -> WireResponse:
        data = self._customer_data(params["customer_id"])
        invoice_id = _uuid(params["invoice_id"], "invoice_id")
        for invoice in data.invoices:
            if str(invoice.get("id", "")).lower() == invoice_id:
                skip_zero = _flag(request.q("skip_zero_qty_line_items"))
                return WireResponse.of_json(
                    {"data": _without_zero_lines(invoice) if skip_zero else invoice}
                )
        raise _not_found("Invoice")

    # --- contracts and balances --------------------------------------------------------------

    async def _list_contracts(
        self, request: WireRequest, params: Mapping[str, str]
    ) -> WireResponse:
        body = _json_body(request)
        data = self._customer_data(body.get("customer_id"))
        limit = _limit(body.get("limit"), default=MAX_CONTRACT_LIMIT, maximum=MAX_CONTRACT_LIMIT)
        covering = _optional_time(body.get("covering_date"), "covering_date")
        starting_at = _optional_time(body.get("starting_at"), "starting_at")
        if covering and starting_at:
            raise _bad_request("covering_date and starting_at cannot both be provided")
        include_archived = _flag(body.get("include_archived"))
        chosen = []
        for contract in data.contracts:
            if contract.get("archived_at") and not include_archived:
                continue
            terms = contract.get("current") or contract.get("initial") or {}
            starts = parse_time(terms.get("starting_at"))
            ends = parse_time(terms.get("ending_before"))
            if covering and not (
                (starts is None or starts <= covering) and (ends is None or covering < ends)
            ):
                continue
            if starting_at and (starts is None or starts < starting_at):
                continue
            chosen.append(
                _strip_balances(
                    contract,
                    balance=_flag(body.get("include_balance")),
                    ledgers=_flag(body.get("include_ledgers")),
                )
            )
        page, cursor = _window(chosen, "contracts", body.get("cursor"), limit)
        answer: dict[str, Any] = {"data": page}
        if cursor:
            answer["cursor"] = cursor
        return WireResponse.of_json(answer)

    async def _list_balances(self, request: WireRequest, params: Mapping[str, str]) -> WireResponse:
        body = _json_body(request)
        data = self._customer_data(body.get("customer_id"))
        limit = _limit(body.get("limit"), default=MAX_BALANCE_LIMIT, maximum=MAX_BALANCE_LIMIT)
        covering = _optional_time(body.get("covering_date"), "covering_date")
        starting_at = _optional_time(body.get("starting_at"), "starting_at")
        effective_before = _optional_time(body.get("effective_before"), "effective_before")
        wanted_id = body.get("id")
        include_archived = _flag(body.get("include_archived"))
        exclude_zero = _flag(body.get("exclude_zero_balances"))
        chosen = []
        for item in [*data.balances, *self._credits_of(data)]:
            if wanted_id and item.get("id") != wanted_id:
                continue
            if item.get("archived_at") and not include_archived:
                continue
            if exclude_zero and not item.get("balance"):
                continue
            segments = [
                (parse_time(s.get("starting_at")), parse_time(s.get("ending_before")))
                for s in (item.get("access_schedule") or {}).get("schedule_items") or []
            ]
            if covering and not any(
                (lo is None or lo <= covering) and (hi is None or covering < hi)
                for lo, hi in segments
            ):
                continue
            if starting_at and not any(hi is None or hi > starting_at for _, hi in segments):
                continue
            if effective_before and not any(
                lo is None or lo < effective_before for lo, _ in segments
            ):
                continue
            chosen.append(
                _strip_item(
                    item,
                    balance=_flag(body.get("include_balance")),
                    ledgers=_flag(body.get("include_ledgers")),
                )
            )
        page, cursor = _window(chosen, "balances", body.get("next_page"), limit)
        return WireResponse.of_json({"data": page, "next_page": cursor})

    # --- credits (writes) ---------------------------------------------------------------------

    def _credits_of(self, data: _MetronomeData) -> list[dict[str, Any]]:
        """Customer-level credits made on this server for the customer, with their balance."""
        return self._credits.get(str(data.customer.get("id", "")).lower(), [])

    async def _list_credits(self, request: WireRequest, params: Mapping[str, str]) -> WireResponse:
        body = _json_body(request)
        data = self._customer_data(body.get("customer_id"))
        limit = _limit(body.get("limit"), default=MAX_CREDIT_LIMIT, maximum=MAX_CREDIT_LIMIT)
        covering = _optional_time(body.get("covering_date"), "covering_date")
        starting_at = _optional_time(body.get("starting_at"), "starting_at")
        effective_before = _optional_time(body.get("effective_before"), "effective_before")
        credit_id = body.get("credit_id")
        if credit_id is not None:
            credit_id = _uuid(credit_id, "credit_id")
        items: list[Mapping[str, Any]] = list(self._credits_of(data))
        if _flag(body.get("include_contract_credits")):
            items += [b for b in data.balances if b.get("type") == "CREDIT"]
        chosen = []
        for item in items:
            if credit_id and str(item.get("id")).lower() != credit_id:
                continue
            if item.get("archived_at") and not _flag(body.get("include_archived")):
                continue
            segments = [
                (parse_time(s.get("starting_at")), parse_time(s.get("ending_before")))
                for s in (item.get("access_schedule") or {}).get("schedule_items") or []
            ]
            if covering and not any(
                (lo is None or lo <= covering) and (hi is None or covering < hi)
                for lo, hi in segments
            ):
                continue
            if starting_at and not any(hi is None or hi > starting_at for _, hi in segments):
                continue
            if effective_before and not any(
                lo is None or lo < effective_before for lo, _ in segments
            ):
                continue
            chosen.append(
                _strip_item(
                    item,
                    balance=_flag(body.get("include_balance")),
                    ledgers=_flag(body.get("include_ledgers")),
                )
            )
        page, cursor = _window(chosen, "credits", body.get("next_page"), limit)
        return WireResponse.of_json({"data": page, "next_page": cursor})

    async def _create_credit_keyed(
        self, request: WireRequest, params: Mapping[str, str]
    ) -> WireResponse:
        """`Idempotency-Key` around the create: the first answer (errors included) is kept and
        replayed; a duplicate in flight waits for it; other parameters are a 409."""
        key = request.headers.get("idempotency-key")
        if key is None:
            return await self._create_credit(request)
        try:
            payload: Any = json.loads(request.body) if request.body else {}
        except ValueError:
            payload = request.body.decode(errors="replace")
        verdict = await self._keys.claim_or_wait(
            key, fingerprint(request.method, request.path, payload)
        )
        if verdict is MISMATCH:
            raise MetronomeApiError(
                409, "This idempotency key was already used with different request parameters"
            )
        if isinstance(verdict, Replay):
            return verdict.response
        try:
            answer = await self._create_credit(request)
        except MetronomeApiError as exc:
            answer = exc.response()
        except BaseException:
            self._keys.release(key)
            raise
        self._keys.finish(key, answer)
        return answer

    async def _create_credit(self, request: WireRequest) -> WireResponse:
        if self.write_delay:
            await asyncio.sleep(self.write_delay)
        # No await from here on: validation, the uniqueness claim and the credit are one step.
        body = _json_body(request)
        unknown = sorted(set(body) - _CREDIT_FIELDS)
        if unknown:
            raise _bad_request(f"Unknown field: {unknown[0]}")
        data = self._customer_data(body.get("customer_id"))
        customer_id = str(data.customer.get("id", "")).lower()
        product_id = _uuid(body.get("product_id"), "product_id")
        products = self._products_for(data)
        if product_id not in products:
            raise _not_found(f"Product {product_id}")
        priority = body.get("priority")
        if isinstance(priority, bool) or not isinstance(priority, int | Decimal):
            raise _bad_request("priority is required and must be a number")
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            raise _bad_request("name must be a non-empty string")
        description = body.get("description")
        if description is not None and not isinstance(description, str):
            raise _bad_request("description must be a string")
        schedule = body.get("access_schedule")
        if not isinstance(schedule, Mapping):
            raise _bad_request("access_schedule is required")
        credit_type_id = schedule.get("credit_type_id")
        if (
            credit_type_id is not None
            and _uuid(credit_type_id, "credit_type_id") != USD_CENTS["id"]
        ):
            raise _not_found("Credit type")
        raw_items = schedule.get("schedule_items")
        if not isinstance(raw_items, list) or not raw_items:
            raise _bad_request("access_schedule.schedule_items must be a non-empty array")
        items = []
        for raw in raw_items:
            if not isinstance(raw, Mapping):
                raise _bad_request("access_schedule.schedule_items must hold objects")
            amount = raw.get("amount")
            if isinstance(amount, bool) or not isinstance(amount, int | Decimal) or amount <= 0:
                raise _bad_request("schedule item amount must be a positive number")
            start = _required_time(raw.get("starting_at"), "starting_at")
            end = _required_time(raw.get("ending_before"), "ending_before")
            if end <= start:
                raise _bad_request("ending_before must be after starting_at")
            items.append((Decimal(amount), start, end))
        for field in ("applicable_product_ids", "applicable_contract_ids"):
            value = body.get(field)
            if value is not None and not (
                isinstance(value, list)
                and all(isinstance(v, str) and _UUID.match(v) for v in value)
            ):
                raise _bad_request(f"{field} must be an array of UUIDs")
        unique = body.get("uniqueness_key")
        if unique is not None and (not isinstance(unique, str) or not 1 <= len(unique) <= 128):
            raise _bad_request("uniqueness_key must be 1 to 128 characters")
        if unique is not None and unique in self._uniqueness:
            raise MetronomeApiError(409, "This uniqueness key has already been used")
        credit_id = self._mint()
        now = self._world.now
        schedule_items = []
        ledger = []
        balance = Decimal(0)
        for amount, start, end in items:
            segment = self._mint()
            schedule_items.append(
                {
                    "id": segment,
                    "amount": amount,
                    "starting_at": _rfc3339(start),
                    "ending_before": _rfc3339(end),
                }
            )
            ledger.append(
                {
                    "amount": amount,
                    "segment_id": segment,
                    "timestamp": _rfc3339(start),
                    "type": "CREDIT_SEGMENT_START",
                }
            )
            if start <= now < end:
                balance += amount
        credit: dict[str, Any] = {
            "id": credit_id,
            "type": "CREDIT",
            "name": name or products[product_id],
            "priority": priority,
            "product": {"id": product_id, "name": products[product_id]},
            "access_schedule": {"credit_type": dict(USD_CENTS), "schedule_items": schedule_items},
            "balance": balance,
            "ledger": ledger,
        }
        for field in (
            "description", "applicable_product_ids", "applicable_product_tags",
            "applicable_contract_ids", "custom_fields", "rate_type",
        ):  # fmt: skip
            if body.get(field) is not None:
                credit[field] = body[field]
        if unique is not None:
            credit["uniqueness_key"] = unique
            self._uniqueness[unique] = credit_id
        self._credits.setdefault(customer_id, []).append(credit)
        return WireResponse.of_json({"data": {"id": credit_id}})

    def _products_for(self, data: _MetronomeData) -> dict[str, str]:
        """Products a credit for this customer may name: the catalogue's and every product its
        contracts, balances and invoice lines mention (ID -> name)."""
        found = dict(self._catalogue)

        def note(product: Any) -> None:
            if isinstance(product, Mapping) and isinstance(product.get("id"), str):
                found.setdefault(product["id"].lower(), str(product.get("name") or "Product"))

        for contract in data.contracts:
            for part in ("initial", "current"):
                terms = contract.get(part)
                if not isinstance(terms, Mapping):
                    continue
                for key in ("commits", "credits", "scheduled_charges"):
                    for item in terms.get(key) or []:
                        if isinstance(item, Mapping):
                            note(item.get("product"))
        for item in data.balances:
            note(item.get("product"))
        for invoice in data.invoices[:1]:  # one invoice names the usage products
            for line in invoice.get("line_items") or []:
                if isinstance(line, Mapping) and isinstance(line.get("product_id"), str):
                    found.setdefault(line["product_id"].lower(), str(line.get("name") or ""))
        return found

    def _mint(self) -> str:
        """A new UUID (version 4 layout), unique within this server."""
        self._mint_seq += 1
        digest = hashlib.sha256(f"metronome:{self._mint_seq}".encode()).digest()[:16]
        return str(uuid.UUID(bytes=digest, version=4))

    def expire_idempotency_keys(self) -> int:
        """Forget every answered `Idempotency-Key` (Metronome keeps them at least 24 hours);
        `uniqueness_key`s are never forgotten."""
        return self._keys.expire()

    # --- usage -------------------------------------------------------------------------------

    async def _usage(self, request: WireRequest, params: Mapping[str, str]) -> WireResponse:
        body = _json_body(request)
        window_size = str(body.get("window_size") or "").upper()
        if window_size not in ("HOUR", "DAY", "NONE"):
            raise _bad_request("window_size must be one of HOUR, DAY, NONE")
        if window_size == "HOUR":
            raise _bad_request("window_size HOUR is not available in the sandbox (daily data)")
        start = _required_time(body.get("starting_on"), "starting_on")
        end = _required_time(body.get("ending_before"), "ending_before")
        for bound in (start, end):
            if (bound.hour, bound.minute, bound.second, bound.microsecond) != (0, 0, 0, 0):
                raise _bad_request("starting_on and ending_before must be aligned to UTC midnight")
        if end <= start:
            raise _bad_request("ending_before must be at least one day after starting_on")
        customer_ids = body.get("customer_ids")
        if customer_ids is not None and not isinstance(customer_ids, list):
            raise _bad_request("customer_ids must be an array")
        metric_ids = {
            str(m.get("id")) for m in body.get("billable_metrics") or [] if isinstance(m, Mapping)
        }
        if customer_ids:
            sources = [self._customer_data(cid) for cid in customer_ids]
        else:
            sources = [d for d in (self._data_of(cid) for cid in sorted(self._customer_ids())) if d]
        items: list[Mapping[str, Any]] = []
        for data in sources:
            for item in data.usage:
                when = parse_time(item.get("start_timestamp"))
                if when is None or not start <= when < end:
                    continue
                if metric_ids and str(item.get("billable_metric_id")) not in metric_ids:
                    continue
                items.append(item)
        if window_size == "NONE":
            items = _aggregate(items, start, end)
        page, cursor = _window(items, "usage", request.q("next_page"), self._usage_page_size)
        return WireResponse.of_json({"data": page, "next_page": cursor})


# --- shaping helpers -----------------------------------------------------------------------------


def _invoice_date(invoice: Mapping[str, Any]) -> datetime:
    """The date Metronome sorts by (`issued_at`); drafts have none yet, so their period end."""
    for key in ("issued_at", "created_at", "end_timestamp", "start_timestamp"):
        when = parse_time(invoice.get(key))
        if when is not None:
            return when
    return datetime.min.replace(tzinfo=UTC)


def _without_zero_lines(invoice: Mapping[str, Any]) -> dict[str, Any]:
    lines = [
        line
        for line in invoice.get("line_items") or []
        if not (isinstance(line, Mapping) and line.get("quantity") == 0)
    ]
    return {**invoice, "line_items": lines}


def _strip_item(item: Mapping[str, Any], *, balance: bool, ledgers: bool) -> Mapping[str, Any]:
    """A commit or credit without `balance` / `ledger` unless they were asked for."""
    drop = {key for key, keep in (("balance", balance), ("ledger", ledgers)) if not keep}
    if not drop.intersection(item):
        return item
    return {k: v for k, v in item.items() if k not in drop}


def _strip_balances(contract: Mapping[str, Any], *, balance: bool, ledgers: bool) -> Any:
    """A contract whose nested commits and credits carry balances/ledgers only if asked for."""

    def terms(part: Any) -> Any:
        if not isinstance(part, Mapping):
            return part
        out = dict(part)
        for key in ("commits", "credits"):
            if isinstance(part.get(key), list):
                out[key] = [
                    _strip_item(c, balance=balance, ledgers=ledgers)
                    if isinstance(c, Mapping)
                    else c
                    for c in part[key]
                ]
        return out

    shaped = dict(contract)
    for key in ("initial", "current"):
        if key in shaped:
            shaped[key] = terms(shaped[key])
    if isinstance(shaped.get("amendments"), list):
        shaped["amendments"] = [terms(a) for a in shaped["amendments"]]
    return shaped


def _aggregate(
    items: Sequence[Mapping[str, Any]], start: datetime, end: datetime
) -> list[Mapping[str, Any]]:
    """`window_size: NONE`: one aggregate per customer and metric over the whole range."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for item in items:
        key = (str(item.get("customer_id")), str(item.get("billable_metric_id")))
        groups.setdefault(key, []).append(item)
    out: list[Mapping[str, Any]] = []
    for (customer_id, metric_id), members in groups.items():
        out.append(
            {
                "customer_id": customer_id,
                "billable_metric_id": metric_id,
                "billable_metric_name": members[0].get("billable_metric_name", ""),
                "start_timestamp": _rfc3339(start),
                "end_timestamp": _rfc3339(end),
                "value": _sum(m.get("value") for m in members),
            }
        )
    return out


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
