"""Orb's REST API served from the sandbox world, in Orb's wire format (a `WireRouter`).

What it speaks (notes/providers.md §2, §8.3; spec orb-openapi.json): paths under `/v1`; Bearer
auth; JSON objects exactly as the world stores them (decimal strings for money, ISO times with
offsets); lists as `{data, pagination_metadata: {has_more, next_cursor}}` with `limit` (1–100,
default 20) and an opaque `cursor`; bracket filters (`customer_id[]`, `status[]`,
`invoice_date[gte]`…); RFC 7807 errors whose `type` is `https://docs.withorb.com/reference/
error-responses#<code>`.

Reads only for now. Routes live in one table of `(method, pattern, handler)`, so the approval-gated
writes (credit ledger entries, with `Idempotency-Key` replay and `Idempotent-Replayed: true`) can be
added later as further rows without touching the dispatch.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final, Protocol
from urllib.parse import unquote

from integrations.sandbox.wire import WireRequest, WireResponse

ERROR_TYPE: Final = "https://docs.withorb.com/reference/error-responses#{code}"
DEFAULT_LIMIT: Final = 20
MAX_LIMIT: Final = 100
_INVOICE_DEFAULT_STATUSES: Final = ("issued", "paid", "synced")
_INVOICE_STATUSES: Final = frozenset({"draft", "issued", "paid", "synced", "void"})
_SUBSCRIPTION_STATUSES: Final = frozenset({"active", "ended", "upcoming"})


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


def _invalid(param: str, message: str) -> OrbApiError:
    return OrbApiError(
        400,
        "400-request-validation-errors",
        "Request validation error",
        f"{param}: {message}",
        validation_errors=[{"loc": ["query", param], "msg": message}],
    )


# --- routing ----------------------------------------------------------------------------------

Handler = Callable[[WireRequest, Mapping[str, str]], Awaitable[WireResponse]]


@dataclass(frozen=True, slots=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler


class OrbSandboxServer:
    """Orb's API over the sandbox world. `api_key=None` accepts any non-empty Bearer key."""

    def __init__(self, world: OrbWorld, *, api_key: str | None = None) -> None:
        self.world = world
        self.api_key = api_key
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
            ("GET", "/customers/external_customer_id/{ext}/costs", self._list_costs),
            ("GET", "/customers/{cid}", self._get_customer),
            ("GET", "/customers/{cid}/credits", self._list_credits),
            ("GET", "/customers/{cid}/costs", self._list_costs),
            ("GET", "/subscriptions", self._list_subscriptions),
            ("GET", "/subscriptions/{sid}", self._get_subscription),
            ("GET", "/invoices", self._list_invoices),
            ("GET", "/invoices/{iid}", self._get_invoice),
        ):
            regex = re.sub(r"\{(\w+)\}", lambda m: seg.format(m.group(1)), path)
            self._routes.append(_Route(method, re.compile(f"^/v1{regex}/?$"), handler))

    async def handle(self, request: WireRequest) -> WireResponse:
        """Answer one request: authenticate, route, and turn `OrbApiError`s into RFC 7807."""
        try:
            self._authenticate(request)
            for route in self._routes:
                match = route.pattern.match(request.path)
                if match and route.method == request.method:
                    params = {k: unquote(v) for k, v in match.groupdict().items()}
                    return await route.handler(request, params)
            raise OrbApiError(
                404, "404-url-not-found", "URL not found", f"{request.method} {request.path}"
            )
        except OrbApiError as exc:
            return exc.response()

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
            return _page(_LazyCustomers(self.world, ids), request)
        items = [d.customer for d in self._all_data()]
        items = _filter_times(items, "created_at", request)
        items.sort(key=lambda c: str(c.get("created_at", "")), reverse=True)
        return _page(items, request)

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
            for b in data.credit_blocks
            if include_all
            or (
                Decimal(str(b.get("balance", 0))) != 0
                and ((exp := _parse_time(b.get("expiry_date"))) is None or exp > now)
            )
        ]
        blocks = _filter_times(blocks, "effective_date", request)
        return _page(blocks, request)

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
