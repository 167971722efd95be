"""Metronome adapter: the `BillingProvider` for accounts billed through Metronome contracts.

Wire facts (notes/providers.md §3): base URL without `/v1`; Bearer auth; JSON bodies; many reads
are `POST`s (sent as idempotent, so the shared policy may retry them); lists are
`{data, next_page}` with the cursor in the query on GET lists and `POST /v1/usage`, in the JSON
body on `customerBalances/list`; `contracts/list` pages with a body `cursor` (metronome-sdk 4.12);
single objects are wrapped in `{data: …}`; errors are `{"message": …}`; 409 is never retried.

Money: Metronome amounts are JSON numbers in a credit type's unit. The fiat credit types are named
like "USD (cents)", so amounts are cents and become `Money` by a Decimal shift (fractional cents
are kept, never rounded here). Amounts in other credit types (custom pricing units) are not money:
such invoices, lines and balances are left out (they stay visible in `raw`).

Invoice mapping, so that every invoice satisfies `sum(line.amount) == subtotal` and
`total == subtotal - discount - credits_applied` (Metronome has no tax of its own, so `tax` is
None; `balance_applied` is unused):

- charge lines (usage, subscription, scheduled, commit purchase, true-up, conversion) become
  `InvoiceLine`s; positive `invoice_adjustments` (minimums) become lines too;
- commit/credit application lines (`type == "applied_commit_or_credit"`, or a negative line
  carrying `applied_commit_or_credit`) are not lines: their amounts make up `credits_applied`, and
  are attributed to the charge line of the same product as `line.credits_applied`. Postpaid commit
  applications are left out: Metronome does not count them in the invoice total;
- negative lines carrying a `discount_id`, and negative adjustments without a credit grant, make
  up `discount`; negative adjustments with a `credit_grant_id` add to `credits_applied`;
- `subtotal` is computed from the lines (Metronome's own `subtotal` stays in `raw`), `total` is
  Metronome's. Should they not reconcile, one "other adjustments" line carries the difference so
  the explanation sees it rather than silently losing it.

Writes (`BillingWriter`, after approval only; notes/providers.md §3.4, §5): a credit is a
customer credit (`POST /v1/contracts/customerCredits/create`) in USD cents, the default fiat
credit type, on the configured `credit_product_id` or else the first credit (then commit)
product of the customer's contracts. It carries the idempotency key twice: as `Idempotency-Key`
(Metronome replays the cached answer, 409 when the key comes back with other parameters) and as
`uniqueness_key` (409 "already used" when a credit with it exists: we read that credit back with
`customerCredits/list` and return it as replayed). The access schedule starts at midnight UTC of
the day of the call and lasts `CREDIT_ACCESS_DAYS`; a retry on a later day sends another body, so
its 409 is resolved by the same read-back. Metronome has no money-back refund.

`CustomerRecord.account_id` (our account ID) is the customer's `external_id` when it is set, is
not the Metronome ID and is not an email; otherwise the first ingest alias that is not an email
and not the Metronome ID; otherwise None. Metronome has no payments, refunds or disputes: those
come from Stripe.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, NamedTuple, TypeVar

import httpx
from pydantic import SecretStr

from bot.domain.identifiers import EMAIL_RE, UUID_RE, IdentifierKind
from bot.domain.models import (
    CreditBalance,
    CustomerRecord,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    LineKind,
    ProviderName,
    ProviderSnapshot,
    Subscription,
    SubscriptionStatus,
    UsagePoint,
    WriteKind,
    WriteResult,
    request_id_of_key,
)
from bot.domain.money import Money
from bot.errors import (
    ProviderBadResponse,
    ProviderError,
    ProviderIdempotencyConflict,
    ProviderNotFound,
    ProviderOutcomeUnknown,
    ProviderRequestError,
)
from integrations.http import ProviderHttp, RetryPolicy
from integrations.writes import check_write, logged_write, no_refunds

log = logging.getLogger("integrations.metronome")

DEFAULT_BASE_URL = "https://api.metronome.com"
DASHBOARD_URL = "https://app.metronome.com/customers/{customer_id}"

#: Invoices are read this far back: 12 months for explanations plus the month before them.
INVOICE_HISTORY_DAYS = 400
#: Largest page Metronome serves on GET lists (`PageLimit` in the spec: 1..100).
LIST_LIMIT = 100
#: Largest page of `customerBalances/list` (spec: 1..25).
BALANCE_LIMIT = 25
#: Usage is fetched in windows of this many days, concurrently, so a long history is not one
#: long chain of sequential pages. 36 keeps the default (35 days and today) in one request.
USAGE_CHUNK_DAYS = 36
#: Safety stop for any cursor loop (a server that keeps answering a cursor would loop forever).
MAX_PAGES = 50
#: Largest page of `customerCredits/list` (spec: 1..25).
CREDIT_LIMIT = 25
#: Credits we grant are usable for a year from the day they are granted.
CREDIT_ACCESS_DAYS = 365
#: Lower priorities are drawn first: a goodwill credit is used before prepaid commits (which the
#: sandbox and most contracts give 50–100), so the customer sees it on the next invoice.
CREDIT_PRIORITY = 1
#: The credit's `name` is printed on the customer's invoices; the caller's text goes into
#: `description`, which Metronome shows only in its UI and API.
CREDIT_NAME = "Account credit"

# "USD (cents)", "EUR (cents)": a fiat credit type whose unit is the currency's hundredth.
_FIAT_CREDIT_TYPE = re.compile(r"^(?P<cur>[A-Za-z]{3})\s*\((?P<unit>cents?)\)$")

_T = TypeVar("_T")


def _error_message(response: httpx.Response) -> str:
    """Metronome's error body is `{"message": "…"}`; anything else names the status only."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, Mapping) and isinstance(body.get("message"), str):
        return str(body["message"])[:300]
    return f"HTTP {response.status_code}"


def _retry_hook(response: httpx.Response) -> bool | None:
    """409 means a reused `uniqueness_key` or idempotency key: retrying can never help."""
    if response.status_code == 409:
        return False
    return None


def _classify(response: httpx.Response) -> type[ProviderError] | None:
    """409: a reused `uniqueness_key`, or an `Idempotency-Key` reused with other parameters;
    the writer tells them apart by reading the credit back."""
    return ProviderIdempotencyConflict if response.status_code == 409 else None


#: Metronome publishes no numeric limit (429 "wait and try again later"). 100/s, Stripe's
#: live figure, is the default; 429 feedback lowers it; METRONOME_RATE_LIMIT overrides.
DEFAULT_RATE_LIMIT = 100.0


class MetronomeBillingProvider:
    """`BillingProvider` over Metronome's REST API (customers, contracts, invoices, balances,
    usage)."""

    name: ProviderName = "metronome"

    def __init__(
        self,
        api_key: SecretStr | str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        policy: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rate_limit: float | None = None,
        usage_days: int = 35,
        invoice_days: int = INVOICE_HISTORY_DAYS,
        clock: Callable[[], datetime] | None = None,
        credit_product_id: str | None = None,
    ) -> None:
        token = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        self._http = ProviderHttp(
            "metronome",
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            policy=policy,
            transport=transport,
            retry_hook=_retry_hook,
            error_parser=_error_message,
            classify=_classify,
            # Requests/s; None: not paced (the composition root passes the documented
            # default, see `default_rate_limit` / `DEFAULT_RATE_LIMIT`).
            rate=rate_limit or None,
        )
        #: The product credits are granted on, when the deployment configures one.
        self._credit_product_id = credit_product_id
        self._usage_days = max(1, usage_days)
        self._invoice_days = max(1, invoice_days)
        #: The newest invoices a snapshot reads instead of `invoice_days` of them (`scan_view`).
        self._invoice_count: int | None = None
        # The sandbox world has its own "now"; production passes nothing and uses the wall clock.
        self._clock = clock or (lambda: datetime.now(UTC))

    @property
    def http(self) -> ProviderHttp:
        """The underlying HTTP client (call counters for /metrics)."""
        return self._http

    def scan_view(self, *, invoices: int, payment_days: int) -> MetronomeBillingProvider:
        """This client reading only what an anomaly scan needs: the newest `invoices` invoices
        (one page) and their payments (Metronome's are on invoices); lookups keep the full history.
        The view shares this client's HTTP client (pacing, limits, counters) and caches."""
        view = copy.copy(self)
        view._invoice_count = max(1, min(invoices, LIST_LIMIT))
        return view

    async def aclose(self) -> None:
        """Release connections."""
        await self._http.aclose()

    # --- lookup -----------------------------------------------------------------------------

    async def find_customers(self, kind: IdentifierKind, value: str) -> list[CustomerRecord]:
        """Customers for a Metronome customer ID (UUID), or an ingest alias (our account ID or
        an email); [] for kinds Metronome cannot search by."""
        value = value.strip()
        if not value:
            return []
        if kind is IdentifierKind.METRONOME_CUSTOMER:
            return await self._customer_by_id(value)
        if kind is IdentifierKind.ACCOUNT_ID:
            return await self._customers_by_alias(value)
        if kind is IdentifierKind.EMAIL:
            found = await self._customers_by_alias(value)
            # Aliases are exact; emails are often stored lower-cased.
            if not found and value.lower() != value:
                found = await self._customers_by_alias(value.lower())
            return found
        return []

    async def _customer_by_id(self, customer_id: str) -> list[CustomerRecord]:
        if not UUID_RE.match(customer_id):
            return []  # Metronome answers 400 for a non-UUID ID; don't spend a call on it.
        try:
            body = await self._http.request("GET", f"v1/customers/{customer_id}")
        except ProviderNotFound:
            return []
        except ProviderRequestError as exc:
            if exc.status == 400:
                return []
            raise
        return [_customer_record(_wrapped_object(body, "customer"))]

    async def _customers_by_alias(self, alias: str) -> list[CustomerRecord]:
        items = await self._get_pages("v1/customers", {"ingest_alias": alias, "limit": LIST_LIMIT})
        seen: set[str] = set()
        records = []
        for item in items:
            record = _customer_record(item)
            if record.customer_id not in seen:
                seen.add(record.customer_id)
                records.append(record)
        return records

    async def customer_pages(self, *, page_size: int = 100) -> AsyncIterator[list[CustomerRecord]]:
        """Every (non-archived) customer, a page at a time (`GET /v1/customers` with
        `next_page`)."""
        query: dict[str, Any] = {"limit": max(1, min(page_size, 100))}
        while True:
            page = await self._http.request("GET", "v1/customers", params=query)
            data, cursor = _page(page)
            records = [_customer_record(item) for item in data]
            if records:
                yield records
            if not cursor:
                return
            query = {"limit": query["limit"], "next_page": cursor}

    # --- snapshot ---------------------------------------------------------------------------

    async def get_snapshot(self, customer: CustomerRecord) -> ProviderSnapshot:
        """Contracts, 12+ months of invoices with lines (the DRAFT one as upcoming), commit and
        credit balances, and daily usage per billable metric, fetched concurrently."""
        now = _aware(self._clock())
        cid = customer.customer_id
        contracts_raw, invoices_raw, balances_raw, usage_raw = await _gather_all(
            self._list_contracts(cid),
            self._list_invoices(cid, now),
            self._list_balances(cid),
            self._list_usage(cid, now),
        )
        contract_names = {
            str(c.get("id")): name for c in contracts_raw if (name := _contract_name(c))
        }
        invoices = [
            inv for raw in invoices_raw if (inv := _invoice(raw, cid, contract_names)) is not None
        ]
        invoices.sort(key=_invoice_date, reverse=True)
        drafts = [inv for inv in invoices if inv.status is InvoiceStatus.DRAFT]
        upcoming = max(drafts, key=_draft_sort_key) if drafts else None
        history = tuple(inv for inv in invoices if inv is not upcoming)
        subscriptions = tuple(_subscription(c, now, drafts) for c in contracts_raw)
        balances = tuple(b for raw in balances_raw if (b := _balance(raw, now)) is not None)
        usage = tuple(sorted(_usage_points(usage_raw), key=lambda u: (u.day, u.metric or "")))
        return ProviderSnapshot(
            provider="metronome",
            customer=customer,
            subscriptions=subscriptions,
            invoices=history,
            upcoming_invoice=upcoming,
            balances=balances,
            usage=usage,
        )

    async def _list_contracts(self, customer_id: str) -> list[Mapping[str, Any]]:
        # Page through `cursor` (metronome-sdk 4.12); the published spec has no paging here, so
        # the first request carries only the customer.
        items: list[Mapping[str, Any]] = []
        body: dict[str, Any] = {"customer_id": customer_id}
        for _ in range(MAX_PAGES):
            page = await self._http.request(
                "POST", "v1/contracts/list", json_body=body, idempotent=True
            )
            data, _ = _page(page)
            items.extend(data)
            cursor = page.get("cursor") if isinstance(page, Mapping) else None
            if not cursor:
                break
            body = {"customer_id": customer_id, "cursor": cursor}
        return items

    async def _list_invoices(self, customer_id: str, now: datetime) -> list[Mapping[str, Any]]:
        if self._invoice_count is not None:  # the newest invoices: one page, newest first
            query = {"limit": self._invoice_count, "sort": "date_desc"}
            page = await self._http.request(
                "GET", f"v1/customers/{customer_id}/invoices", params=query
            )
            data, _ = _page(page)
            return data
        since = _midnight(now) - timedelta(days=self._invoice_days)
        params = {
            "limit": LIST_LIMIT,
            "starting_on": _rfc3339(since),
            "sort": "date_desc",
        }
        return await self._get_pages(f"v1/customers/{customer_id}/invoices", params)

    async def _list_balances(self, customer_id: str) -> list[Mapping[str, Any]]:
        items: list[Mapping[str, Any]] = []
        body: dict[str, Any] = {
            "customer_id": customer_id,
            "include_balance": True,
            "limit": BALANCE_LIMIT,
        }
        for _ in range(MAX_PAGES):
            page = await self._http.request(
                "POST", "v1/contracts/customerBalances/list", json_body=body, idempotent=True
            )
            data, cursor = _page(page)
            items.extend(data)
            if not cursor:
                break
            body = {**body, "next_page": cursor}  # this list takes its cursor in the body
        return items

    async def _list_usage(self, customer_id: str, now: datetime) -> list[Mapping[str, Any]]:
        # Whole UTC days (Metronome requires midnight-aligned bounds): `usage_days` complete days
        # before today, plus today so far.
        end = _midnight(now) + timedelta(days=1)
        start = _midnight(now) - timedelta(days=self._usage_days)
        windows = []
        cursor = start
        while cursor < end:
            upper = min(end, cursor + timedelta(days=USAGE_CHUNK_DAYS))
            windows.append((cursor, upper))
            cursor = upper
        chunks = await _gather_all(*(self._usage_window(customer_id, lo, hi) for lo, hi in windows))
        return [item for chunk in chunks for item in chunk]

    async def _usage_window(
        self, customer_id: str, start: datetime, end: datetime
    ) -> list[Mapping[str, Any]]:
        body = {
            "starting_on": _rfc3339(start),
            "ending_before": _rfc3339(end),
            "window_size": "DAY",
            "customer_ids": [customer_id],
        }
        items: list[Mapping[str, Any]] = []
        params: dict[str, Any] | None = None
        for _ in range(MAX_PAGES):
            page = await self._http.request(
                "POST", "v1/usage", params=params, json_body=body, idempotent=True
            )
            data, cursor = _page(page)
            items.extend(data)
            if not cursor:
                break
            params = {"next_page": cursor}  # /v1/usage takes its cursor in the query
        return items

    async def _get_pages(self, path: str, params: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        items: list[Mapping[str, Any]] = []
        query = dict(params)
        for _ in range(MAX_PAGES):
            page = await self._http.request("GET", path, params=query)
            data, cursor = _page(page)
            items.extend(data)
            if not cursor:
                break
            query = {**params, "next_page": cursor}
        return items

    # --- writes (BillingWriter, after approval only) -----------------------------------------

    async def refund_payment(
        self,
        *,
        customer: CustomerRecord,
        payment_id: str,
        amount: Money,
        request_id: str,
        idempotency_key: str,
        reason: str | None = None,
    ) -> WriteResult:
        """Metronome cannot move money back: always `ProviderRequestError` (refund through
        Stripe)."""
        check_write(request_id=request_id, idempotency_key=idempotency_key, amount=amount)

        async def run() -> WriteResult:
            raise no_refunds("metronome", "Metronome")

        return await logged_write(
            "metronome", "refund", request_id=request_id, idempotency_key=idempotency_key, run=run
        )

    async def grant_credit(
        self,
        *,
        customer: CustomerRecord,
        amount: Money,
        request_id: str,
        idempotency_key: str,
        description: str,
    ) -> WriteResult:
        """Grant `amount` as a customer credit (module docstring): `uniqueness_key` and
        `Idempotency-Key` are both `idempotency_key`; a credit that already exists for it is
        returned with `replayed=True`."""
        check_write(request_id=request_id, idempotency_key=idempotency_key, amount=amount)

        async def run() -> WriteResult:
            if amount.currency != "usd":
                raise ProviderRequestError(
                    "metronome",
                    "Billing Triage grants Metronome credits in USD (Metronome's default credit "
                    f"type); a credit in {amount.currency.upper()} is not supported",
                )
            cid = customer.customer_id
            product_id = self._credit_product_id or await self._credit_product(cid)
            start = _midnight(self._clock())
            body = {
                "customer_id": cid,
                "product_id": product_id,
                "priority": CREDIT_PRIORITY,
                "name": CREDIT_NAME,
                "description": description,
                "access_schedule": {
                    "schedule_items": [
                        {
                            "amount": amount.amount.scaleb(2),  # USD cents
                            "starting_at": _rfc3339(start),
                            "ending_before": _rfc3339(start + timedelta(days=CREDIT_ACCESS_DAYS)),
                        }
                    ]
                },
                "uniqueness_key": idempotency_key,
            }
            try:
                answer = await self._http.send(
                    "POST",
                    "v1/contracts/customerCredits/create",
                    json_body=body,
                    idempotency_key=idempotency_key,
                    write=True,
                )
            except ProviderIdempotencyConflict:
                return await self._already_granted(cid, idempotency_key, request_id, amount)
            try:
                credit_id = str(_wrapped_object(answer.body, "credit")["id"])
            except (KeyError, ProviderBadResponse) as exc:
                raise ProviderOutcomeUnknown(
                    "metronome", "Metronome answered the credit with a body we could not read"
                ) from exc
            return WriteResult(
                provider="metronome",
                kind="credit",
                object_id=credit_id,
                amount=amount,
                status="created",
                request_id=request_id,
                raw=answer.body,
            )

        return await logged_write(
            "metronome", "credit", request_id=request_id, idempotency_key=idempotency_key, run=run
        )

    async def find_write(
        self,
        *,
        customer: CustomerRecord,
        kind: WriteKind,
        request_id: str,
        payment_id: str | None = None,
    ) -> WriteResult | None:
        """The customer credit whose `uniqueness_key` is one of `request_id`'s keys
        (`bt:{request_id}:…`), else None. Metronome makes no refunds: None."""
        if kind == "refund":
            return None
        for credit in await self._list_credits(customer.customer_id):
            key = credit.get("uniqueness_key")
            if isinstance(key, str) and request_id_of_key(key) == request_id:
                return _credit_result(credit, request_id)
        return None

    async def _already_granted(
        self, customer_id: str, idempotency_key: str, request_id: str, amount: Money
    ) -> WriteResult:
        """After a 409: the credit made with this key, if it exists and is this credit."""
        for credit in await self._list_credits(customer_id):
            if credit.get("uniqueness_key") == idempotency_key:
                found = _credit_result(credit, request_id)
                if found.amount != amount:
                    raise ProviderIdempotencyConflict(
                        "metronome",
                        f"the key {idempotency_key} already granted a credit of "
                        f"{found.amount.format()}, not {amount.format()}",
                        status=409,
                    )
                return found
        raise ProviderIdempotencyConflict(
            "metronome",
            f"Metronome refused the key {idempotency_key} as used before with other parameters",
            status=409,
        )

    async def _list_credits(self, customer_id: str) -> list[Mapping[str, Any]]:
        """Every customer credit (archived too: it was made), paging with the body cursor."""
        items: list[Mapping[str, Any]] = []
        body: dict[str, Any] = {
            "customer_id": customer_id,
            "include_archived": True,
            "limit": CREDIT_LIMIT,
        }
        for _ in range(MAX_PAGES):
            page = await self._http.request(
                "POST", "v1/contracts/customerCredits/list", json_body=body, idempotent=True
            )
            data, cursor = _page(page)
            items.extend(data)
            if not cursor:
                break
            body = {**body, "next_page": cursor}
        return items

    async def _credit_product(self, customer_id: str) -> str:
        """The product to grant a credit on: the first credit product of the customer's
        contracts, else the first commit product (deterministic, so a retry sends the same
        body)."""
        contracts = [c for c in await self._list_contracts(customer_id) if not c.get("archived_at")]
        for key in ("credits", "commits"):
            for contract in contracts:
                for part in ("current", "initial"):
                    for item in _arr(_obj(contract.get(part)).get(key)):
                        product_id = _obj(_obj(item).get("product")).get("id")
                        if isinstance(product_id, str) and product_id:
                            return product_id
        raise ProviderRequestError(
            "metronome",
            "this customer's Metronome contracts have no credit or commit product to grant a "
            "credit on; configure a credit product for Billing Triage",
        )


# --- helpers: concurrency and envelopes -------------------------------------------------------


async def _gather_all(*aws: Coroutine[Any, Any, _T]) -> list[_T]:
    """Run concurrently; on the first failure cancel the rest and raise that failure itself
    (not an ExceptionGroup), so callers see one `ProviderError`."""
    tasks: list[asyncio.Task[_T]] = []
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(aw) for aw in aws]
    except BaseExceptionGroup as group_error:
        raise _first_leaf(group_error) from None
    return [task.result() for task in tasks]


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        provider_errors = [e for e in error.exceptions if isinstance(e, ProviderError)]
        error = provider_errors[0] if provider_errors else error.exceptions[0]
    return error


def _bad(what: str) -> ProviderBadResponse:
    return ProviderBadResponse("metronome", f"Metronome sent an unexpected {what}")


def _wrapped_object(body: Any, what: str) -> Mapping[str, Any]:
    if isinstance(body, Mapping) and isinstance(body.get("data"), Mapping):
        return body["data"]  # type: ignore[no-any-return]
    raise _bad(what)


def _page(body: Any) -> tuple[list[Mapping[str, Any]], str | None]:
    if not isinstance(body, Mapping) or not isinstance(body.get("data"), list):
        raise _bad("list")
    data = [item for item in body["data"] if isinstance(item, Mapping)]
    cursor = body.get("next_page")
    return data, cursor if isinstance(cursor, str) and cursor else None


# --- helpers: values --------------------------------------------------------------------------


def _obj(value: Any) -> Mapping[str, Any]:
    """`value` if it is a JSON object, else an empty one (absent optional objects)."""
    return value if isinstance(value, Mapping) else {}


def _arr(value: Any) -> list[Any]:
    """`value` if it is a JSON array, else an empty one."""
    return value if isinstance(value, list) else []


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ts(value: Any) -> datetime | None:
    """RFC 3339 (`2024-01-01T00:00:00.000Z`, offsets allowed) → aware UTC; None if absent."""
    if isinstance(value, datetime):
        return _aware(value)
    if not isinstance(value, str) or not value:
        return None
    try:
        return _aware(datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00")))
    except ValueError:
        return None


def _midnight(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dec(value: Any) -> Decimal | None:
    """A JSON number (int or Decimal from the decoder) as Decimal; None for null or garbage."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):  # only if a caller decoded without parse_float
        return Decimal(str(value))
    return None


def fiat_currency(credit_type: Any) -> str | None:
    """ISO currency (lowercase) of a fiat credit type such as "USD (cents)"; None for custom
    pricing units."""
    if not isinstance(credit_type, Mapping):
        return None
    match = _FIAT_CREDIT_TYPE.match(str(credit_type.get("name") or "").strip())
    return match.group("cur").lower() if match else None


def _cents(value: Any, currency: str) -> Money | None:
    amount = _dec(value)
    if amount is None:
        return None
    # The credit type's unit is the hundredth of the currency: shift, don't round.
    return Money(amount.scaleb(-2), currency)


def _is_email(value: str) -> bool:
    return EMAIL_RE.match(value) is not None


# --- mapping: customers -----------------------------------------------------------------------


def account_id_of(customer: Mapping[str, Any]) -> str | None:
    """Our account ID among a Metronome customer's identifiers (rule in the module docstring)."""
    own = str(customer.get("id") or "")
    external = customer.get("external_id")
    if isinstance(external, str) and external and external != own and not _is_email(external):
        return external
    aliases = customer.get("ingest_aliases") or []
    for alias in _arr(aliases):
        if isinstance(alias, str) and alias and alias != own and not _is_email(alias):
            return alias
    return None


def _customer_record(raw: Mapping[str, Any]) -> CustomerRecord:
    customer_id = raw.get("id")
    if not isinstance(customer_id, str) or not customer_id:
        raise _bad("customer")
    candidates = [raw.get("external_id"), *(raw.get("ingest_aliases") or [])]
    email = next((c for c in candidates if isinstance(c, str) and _is_email(c)), None)
    name = raw.get("name")
    return CustomerRecord(
        provider="metronome",
        customer_id=customer_id,
        account_id=account_id_of(raw),
        name=name if isinstance(name, str) and name else None,
        email=email,
        created_at=_ts(raw.get("created_at")),
        dashboard_url=DASHBOARD_URL.format(customer_id=customer_id),
        raw=raw,
    )


# --- mapping: contracts -----------------------------------------------------------------------


def _contract_name(contract: Mapping[str, Any]) -> str | None:
    for key in ("current", "initial"):
        part = contract.get(key)
        if isinstance(part, Mapping) and isinstance(part.get("name"), str) and part["name"]:
            return str(part["name"])
    return None


def _subscription(
    contract: Mapping[str, Any], now: datetime, drafts: Sequence[Invoice]
) -> Subscription:
    current = contract.get("current") if isinstance(contract.get("current"), Mapping) else None
    terms: Mapping[str, Any] = current or contract.get("initial") or {}
    starts = _ts(terms.get("starting_at"))
    ends = _ts(terms.get("ending_before"))
    if contract.get("archived_at"):
        status = SubscriptionStatus.CANCELED
    elif starts is not None and now < starts:
        status = SubscriptionStatus.UPCOMING
    elif ends is not None and now >= ends:
        status = SubscriptionStatus.ENDED
    else:
        status = SubscriptionStatus.ACTIVE
    contract_id = str(contract.get("id") or "")
    # Only a running contract has a current statement period.
    period = (
        _current_period(contract_id, terms, now, drafts)
        if status is SubscriptionStatus.ACTIVE
        else None
    )
    plan_id = contract.get("package_id") or terms.get("rate_card_id")
    return Subscription(
        provider="metronome",
        id=contract_id,
        status=status,
        plan_name=_contract_name(contract),
        plan_id=str(plan_id) if plan_id else None,
        current_period_start=period[0] if period else None,
        current_period_end=period[1] if period else None,
        started_at=starts,
        ends_at=ends,
        raw=contract,
    )


_FREQUENCY_MONTHS = {"MONTHLY": 1, "QUARTERLY": 3, "ANNUAL": 12}


def _current_period(
    contract_id: str, terms: Mapping[str, Any], now: datetime, drafts: Sequence[Invoice]
) -> tuple[datetime, datetime] | None:
    """The statement period containing now: the contract's draft usage invoice says it best;
    else it is computed from the contract's usage statement schedule."""
    for draft in sorted(drafts, key=_draft_sort_key, reverse=True):
        if draft.subscription_id == contract_id and draft.period_start and draft.period_end:
            return draft.period_start, draft.period_end
    schedule = terms.get("usage_statement_schedule")
    if not isinstance(schedule, Mapping):
        return None
    anchor = _ts(schedule.get("billing_anchor_date")) or _ts(terms.get("starting_at"))
    frequency = str(schedule.get("frequency") or "").upper()
    if anchor is None:
        return None
    if frequency == "WEEKLY":
        weeks = (now - anchor) // timedelta(weeks=1)
        start = anchor + timedelta(weeks=weeks)
        return start, start + timedelta(weeks=1)
    months = _FREQUENCY_MONTHS.get(frequency)
    if months is None:
        return None
    elapsed = (now.year - anchor.year) * 12 + (now.month - anchor.month)
    steps = elapsed // months
    start = _add_months(anchor, steps * months)
    if start > now:
        steps -= 1
        start = _add_months(anchor, steps * months)
    return start, _add_months(anchor, (steps + 1) * months)


def _add_months(value: datetime, months: int) -> datetime:
    total = value.month - 1 + months
    year, month = value.year + total // 12, total % 12 + 1
    # Clamp the day (an anchor on the 31st bills on the last day of shorter months).
    for day in (value.day, 30, 29, 28):
        try:
            return value.replace(year=year, month=month, day=min(value.day, day))
        except ValueError:
            continue
    return value.replace(year=year, month=month, day=28)


# --- mapping: invoices ------------------------------------------------------------------------

_STATUS = {
    "DRAFT": InvoiceStatus.DRAFT,
    "FINALIZED": InvoiceStatus.OPEN,
    "VOID": InvoiceStatus.VOID,
}
_EXTERNAL_STATUS = {
    "PAID": InvoiceStatus.PAID,
    "UNCOLLECTIBLE": InvoiceStatus.UNCOLLECTIBLE,
    "VOID": InvoiceStatus.VOID,
    "DELETED": InvoiceStatus.VOID,
    "PAYMENT_FAILED": InvoiceStatus.PAST_DUE,
}
_MINIMUM_WORDS = ("minimum", "true-up", "trueup", "true up")


def _invoice_status(raw: Mapping[str, Any]) -> InvoiceStatus:
    status = _STATUS.get(str(raw.get("status") or "").upper(), InvoiceStatus.OPEN)
    if status is not InvoiceStatus.OPEN:
        return status
    # A finalized invoice's payment state lives in the billing provider it was synced to.
    external = raw.get("external_invoice")
    if isinstance(external, Mapping):
        return _EXTERNAL_STATUS.get(str(external.get("external_status") or ""), status)
    return status


def _is_usage(item: Mapping[str, Any]) -> bool:
    return str(item.get("type") or "").lower() == "usage" or str(
        item.get("product_type") or ""
    ) in ("UsageProductListItem", "CompositeProductListItem")


def _line_kind(item: Mapping[str, Any]) -> LineKind:
    line_type = str(item.get("type") or "").lower()
    product_type = str(item.get("product_type") or "")
    name = str(item.get("name") or "").lower()
    if item.get("is_prorated"):
        return LineKind.PRORATION
    if item.get("postpaid_commit") or any(word in name for word in _MINIMUM_WORDS):
        return LineKind.MINIMUM
    if _is_usage(item):
        return LineKind.USAGE
    if line_type == "commit_purchase":
        return LineKind.ONE_OFF  # paying for a prepaid commit
    if line_type in ("subscription", "scheduled") or product_type in (
        "SubscriptionProductListItem",
        "FixedProductListItem",
    ):
        return LineKind.SUBSCRIPTION
    return LineKind.OTHER


def _is_credit_application(item: Mapping[str, Any], amount: Decimal) -> bool:
    if str(item.get("type") or "").lower() == "applied_commit_or_credit":
        return True
    return amount < 0 and isinstance(item.get("applied_commit_or_credit"), Mapping)


def _is_postpaid_application(item: Mapping[str, Any]) -> bool:
    applied = item.get("applied_commit_or_credit")
    return isinstance(applied, Mapping) and str(applied.get("type") or "") == "POSTPAID"


def _metric_of(item: Mapping[str, Any]) -> str | None:
    """The usage metric a line bills: its one charge's name when there is exactly one, else the
    line's (product's) name."""
    subs = item.get("sub_line_items")
    if isinstance(subs, list):
        names = {str(s.get("name")) for s in subs if isinstance(s, Mapping) and s.get("name")}
        if len(names) == 1:
            return names.pop()
    name = item.get("name")
    return str(name) if name else None


def _invoice(
    raw: Mapping[str, Any], customer_id: str, contract_names: Mapping[str, str]
) -> Invoice | None:
    invoice_id = raw.get("id")
    if not isinstance(invoice_id, str) or not invoice_id:
        raise _bad("invoice")
    currency = fiat_currency(raw.get("credit_type"))
    if currency is None:
        return None  # an invoice in a custom pricing unit is not money
    zero = Money.zero(currency)
    total = _cents(raw.get("total"), currency)
    if total is None:
        raise _bad("invoice total")

    charges: list[_Charge] = []
    credits: list[tuple[str | None, Money]] = []  # (product_id, positive amount)
    discounts: list[tuple[str | None, Money]] = []
    items = _arr(raw.get("line_items"))
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            continue
        line_type = item.get("credit_type")
        if line_type is not None and fiat_currency(line_type) != currency:
            continue  # a line in a custom pricing unit; its fiat value is a conversion line
        amount = _cents(item.get("total"), currency)
        if amount is None:
            continue
        product_id = item.get("product_id") if isinstance(item.get("product_id"), str) else None
        if _is_credit_application(item, amount.amount):
            if not _is_postpaid_application(item):
                credits.append((product_id, Money(abs(amount.amount), currency)))
            continue
        if amount.amount < 0 and item.get("discount_id"):
            discounts.append((product_id, Money(abs(amount.amount), currency)))
            continue
        charges.append(_Charge(index, item, amount, product_id))

    adjustments = raw.get("invoice_adjustments")
    extra_lines: list[InvoiceLine] = []
    for index, adj in enumerate(_arr(adjustments)):
        if not isinstance(adj, Mapping):
            continue
        if adj.get("credit_type") is not None and fiat_currency(adj["credit_type"]) != currency:
            continue
        amount = _cents(adj.get("total"), currency)
        if amount is None or amount.is_zero():
            continue
        name = str(adj.get("name") or "Adjustment")
        if amount.amount < 0:
            target = credits if adj.get("credit_grant_id") else discounts
            target.append((None, Money(abs(amount.amount), currency)))
            continue
        is_minimum = any(word in name.lower() for word in _MINIMUM_WORDS)
        extra_lines.append(
            InvoiceLine(
                id=f"{invoice_id}:adjustment:{index}",
                description=name,
                amount=amount,
                kind=LineKind.MINIMUM if is_minimum else LineKind.OTHER,
                raw=adj,
            )
        )

    lines = [_line(invoice_id, c, credits, discounts, charges) for c in charges] + extra_lines
    subtotal = sum((line.amount for line in lines), zero)
    discount = sum((m for _, m in discounts), zero)
    credits_applied = sum((m for _, m in credits), zero)
    residual = total - (subtotal - discount - credits_applied)
    if not residual.is_zero():
        log.warning(
            "metronome invoice does not reconcile",
            extra={"invoice_id": invoice_id, "residual": str(residual.amount)},
        )
        lines.append(
            InvoiceLine(
                id=f"{invoice_id}:unreconciled",
                description="Other adjustments (Metronome's total differs from its lines)",
                amount=residual,
                kind=LineKind.OTHER,
            )
        )
        subtotal = subtotal + residual

    status = _invoice_status(raw)
    issued = _ts(raw.get("issued_at"))
    period_start = _ts(raw.get("start_timestamp"))
    period_end = _ts(raw.get("end_timestamp"))
    terms = _dec(raw.get("net_payment_terms_days"))
    due_at = issued + timedelta(days=float(terms)) if issued and terms is not None else None
    external = _obj(raw.get("external_invoice"))
    correction = raw.get("correction_record")
    contract_id = raw.get("contract_id") if isinstance(raw.get("contract_id"), str) else None
    plan_name = raw.get("plan_name") or (contract_names.get(contract_id) if contract_id else None)
    invoice_type = str(raw.get("type") or "").lower() or None
    amount_due: Money | None = None  # nothing is due on a draft or a void invoice
    if status not in (InvoiceStatus.VOID, InvoiceStatus.DRAFT):
        amount_due = zero if status is InvoiceStatus.PAID else total
    memo = _obj(correction).get("memo")
    return Invoice(
        provider="metronome",
        id=invoice_id,
        customer_id=str(raw.get("customer_id") or customer_id),
        status=status,
        currency=currency,
        total=total,
        subtotal=subtotal,
        tax=None,
        discount=discount if not discount.is_zero() else None,
        credits_applied=credits_applied if not credits_applied.is_zero() else None,
        amount_due=amount_due,
        amount_paid=total if status is InvoiceStatus.PAID else None,
        created_at=issued or _ts(raw.get("created_at")) or period_end,
        period_start=period_start,
        period_end=period_end,
        due_at=due_at,
        # A contract amendment is Metronome's plan change (notes §4, plan-change suppression).
        billing_reason="contract_amendment" if raw.get("amendment_id") else invoice_type,
        subscription_id=contract_id,
        plan_name=str(plan_name) if plan_name else None,
        url=str(external["pdf_url"]) if external.get("pdf_url") else None,
        memo=str(memo) if memo else None,
        lines=tuple(lines),
        # Metronome names the invoice it created in its billing provider (the Stripe invoice).
        links=(str(external["invoice_id"]),) if external.get("invoice_id") else (),
        collected_by="stripe" if external.get("billing_provider_type") == "stripe" else None,
        raw=raw,
    )


class _Charge(NamedTuple):
    """A charge line item on its way to becoming an `InvoiceLine`."""

    position: int
    item: Mapping[str, Any]
    amount: Money
    product_id: str | None


def _line(
    invoice_id: str,
    charge: _Charge,
    credits: Sequence[tuple[str | None, Money]],
    discounts: Sequence[tuple[str | None, Money]],
    charges: Sequence[_Charge],
) -> InvoiceLine:
    item, amount, product_id = charge.item, charge.amount, charge.product_id
    kind = _line_kind(item)
    # Attribute product-level credits and discounts to the first charge line of that product
    # (Metronome reports them as their own lines, without a pointer to the line they cover).
    owner = next((c for c in charges if c.product_id == product_id), None)
    is_owner = product_id is not None and owner is charge
    currency = amount.currency
    credited = _sum_for(product_id, credits, currency) if is_owner else None
    discounted = _sum_for(product_id, discounts, currency) if is_owner else None
    unit_price = _dec(item.get("unit_price"))
    name = str(item.get("name") or "Line item")
    group_value = item.get("group_value")
    description = f"{name} ({group_value})" if group_value else name
    return InvoiceLine(
        id=f"{invoice_id}:{charge.position}",
        description=description,
        amount=amount,
        kind=kind,
        quantity=_dec(item.get("quantity")),
        unit_price=unit_price.scaleb(-2) if unit_price is not None else None,
        metric=_metric_of(item) if _is_usage(item) else None,
        price_id=str(item["scheduled_charge_id"]) if item.get("scheduled_charge_id") else None,
        product_id=product_id,
        period_start=_ts(item.get("starting_at")),
        period_end=_ts(item.get("ending_before")),
        proration=bool(item.get("is_prorated")),
        discount_amount=discounted,
        credits_applied=credited,
        raw=item,
    )  # fmt: skip


def _sum_for(
    product_id: str | None, parts: Iterable[tuple[str | None, Money]], currency: str
) -> Money | None:
    amounts = [m for pid, m in parts if pid is not None and pid == product_id]
    return sum(amounts, Money.zero(currency)) if amounts else None


def _invoice_date(inv: Invoice) -> datetime:
    return inv.created_at or inv.period_end or datetime.min.replace(tzinfo=UTC)


def _draft_sort_key(inv: Invoice) -> datetime:
    return inv.period_end or inv.period_start or datetime.min.replace(tzinfo=UTC)


# --- mapping: balances and usage --------------------------------------------------------------


def _balance(raw: Mapping[str, Any], now: datetime) -> CreditBalance | None:
    if raw.get("archived_at"):
        return None
    schedule = _obj(raw.get("access_schedule"))
    credit_type = schedule.get("credit_type")
    if not isinstance(credit_type, Mapping):
        # USD (cents) is only the default of the *create* call; a balance whose unit is not
        # stated cannot be read as money, so the response is malformed rather than guessed.
        raise ProviderBadResponse("metronome", "Metronome sent a balance with no credit type")
    currency = fiat_currency(credit_type)
    if currency is None:
        return None  # a balance in a custom pricing unit is not money
    remaining = _cents(raw.get("balance"), currency)
    if remaining is None:
        return None
    segments = [s for s in schedule.get("schedule_items") or [] if isinstance(s, Mapping)]
    granted_amounts = [a for s in segments if (a := _dec(s.get("amount"))) is not None]
    granted = (
        Money(sum(granted_amounts, Decimal(0)).scaleb(-2), currency)
        if granted_amounts
        else _cents(raw.get("amount"), currency)
    )
    ends = [(start, end) for s in segments
            if (end := _ts(s.get("ending_before"))) is not None
            for start in [_ts(s.get("starting_at"))]]  # fmt: skip
    covering = [end for start, end in ends if (start is None or start <= now) and now < end]
    expires = min(covering) if covering else (max(e for _, e in ends) if ends else None)
    product = _obj(raw.get("product"))
    name = raw.get("name") or product.get("name")
    kind: Literal["credits", "commit"] = "credits" if raw.get("type") == "CREDIT" else "commit"
    return CreditBalance(
        provider="metronome",
        kind=kind,
        remaining=remaining,
        granted=granted,
        name=str(name) if name else None,
        expires_at=expires,
        raw=raw,
    )


def _credit_result(credit: Mapping[str, Any], request_id: str) -> WriteResult:
    """A credit found in `customerCredits/list` as a `WriteResult` (it already existed)."""
    schedule = _obj(credit.get("access_schedule"))
    credit_type = schedule.get("credit_type")
    currency = "usd" if credit_type is None else (fiat_currency(credit_type) or "usd")
    cents = sum(
        (
            _dec(_obj(item).get("amount")) or Decimal(0)
            for item in _arr(schedule.get("schedule_items"))
        ),
        Decimal(0),
    )
    return WriteResult(
        provider="metronome",
        kind="credit",
        object_id=str(credit.get("id") or ""),
        amount=Money(cents.scaleb(-2), currency),
        status="archived" if credit.get("archived_at") else "created",
        request_id=request_id,
        replayed=True,
        raw=credit,
    )


def _usage_points(items: Iterable[Mapping[str, Any]]) -> list[UsagePoint]:
    points = []
    for item in items:
        start = _ts(item.get("start_timestamp"))
        if start is None:
            continue
        day: date = start.date()
        metric = item.get("billable_metric_name") or item.get("billable_metric_id")
        # Null means no events matched that day: zero usage, not a gap.
        quantity = _dec(item.get("value"))
        points.append(
            UsagePoint(
                provider="metronome",
                day=day,
                metric=str(metric) if metric else None,
                quantity=quantity if quantity is not None else Decimal(0),
            )
        )
    return points
