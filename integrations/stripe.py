"""Stripe as a `BillingProvider`: customer lookup and the billing snapshot, over Stripe's REST API
(pinned to `2026-10-28.endive`) through the shared HTTP policy.

Calls per snapshot, in two concurrent rounds (a third only when a long invoice's paged lines name
prices not seen before):

1. subscriptions (`status=all`, products expanded), invoices of the last `history_days`
   (`payments` expanded, lines embedded) and charges of the same window (`refunds` expanded);
2. whatever round 1 points at: remaining invoice lines (`/v1/invoices/{id}/lines`), disputes of
   disputed charges, meter event summaries of the subscriptions' meters (ranges of at most 100
   days, concurrently) and those meters' names (cached for ten minutes), prices of invoice lines
   not on a current subscription (cached; prices are immutable where it matters), and the
   upcoming invoice (`POST /v1/invoices/create_preview`).

Invoice amounts (all in the invoice currency, minor units converted with `Money.from_minor`):

- `subtotal` is Stripe's `subtotal` (= the sum of the line `amount`s);
- `discount` = Σ `total_discount_amounts`; `credits_applied` = Σ `total_pretax_credit_amounts` of
  type `credit_balance_transaction` (Stripe also lists discounts there; they are not counted twice);
- `tax` = Σ `total_taxes` that are `exclusive` (inclusive tax is already inside line amounts), so
  `total == subtotal − discount + tax − credits_applied` holds as Stripe computes `total`;
- `balance_applied` = `ending_balance − starting_balance`: the customer balance the invoice used.
  Stripe's balance is negative for credit, so a positive value means credit reduced what was due
  (`amount_due = total − balance_applied`); it is outside `total`. None while the invoice is a
  draft.

The customer balance becomes a `CreditBalance(kind="customer_balance")` whose `remaining` is the
credit (the negated Stripe balance: positive = credit owed to the customer, negative = debt).

Writes (`BillingWriter`, after approval only; notes/providers.md §1.5, §5): a refund is
`POST /v1/refunds` (`charge=` or `payment_intent=`, `amount` in minor units, `reason`,
`metadata[request_id]`), a credit is a customer balance transaction with a negative `amount`
(`POST /v1/customers/{id}/balance_transactions`), both with `Idempotency-Key`. Stripe replays the
first answer for a key (including a 500; `Idempotent-Replayed: true`), answers 409 while the
original is still running (retried with the same key) and 400 `idempotency_error` when the key
comes back with other parameters (`ProviderIdempotencyConflict`). `find_write` looks for the
effect: refunds of the payment, or balance transactions of the customer, whose
`metadata[request_id]` is the request's.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from bot.domain.identifiers import IdentifierKind
from bot.domain.models import (
    CreditBalance,
    CustomerRecord,
    Dispute,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    LineKind,
    Payment,
    PaymentStatus,
    ProviderName,
    ProviderSnapshot,
    Refund,
    Subscription,
    SubscriptionStatus,
    UsagePoint,
    WriteKind,
    WriteResult,
)
from bot.domain.money import Money, exponent
from bot.errors import (
    ProviderAuthError,
    ProviderBadResponse,
    ProviderError,
    ProviderIdempotencyConflict,
    ProviderNotFound,
    ProviderOutcomeUnknown,
    ProviderRequestError,
)
from integrations.http import HttpAnswer, ProviderHttp, RetryPolicy
from integrations.writes import check_write, logged_write

log = logging.getLogger("integrations.stripe")

JSON = dict[str, Any]
T = TypeVar("T")

API_VERSION = "2026-10-28.endive"
DEFAULT_BASE_URL = "https://api.stripe.com"
PAGE_LIMIT = 100
MAX_PAGES = 20  # 2,000 objects of one kind per snapshot is far beyond one account's history
SUMMARY_CHUNK_DAYS = 100  # one page of daily meter summaries
METER_CACHE_SECONDS = 600.0
#: Catalog objects (prices, meters) one client caches at most.
MAX_CACHED = 5000
_SECRET_RE = re.compile(r"\b((?:sk|rk|pk|whsec)_(?:live|test)?_?)[A-Za-z0-9*]+")

_SUBSCRIPTION_STATUS = {
    "active": SubscriptionStatus.ACTIVE,
    "trialing": SubscriptionStatus.TRIALING,
    "past_due": SubscriptionStatus.PAST_DUE,
    "unpaid": SubscriptionStatus.UNPAID,
    "canceled": SubscriptionStatus.CANCELED,
    "paused": SubscriptionStatus.PAUSED,
    "incomplete": SubscriptionStatus.INCOMPLETE,
    "incomplete_expired": SubscriptionStatus.ENDED,
}
_LIVE_SUBSCRIPTION = ("active", "trialing", "past_due", "unpaid", "paused", "incomplete")
_PAYMENT_STATUS = {
    "succeeded": PaymentStatus.SUCCEEDED,
    "pending": PaymentStatus.PENDING,
    "failed": PaymentStatus.FAILED,
}


# --- transport hooks -----------------------------------------------------------------------------


def stripe_retry_hook(response: httpx.Response) -> bool | None:
    """`Stripe-Should-Retry` decides when present; 409 (lock contention, or an idempotent request
    still in flight) is retried; otherwise the shared rules apply."""
    hint = response.headers.get("stripe-should-retry")
    if hint is not None:
        if hint.strip().lower() == "true":
            return True
        if hint.strip().lower() == "false":
            return False
    if response.status_code == 409:
        return True
    return None


def stripe_classify(response: httpx.Response) -> type[ProviderError] | None:
    """Stripe's 400 `idempotency_error`: the key was first used with other parameters."""
    if response.status_code != 400:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    err = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(err, Mapping) and err.get("type") == "idempotency_error":
        return ProviderIdempotencyConflict
    return None


#: Our free-text reasons that name one of Stripe's refund reasons; anything else is sent as
#: `requested_by_customer`. (`fraudulent` also puts the card and email on Radar block lists, so
#: only an explicit "fraudulent" maps to it.)
_STRIPE_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})


def refund_reason(reason: str | None) -> str:
    """Stripe's `reason` for our free-text reason."""
    word = (reason or "").strip().lower().replace("-", "_").replace(" ", "_")
    return word if word in _STRIPE_REASONS else "requested_by_customer"


def redact_keys(text: str) -> str:
    """`text` with anything shaped like a Stripe key (even masked) reduced to its prefix."""
    return _SECRET_RE.sub(lambda m: m.group(1) + "…", text)


def stripe_error_message(response: httpx.Response) -> str:
    """A short, safe message from Stripe's `{"error": {...}}` body; keys are never echoed."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    err = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(err, Mapping):
        return f"HTTP {response.status_code}"
    message = err.get("message") if isinstance(err.get("message"), str) else None
    code = err.get("code") if isinstance(err.get("code"), str) else None
    text = message or code or f"HTTP {response.status_code}"
    return redact_keys(text)[:300]


# --- small parsing helpers -----------------------------------------------------------------------


def _dt(ts: Any) -> datetime | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(int(ts), tz=UTC)


def _money(minor: Any, currency: str) -> Money:
    return Money.from_minor(int(minor or 0), currency)


def _currency(raw: Mapping[str, Any], what: str) -> str:
    """The object's ISO currency. Stripe always sends one on money-bearing objects; a missing one
    is a malformed response, never a guess (a wrong currency is a wrong amount)."""
    value = raw.get("currency")
    if not isinstance(value, str) or not value.strip():
        raise ProviderBadResponse("stripe", f"Stripe sent {what} with no currency")
    return value.strip().lower()


def _balance_currency(raw: Mapping[str, Any]) -> str | None:
    """A customer's currency: None for a customer never billed (no currency, zero balance); a
    balance with no currency is malformed."""
    value = raw.get("currency")
    if isinstance(value, str) and value.strip():
        return value.strip().lower()
    if int(raw.get("balance") or 0) != 0:
        raise ProviderBadResponse("stripe", "Stripe sent a customer balance with no currency")
    return None


def _sum_minor(
    items: Iterable[Mapping[str, Any]] | None, *, where: Callable[[Any], bool] = bool
) -> int:
    return sum(int(i.get("amount") or 0) for i in items or () if where(i))


def _dec(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _obj(value: Any) -> JSON:
    return value if isinstance(value, dict) else {}


def _id_of(value: Any) -> str | None:
    """An expandable field's ID, whether it came expanded or as a string."""
    if isinstance(value, Mapping):
        return str(value["id"]) if "id" in value else None
    return None if value is None else str(value)


def _search_literal(value: str) -> str:
    """A value quoted for Stripe's search language (backslash-escaped quotes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if isinstance(exc, ProviderError):
            return exc
    return group.exceptions[0]


async def _gather(coros: Sequence[Awaitable[Any]]) -> list[Any]:
    """Run `coros` concurrently; on failure cancel the rest and raise the first provider error
    itself (not an ExceptionGroup), so callers see our error tree."""
    tasks: list[asyncio.Task[Any]] = []
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_awaitable(c)) for c in coros]
    except BaseExceptionGroup as failed:
        raise _first_error(failed) from None
    return [t.result() for t in tasks]


async def _awaitable(aw: Awaitable[T]) -> T:
    return await aw


# --- the provider --------------------------------------------------------------------------------


#: Stripe's documented read limits (docs.stripe.com/rate-limits): 100 requests/s in live mode,
#: 25 in test mode (sandbox keys). `rate_limit=` or STRIPE_RATE_LIMIT overrides.
LIVE_RATE_LIMIT = 100.0
TEST_RATE_LIMIT = 25.0


def default_rate_limit(api_key: str) -> float:
    """Stripe's limit for the mode the key belongs to."""
    return LIVE_RATE_LIMIT if api_key.startswith(("sk_live_", "rk_live_")) else TEST_RATE_LIMIT


class StripeBillingProvider:
    """`BillingProvider` for Stripe. Create once; `aclose()` on shutdown."""

    name: ProviderName = "stripe"

    def __init__(
        self,
        api_key: SecretStr | str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        account_id_metadata_key: str = "account_id",
        api_version: str = API_VERSION,
        policy: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rate_limit: float | None = None,
        usage_days: int = 35,
        history_days: int = 400,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        self._http = ProviderHttp(
            "stripe",
            base_url=base_url,
            headers={
                "Authorization": f"Bearer {key}",
                "Stripe-Version": api_version,
                "Accept": "application/json",
                "User-Agent": "billing-triage",
            },
            policy=policy,
            transport=transport,
            retry_hook=stripe_retry_hook,
            error_parser=stripe_error_message,
            classify=stripe_classify,
            # Requests/s; None: not paced (the composition root passes the documented
            # default, see `default_rate_limit` / `DEFAULT_RATE_LIMIT`).
            rate=rate_limit or None,
        )
        self._metadata_key = account_id_metadata_key
        self._usage_days = max(1, usage_days)
        self._history_days = max(1, history_days)
        #: Days of charges a snapshot reads (`scan_view` narrows it), and the newest invoices
        #: it reads instead of `history_days` of them (None: every invoice of the window).
        self._payment_days = self._history_days
        self._invoice_count: int | None = None
        self._clock = clock or (lambda: datetime.now(UTC))
        self._prices: dict[str, JSON] = {}
        self._meters: dict[str, tuple[float, JSON]] = {}  # ID -> (fetched at, meter)

    @property
    def http(self) -> ProviderHttp:
        """The HTTP client (for call counters)."""
        return self._http

    def scan_view(self, *, invoices: int, payment_days: int) -> StripeBillingProvider:
        """This client reading only what an anomaly scan needs: the newest `invoices` invoices
        (one page) and `payment_days` of charges; lookups keep the full history.
        The view shares this client's HTTP client (pacing, limits, counters) and caches."""
        view = copy.copy(self)
        view._invoice_count = max(1, min(invoices, PAGE_LIMIT))
        view._payment_days = max(1, payment_days)
        return view

    async def aclose(self) -> None:
        """Release connections."""
        await self._http.aclose()

    # -- HTTP ------------------------------------------------------------------------------------

    async def _get(self, path: str, params: Sequence[tuple[str, str]] = ()) -> JSON:
        body = await self._http.request("GET", path, params=list(params) or None)
        if not isinstance(body, dict):
            raise ProviderBadResponse("stripe", "Stripe sent a malformed response")
        return body

    async def _list_all(
        self, path: str, params: Sequence[tuple[str, str]] = (), *, after: str | None = None
    ) -> list[JSON]:
        """Every object of a `list` endpoint, paging with `starting_after`."""
        items: list[JSON] = []
        cursor = after
        for _ in range(MAX_PAGES):
            query = [*params, ("limit", str(PAGE_LIMIT))]
            if cursor:
                query.append(("starting_after", cursor))
            page = await self._get(path, query)
            data = _list_data(page)
            items.extend(data)
            if not page.get("has_more") or not data:
                break
            cursor = str(data[-1]["id"])
        return items

    async def _first_page(self, path: str, params: Sequence[tuple[str, str]]) -> list[JSON]:
        """The objects of one page of a `list` endpoint (`params` carries its `limit`)."""
        return _list_data(await self._get(path, params))

    async def _search(self, query: str) -> list[JSON]:
        page = await self._get(
            "v1/customers/search", [("query", query), ("limit", str(PAGE_LIMIT))]
        )
        return _list_data(page)

    # -- lookup ----------------------------------------------------------------------------------

    async def find_customers(self, kind: IdentifierKind, value: str) -> list[CustomerRecord]:
        """Customers matching `value`: by ID, by email (exact, then lower-cased, then search), or
        by our account ID in the customer's metadata (search). [] for other kinds."""
        value = value.strip()
        if not value:
            return []
        if kind is IdentifierKind.STRIPE_CUSTOMER:
            found = await self._customer_by_id(value)
        elif kind is IdentifierKind.EMAIL:
            found = await self._customers_by_email(value)
        elif kind is IdentifierKind.ACCOUNT_ID:
            key = _search_literal(self._metadata_key)
            found = await self._search(f"metadata[{key}]:{_search_literal(value)}")
        elif kind is IdentifierKind.STRIPE_INVOICE and value.startswith("in_"):
            found = await self._customer_of(f"v1/invoices/{quote(value, safe='')}")
        elif kind is IdentifierKind.STRIPE_CHARGE and value.startswith("ch_"):
            found = await self._customer_of(f"v1/charges/{quote(value, safe='')}")
        elif kind is IdentifierKind.INVOICE_NUMBER:
            found = await self._customers_by_invoice_number(value)
        else:
            return []
        try:
            return [self._customer(c) for c in found if not c.get("deleted")]
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            raise ProviderBadResponse("stripe", "Stripe sent a customer we could not read") from exc

    async def customer_pages(
        self, *, page_size: int = PAGE_LIMIT
    ) -> AsyncIterator[list[CustomerRecord]]:
        """Every customer, newest first, a page at a time (`GET /v1/customers` with
        `starting_after`); deleted customers are skipped."""
        cursor: str | None = None
        limit = str(max(1, min(page_size, PAGE_LIMIT)))
        while True:
            query = [("limit", limit)]
            if cursor:
                query.append(("starting_after", cursor))
            page = await self._get("v1/customers", query)
            data = _list_data(page)
            try:
                records = [self._customer(c) for c in data if not c.get("deleted")]
            except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
                raise ProviderBadResponse(
                    "stripe", "Stripe sent a customer we could not read"
                ) from exc
            if records:
                yield records
            if not page.get("has_more") or not data:
                return
            cursor = str(data[-1]["id"])

    async def customer_of_payment(self, payment_id: str) -> CustomerRecord | None:
        """The customer of charge `payment_id` (`GET /v1/charges/{id}`); None when unknown."""
        if not payment_id.startswith(("ch_", "py_")):
            return None
        try:
            charge = await self._get(f"v1/charges/{quote(payment_id, safe='')}")
        except ProviderNotFound:
            return None
        customer_id = _id_of(charge.get("customer"))
        if not customer_id:
            return None
        found = await self._customer_by_id(customer_id)
        return self._customer(found[0]) if found and not found[0].get("deleted") else None

    async def _customer_by_id(self, customer_id: str) -> list[JSON]:
        try:
            return [await self._get(f"v1/customers/{quote(customer_id, safe='')}")]
        except ProviderNotFound:
            return []

    async def _customer_of(self, path: str) -> list[JSON]:
        """The customer an invoice or charge belongs to (expanded in the same request)."""
        try:
            obj = await self._get(path, [("expand[]", "customer")])
        except ProviderNotFound:
            return []
        customer = obj.get("customer")
        if isinstance(customer, dict):
            return [customer]
        if isinstance(customer, str) and customer:
            return await self._customer_by_id(customer)
        return []

    async def _customers_by_invoice_number(self, number: str) -> list[JSON]:
        """The customers of invoices printed with `number` (invoice search, customer expanded)."""
        page = await self._get(
            "v1/invoices/search",
            [("query", f"number:{_search_literal(number)}"), ("limit", "10"),
             ("expand[]", "data.customer")],
        )  # fmt: skip
        found: dict[str, JSON] = {}
        for invoice in _list_data(page):
            customer = invoice.get("customer")
            if isinstance(customer, dict) and customer.get("id"):
                found.setdefault(str(customer["id"]), customer)
            elif isinstance(customer, str) and customer not in found:
                for raw in await self._customer_by_id(customer):
                    found.setdefault(str(raw["id"]), raw)
        return list(found.values())

    async def _customers_by_email(self, email: str) -> list[JSON]:
        # The list filter is exact and case-sensitive (and strongly consistent): try the address
        # as typed and lower-cased together; only then fall back to the lagging, case-blind search.
        variants = list(dict.fromkeys([email, email.lower()]))
        pages = await _gather(
            [self._get("v1/customers", [("email", v), ("limit", str(PAGE_LIMIT))])
             for v in variants]
        )  # fmt: skip
        found: dict[str, JSON] = {}
        for page in pages:
            for customer in _list_data(page):
                found.setdefault(str(customer["id"]), customer)
        if found:
            return list(found.values())
        return await self._search(f"email:{_search_literal(email)}")

    def _customer(self, raw: JSON) -> CustomerRecord:
        currency = _balance_currency(raw)
        balance = raw.get("balance")
        metadata = _obj(raw.get("metadata"))
        account_id = metadata.get(self._metadata_key)
        mode = "" if raw.get("livemode") else "test/"
        return CustomerRecord(
            provider="stripe",
            customer_id=str(raw["id"]),
            account_id=str(account_id) if account_id else None,
            name=raw.get("name"),
            email=raw.get("email"),
            currency=currency,
            balance=_money(balance, currency) if balance is not None and currency else None,
            delinquent=bool(raw.get("delinquent")),
            created_at=_dt(raw.get("created")),
            dashboard_url=f"https://dashboard.stripe.com/{mode}customers/{raw['id']}",
            raw=raw,
        )

    # -- payments the approval flow refunds ------------------------------------------------------

    async def payment_for_invoice(self, invoice_id: str) -> str | None:
        """The payment (`ch_…` or `pi_…`) that paid `invoice_id`, via
        `GET /v1/invoice_payments?invoice=`; None when nothing has paid it. Raises
        `ProviderNotFound` for an unknown invoice."""
        payments = await self._list_all("v1/invoice_payments", [("invoice", invoice_id)])
        paid = [p for p in payments if p.get("status") == "paid"]
        paid.sort(key=lambda p: (not p.get("is_default"), -int(p.get("created") or 0)))
        for payment in paid:
            ref = _obj(payment.get("payment"))
            found = _id_of(ref.get(str(ref.get("type")))) if ref.get("type") else None
            if found and found.startswith(("ch_", "pi_")):
                return found
        return None

    async def get_payment(self, payment_id: str) -> Payment:
        """The charge `ch_…`, or the latest charge of the payment intent `pi_…`, with
        `amount_refunded` (so `Payment.refundable` is what is left to refund). An intent with no
        charge yet is returned as a pending payment of its own amount. Raises `ProviderNotFound`
        for an unknown ID and ValueError for an ID that is neither."""
        now = self._clock().astimezone(UTC)
        mapper = _Mapper(prices={}, meters={}, products={}, now=now)
        try:
            if payment_id.startswith("ch_"):
                raw = await self._get(f"v1/charges/{quote(payment_id, safe='')}")
                return mapper.payment(raw, str(_id_of(raw.get("customer")) or ""), None)
            if not payment_id.startswith("pi_"):
                raise ValueError(f"{payment_id!r} is not a Stripe charge or payment intent")
            intent = await self._get(
                f"v1/payment_intents/{quote(payment_id, safe='')}", [("expand[]", "latest_charge")]
            )
            customer_id = str(_id_of(intent.get("customer")) or "")
            latest = intent.get("latest_charge")
            if isinstance(latest, dict):
                return mapper.payment(latest, customer_id, None)
            if isinstance(latest, str):
                raw = await self._get(f"v1/charges/{quote(latest, safe='')}")
                return mapper.payment(raw, customer_id, None)
            currency = str(intent["currency"])
            return Payment(
                provider="stripe",
                id=str(intent["id"]),
                customer_id=customer_id,
                amount=_money(intent.get("amount"), currency),
                status=PaymentStatus.PENDING,
                created_at=_dt(intent.get("created")) or now,
                amount_refunded=Money.zero(currency),
                payment_intent_id=str(intent["id"]),
                raw=intent,
            )
        except (KeyError, TypeError, InvalidOperation) as exc:
            raise ProviderBadResponse("stripe", "Stripe sent a payment we could not read") from exc

    # -- writes (BillingWriter, after approval only) ---------------------------------------------

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
        """Refund `amount` of the charge or payment intent `payment_id` of `customer`
        (`POST /v1/refunds`, `Idempotency-Key`, `metadata[request_id]`).

        The payment is read first: one of another customer, or in another currency, is refused
        (`ProviderRequestError`) before anything is sent. What is left to refund is Stripe's to
        judge (a retry after an unseen success must reach Stripe to be replayed), so an amount
        above it comes back as Stripe's own `ProviderRequestError`."""
        check_write(request_id=request_id, idempotency_key=idempotency_key, amount=amount)
        if not payment_id.startswith(("ch_", "pi_")):
            raise ValueError(f"{payment_id!r} is not a Stripe charge or payment intent")

        async def run() -> WriteResult:
            payment = await self.get_payment(payment_id)
            if payment.customer_id and payment.customer_id != customer.customer_id:
                raise ProviderRequestError(
                    "stripe", f"{payment_id} belongs to another Stripe customer, not this account"
                )
            if payment.amount.currency != amount.currency:
                raise ProviderRequestError(
                    "stripe",
                    f"{payment_id} was paid in {payment.amount.currency.upper()}; a refund in "
                    f"{amount.currency.upper()} is not possible",
                )
            field = "charge" if payment_id.startswith("ch_") else "payment_intent"
            form = [
                (field, payment_id),
                ("amount", str(amount.to_minor())),
                ("reason", refund_reason(reason)),
                ("metadata[request_id]", request_id),
            ]
            answer = await self._write("v1/refunds", form, idempotency_key)
            return self._write_result(answer, "refund", request_id)

        return await logged_write(
            "stripe", "refund", request_id=request_id, idempotency_key=idempotency_key, run=run
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
        """Credit `amount` to the customer's Stripe balance (a balance transaction with a negative
        amount, which reduces the next invoices); no money moves."""
        check_write(request_id=request_id, idempotency_key=idempotency_key, amount=amount)

        async def run() -> WriteResult:
            if customer.currency and customer.currency.lower() != amount.currency:
                raise ProviderRequestError(
                    "stripe",
                    f"this customer's Stripe balance is in {customer.currency.upper()}; a credit "
                    f"in {amount.currency.upper()} cannot be applied to it",
                )
            form = [
                ("amount", str(-amount.to_minor())),
                ("currency", amount.currency),
                ("description", description),
                ("metadata[request_id]", request_id),
            ]
            path = f"v1/customers/{quote(customer.customer_id, safe='')}/balance_transactions"
            answer = await self._write(path, form, idempotency_key)
            return self._write_result(answer, "credit", request_id)

        return await logged_write(
            "stripe", "credit", request_id=request_id, idempotency_key=idempotency_key, run=run
        )

    async def find_write(
        self,
        *,
        customer: CustomerRecord,
        kind: WriteKind,
        request_id: str,
        payment_id: str | None = None,
    ) -> WriteResult | None:
        """The refund of `payment_id` (required for refunds: Stripe lists refunds by payment
        only) or the balance transaction of `customer` whose `metadata[request_id]` is
        `request_id`, else None."""
        if kind == "refund":
            if payment_id is None or not payment_id.startswith(("ch_", "pi_")):
                raise ValueError("finding a Stripe refund needs its payment (ch_… or pi_…)")
            field = "charge" if payment_id.startswith("ch_") else "payment_intent"
            found = await self._list_all("v1/refunds", [(field, payment_id)])
        else:
            path = f"v1/customers/{quote(customer.customer_id, safe='')}/balance_transactions"
            found = await self._list_all(path)
        mine = sorted(
            (o for o in found if _obj(o.get("metadata")).get("request_id") == request_id),
            key=lambda o: int(o.get("created") or 0),
        )
        if not mine:
            return None
        if len(mine) > 1:
            ids = ",".join(str(o["id"]) for o in mine)
            log.error(
                "several stripe objects carry one request ID",
                extra={"request_id": request_id, "object_ids": ids},
            )
        answer = HttpAnswer(status=200, body=mine[0], headers=httpx.Headers())
        return replace_replayed(self._write_result(answer, kind, request_id))

    async def _write(
        self, path: str, form: Sequence[tuple[str, str]], idempotency_key: str
    ) -> HttpAnswer:
        return await self._http.send(
            "POST", path, form=list(form), idempotency_key=idempotency_key, write=True
        )

    def _write_result(self, answer: HttpAnswer, kind: WriteKind, request_id: str) -> WriteResult:
        """A refund or balance transaction as a `WriteResult`; one we cannot read may still have
        been made, so it is an unknown outcome, not a failure."""
        raw = answer.body
        try:
            if not isinstance(raw, dict) or not str(raw.get("id") or ""):
                raise KeyError("id")
            currency = str(raw["currency"])
            minor = int(raw["amount"])
            if kind == "credit":
                minor = -minor  # a credit is a negative balance transaction
                status = "applied"  # balance transactions have no status: they apply at once
            else:
                status = str(raw.get("status") or "pending")
            recorded = _obj(raw.get("metadata")).get("request_id")
            return WriteResult(
                provider="stripe",
                kind=kind,
                object_id=str(raw["id"]),
                amount=Money.from_minor(minor, currency),
                status=status,
                request_id=str(recorded or request_id),
                replayed=answer.headers.get("idempotent-replayed", "").lower() == "true",
                raw=raw,
            )
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            raise ProviderOutcomeUnknown(
                "stripe", f"Stripe answered the {kind} with an object we could not read"
            ) from exc

    # -- snapshot --------------------------------------------------------------------------------

    async def get_snapshot(self, customer: CustomerRecord) -> ProviderSnapshot:
        """The customer's subscriptions, invoices with every line, payments, refunds, disputes,
        balance, daily metered usage and upcoming invoice."""
        cid = customer.customer_id
        now = self._clock().astimezone(UTC)
        since = str(int((now - timedelta(days=self._history_days)).timestamp()))
        paid_since = str(int((now - timedelta(days=self._payment_days)).timestamp()))
        raw_customer = dict(customer.raw) if customer.raw.get("object") == "customer" else None
        invoices_job: Awaitable[list[JSON]]
        if self._invoice_count is not None:  # the newest invoices: one page, newest first
            invoices_job = self._first_page("v1/invoices", [
                ("customer", cid), ("expand[]", "data.payments"),
                ("limit", str(self._invoice_count))])  # fmt: skip
        else:
            invoices_job = self._list_all("v1/invoices", [
                ("customer", cid), ("created[gte]", since),
                ("expand[]", "data.payments")])  # fmt: skip

        # Round 1: everything that needs only the customer ID.
        round1: list[Awaitable[Any]] = [
            self._list_all("v1/subscriptions", [
                ("customer", cid), ("status", "all"),
                ("expand[]", "data.items.data.price.product")]),
            invoices_job,
            self._list_all("v1/charges", [
                ("customer", cid), ("created[gte]", paid_since), ("expand[]", "data.refunds")]),
        ]  # fmt: skip
        if raw_customer is None:
            round1.append(self._get(f"v1/customers/{quote(cid, safe='')}"))
        results = await _gather(round1)
        subs, invoices, charges = results[0], results[1], results[2]
        if raw_customer is None:
            raw_customer = results[3]
        try:
            return await self._assemble(customer, raw_customer, subs, invoices, charges, now)
        except (KeyError, TypeError, ValueError, InvalidOperation, AttributeError) as exc:
            log.warning("stripe object could not be read", exc_info=True)
            raise ProviderBadResponse("stripe", "Stripe sent an object we could not read") from exc

    async def _assemble(
        self,
        record: CustomerRecord,
        raw_customer: JSON,
        subs: list[JSON],
        invoices: list[JSON],
        charges: list[JSON],
        now: datetime,
    ) -> ProviderSnapshot:
        cid = record.customer_id
        for sub in subs:
            for item in _items(sub):
                price = _obj(item.get("price"))
                if price.get("id"):
                    self._remember_price(price)

        # Round 2: what round 1 points at.
        lines_of: dict[str, list[JSON]] = {}
        payments_of: dict[str, list[JSON]] = {}
        refunds_of: dict[str, list[JSON]] = {}
        jobs: list[Awaitable[None]] = []

        async def more_lines(inv: JSON) -> None:
            embedded = _list_data(_obj(inv.get("lines")))
            rest = await self._list_all(
                f"v1/invoices/{quote(str(inv['id']), safe='')}/lines",
                after=str(embedded[-1]["id"]) if embedded else None,
            )
            lines_of[str(inv["id"])] = embedded + rest

        async def more_payments(inv: JSON) -> None:
            payments_of[str(inv["id"])] = await self._list_all(
                "v1/invoice_payments", [("invoice", str(inv["id"]))]
            )

        async def more_refunds(charge: JSON) -> None:
            refunds_of[str(charge["id"])] = await self._list_all(
                "v1/refunds", [("charge", str(charge["id"]))]
            )

        for inv in invoices:
            lines = _obj(inv.get("lines"))
            if lines.get("has_more"):
                jobs.append(more_lines(inv))
            payments = inv.get("payments")
            if isinstance(payments, dict) and payments.get("has_more"):
                jobs.append(more_payments(inv))
        for charge in charges:
            embedded_refunds = charge.get("refunds")
            if (isinstance(embedded_refunds, dict) and embedded_refunds.get("has_more")) or (
                embedded_refunds is None and int(charge.get("amount_refunded") or 0) > 0
            ):
                jobs.append(more_refunds(charge))

        disputed = [str(c["id"]) for c in charges if c.get("disputed")]
        dispute_job = _gather([self._list_all("v1/disputes", [("charge", ch)]) for ch in disputed])
        usage_job = self._usage(cid, subs, now)
        upcoming_job = self._upcoming(cid, subs)
        embedded_lines = [line for inv in invoices for line in _list_data(_obj(inv.get("lines")))]
        prices_job = self._learn_prices(embedded_lines)
        meters_job = self._learn_meters(_meters_of(_metered_prices(subs).values()))
        round2 = await _gather(
            [_gather(jobs), dispute_job, usage_job, upcoming_job, prices_job, meters_job]
        )
        disputes_raw: list[list[JSON]] = round2[1]
        usage_raw: list[tuple[str, JSON]] = round2[2]
        upcoming_raw: JSON | None = round2[3]

        all_lines = {
            str(inv["id"]): lines_of.get(str(inv["id"])) or _list_data(_obj(inv.get("lines")))
            for inv in invoices
        }
        # Round 3, rarely: prices named only by lines of long invoices, and meters of prices
        # that are no longer on a subscription (both cached, so usually nothing to fetch).
        paged = [line for lines in lines_of.values() for line in lines]
        if paged:
            await self._learn_prices(paged)
        line_prices = (
            _obj(_obj(line.get("pricing")).get("price_details")).get("price")
            for lines in all_lines.values()
            for line in lines
        )
        await self._learn_meters(
            _meters_of(self._prices.get(str(_id_of(p))) or {} for p in line_prices)
        )

        products = self._products(subs)
        meters = {mid: meter for mid, (_, meter) in self._meters.items()}
        mapper = _Mapper(prices=self._prices, meters=meters, products=products, now=now)
        invoice_objs = sorted(
            (mapper.invoice(inv, all_lines[str(inv["id"])], cid) for inv in invoices),
            key=lambda i: i.created_at or now,
            reverse=True,
        )
        charge_invoice = _charge_invoices(invoices, charges, payments_of)
        payments = sorted(
            (mapper.payment(ch, cid, charge_invoice.get(str(ch["id"]))) for ch in charges),
            key=lambda p: p.created_at,
            reverse=True,
        )
        refunds: list[Refund] = []
        for charge in charges:
            raw_refunds = refunds_of.get(str(charge["id"]))
            if raw_refunds is None:
                raw_refunds = _list_data(_obj(charge.get("refunds")))
            refunds.extend(mapper.refund(r) for r in raw_refunds)
        refunds.sort(key=lambda r: r.created_at, reverse=True)
        seen: set[str] = set()
        disputes: list[Dispute] = []
        for group in disputes_raw:
            for raw in group:
                if str(raw["id"]) not in seen:
                    seen.add(str(raw["id"]))
                    disputes.append(mapper.dispute(raw))
        disputes.sort(key=lambda d: d.created_at, reverse=True)

        customer = self._customer(raw_customer) if raw_customer.get("id") else record
        balances: tuple[CreditBalance, ...] = ()
        raw_balance = int(raw_customer.get("balance") or 0)
        if raw_balance:
            currency = _currency(raw_customer, "a customer balance")
            balances = (
                CreditBalance(
                    provider="stripe",
                    kind="customer_balance",
                    remaining=-_money(raw_balance, currency),
                    name="Customer balance",
                    raw={"balance": raw_balance, "currency": currency},
                ),
            )
        upcoming = None
        if upcoming_raw is not None:
            preview_lines = _list_data(_obj(upcoming_raw.get("lines")))
            upcoming = mapper.invoice(upcoming_raw, preview_lines, cid)
        return ProviderSnapshot(
            provider="stripe",
            customer=customer,
            subscriptions=tuple(mapper.subscription(s) for s in _newest(subs)),
            invoices=tuple(invoice_objs),
            upcoming_invoice=upcoming,
            payments=tuple(payments),
            refunds=tuple(refunds),
            disputes=tuple(disputes),
            balances=balances,
            usage=tuple(mapper.usage(usage_raw, subs)),
        )

    # -- round-2 pieces --------------------------------------------------------------------------

    def _remember_price(self, price: JSON) -> None:
        if len(self._prices) >= MAX_CACHED:
            self._prices.clear()  # a crude bound; prices are cheap to fetch again
        self._prices[str(price["id"])] = price

    async def _learn_prices(self, lines: Iterable[JSON]) -> None:
        """Fetch the prices of subscription lines that are not known yet (prices are immutable
        where it matters: usage type, meter, unit amount)."""
        wanted: set[str] = set()
        for line in lines:
            parent = _obj(line.get("parent"))
            if parent.get("type") != "subscription_item_details":
                continue
            price = _obj(_obj(line.get("pricing")).get("price_details")).get("price")
            if isinstance(price, dict) and price.get("id"):
                self._remember_price(price)
            elif isinstance(price, str) and price not in self._prices:
                wanted.add(price)

        async def fetch(price_id: str) -> None:
            try:
                self._remember_price(
                    await self._get(
                        f"v1/prices/{quote(price_id, safe='')}", [("expand[]", "product")]
                    )
                )
            except ProviderNotFound:
                log.info("stripe price not found", extra={"price": price_id})

        await _gather([fetch(p) for p in sorted(wanted)])

    async def _learn_meters(self, meter_ids: Iterable[str]) -> None:
        """Fetch the meters (for their display names) not fetched in the last ten minutes."""
        now = time.monotonic()
        stale = sorted(
            m for m in set(meter_ids)
            if m not in self._meters or now - self._meters[m][0] > METER_CACHE_SECONDS
        )  # fmt: skip

        async def fetch(meter_id: str) -> None:
            try:
                meter = await self._get(f"v1/billing/meters/{quote(meter_id, safe='')}")
            except ProviderNotFound:
                return
            if len(self._meters) >= MAX_CACHED:
                self._meters.clear()  # a crude bound, as for prices: meters are cheap to fetch
            self._meters[meter_id] = (time.monotonic(), meter)

        await _gather([fetch(m) for m in stale])

    async def _usage(self, cid: str, subs: list[JSON], now: datetime) -> list[tuple[str, JSON]]:
        """Daily meter event summaries of every meter the customer's subscriptions bill."""
        meters = sorted(_metered_prices(subs))
        if not meters:
            return []
        today = datetime(now.year, now.month, now.day, tzinfo=UTC)
        start = today - timedelta(days=self._usage_days - 1)
        end = today + timedelta(days=1)
        ranges: list[tuple[datetime, datetime]] = []
        cursor = start
        while cursor < end:
            stop = min(end, cursor + timedelta(days=SUMMARY_CHUNK_DAYS))
            ranges.append((cursor, stop))
            cursor = stop

        async def fetch(meter_id: str, lo: datetime, hi: datetime) -> list[tuple[str, JSON]]:
            rows = await self._list_all(
                f"v1/billing/meters/{quote(meter_id, safe='')}/event_summaries",
                [("customer", cid), ("start_time", str(int(lo.timestamp()))),
                 ("end_time", str(int(hi.timestamp()))), ("value_grouping_window", "day")],
            )  # fmt: skip
            return [(meter_id, row) for row in rows]

        chunks = await _gather([fetch(m, lo, hi) for m in meters for lo, hi in ranges])
        return [row for chunk in chunks for row in chunk]

    async def _upcoming(self, cid: str, subs: list[JSON]) -> JSON | None:
        """The next invoice of the customer's main live subscription, if Stripe can preview one."""
        live = [s for s in _newest(subs) if s.get("status") in _LIVE_SUBSCRIPTION]
        if not live:
            return None
        try:
            body = await self._http.request(
                "POST",
                "v1/invoices/create_preview",
                form={"customer": cid, "subscription": str(live[0]["id"])},
                idempotent=True,  # a preview changes nothing: safe to retry
            )
        except ProviderAuthError:
            raise
        except ProviderError as exc:
            # The preview is optional (e.g. `invoice_upcoming_none`, or a preview that keeps
            # failing): the rest of the snapshot still stands without it.
            log.info("stripe preview unavailable", extra={"reason": exc.message})
            return None
        return body if isinstance(body, dict) else None

    def _products(self, subs: list[JSON]) -> dict[str, JSON]:
        """Products seen expanded, on the subscriptions' prices or on prices looked up."""
        prices = [_obj(item.get("price")) for sub in subs for item in _items(sub)]
        products: dict[str, JSON] = {}
        for price in [*self._prices.values(), *prices]:
            product = price.get("product")
            if isinstance(product, dict) and product.get("id"):
                products[str(product["id"])] = product
        return products


# --- mapping -------------------------------------------------------------------------------------


def replace_replayed(result: WriteResult) -> WriteResult:
    """`result` marked as found (it already existed)."""
    return dataclasses.replace(result, replayed=True)


def _list_data(page: Mapping[str, Any]) -> list[JSON]:
    data = page.get("data")
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise ProviderBadResponse("stripe", "Stripe sent a malformed list")
    return data


def _items(sub: Mapping[str, Any]) -> list[JSON]:
    items = sub.get("items")
    return _list_data(items) if isinstance(items, dict) else []


def _newest(objs: Iterable[JSON]) -> list[JSON]:
    return sorted(objs, key=lambda o: int(o.get("created") or 0), reverse=True)


def _metered_prices(subs: list[JSON]) -> dict[str, JSON]:
    """Meter ID -> the price billing it, preferring live subscriptions' prices."""
    found: dict[str, JSON] = {}
    ranked = sorted(subs, key=lambda s: (s.get("status") in _LIVE_SUBSCRIPTION,
                                         int(s.get("created") or 0)))  # fmt: skip
    for sub in ranked:  # later (live, newer) subscriptions overwrite older ones
        for item in _items(sub):
            price = _obj(item.get("price"))
            recurring = _obj(price.get("recurring"))
            meter = recurring.get("meter")
            if recurring.get("usage_type") == "metered" and meter:
                found[str(meter)] = price
    return found


def _meters_of(prices: Iterable[Mapping[str, Any]]) -> set[str]:
    """The meters of metered prices."""
    out: set[str] = set()
    for price in prices:
        recurring = _obj(price.get("recurring"))
        if recurring.get("usage_type") == "metered" and recurring.get("meter"):
            out.add(str(recurring["meter"]))
    return out


def _charge_invoices(
    invoices: list[JSON], charges: list[JSON], extra_payments: Mapping[str, list[JSON]]
) -> dict[str, str]:
    """Charge ID -> invoice ID, from the invoices' payments (by charge or by payment intent)."""
    by_charge: dict[str, str] = {}
    by_intent: dict[str, str] = {}
    for inv in invoices:
        iid = str(inv["id"])
        payments = extra_payments.get(iid)
        if payments is None:
            payments = _list_data(_obj(inv.get("payments"))) if inv.get("payments") else []
        for payment in payments:
            ref = _obj(payment.get("payment"))
            if ref.get("type") == "charge" and ref.get("charge"):
                by_charge[str(_id_of(ref["charge"]))] = iid
            elif ref.get("type") == "payment_intent" and ref.get("payment_intent"):
                by_intent[str(_id_of(ref["payment_intent"]))] = iid
    out: dict[str, str] = {}
    for charge in charges:
        chid = str(charge["id"])
        intent = _id_of(charge.get("payment_intent"))
        if chid in by_charge:
            out[chid] = by_charge[chid]
        elif intent is not None and intent in by_intent:
            out[chid] = by_intent[intent]
    return out


class _Mapper:
    """Turns Stripe JSON into our dataclasses, with the prices, meters and products it knows."""

    def __init__(
        self,
        *,
        prices: Mapping[str, JSON],
        meters: Mapping[str, JSON],
        products: Mapping[str, JSON],
        now: datetime,
    ) -> None:
        self.prices = prices
        self.meters = meters
        self.products = products
        self.now = now

    # names

    def meter_name(self, meter_id: str) -> str:
        meter = self.meters.get(meter_id) or {}
        return str(meter.get("display_name") or meter.get("event_name") or meter_id)

    def product_name(self, product: Any) -> str | None:
        if isinstance(product, dict) and product.get("name"):
            return str(product["name"])
        known = self.products.get(str(_id_of(product)))
        return str(known["name"]) if known and known.get("name") else None

    def price_label(self, price: Mapping[str, Any]) -> str | None:
        return self.product_name(price.get("product")) or price.get("nickname")

    def line_plan(self, line: InvoiceLine) -> str | None:
        """The plan a fee line bills: its product's name, else its price's nickname."""
        return self.product_name(line.product_id) or self.price_label(
            self.prices.get(str(line.price_id)) or {}
        )

    # subscriptions

    def subscription(self, raw: JSON) -> Subscription:
        currency = _currency(raw, "a subscription")
        items = _items(raw)
        licensed = [
            i for i in items
            if _obj(_obj(i.get("price")).get("recurring")).get("usage_type") != "metered"
        ]  # fmt: skip
        named = licensed or items
        labels = [self.price_label(_obj(i.get("price"))) for i in named]
        plan_name = " + ".join(dict.fromkeys(label for label in labels if label)) or None
        first_price = _obj(named[0].get("price")) if named else {}
        starts = [int(i["current_period_start"]) for i in items if i.get("current_period_start")]
        ends = [int(i["current_period_end"]) for i in items if i.get("current_period_end")]
        recurring = Decimal(0)
        has_amount = False
        for item in licensed:
            price = _obj(item.get("price"))
            unit = _dec(price.get("unit_amount_decimal"))
            if unit is None and price.get("unit_amount") is not None:
                unit = Decimal(int(price["unit_amount"]))
            if unit is not None and price.get("billing_scheme", "per_unit") == "per_unit":
                recurring += unit * Decimal(int(item.get("quantity") or 1))
                has_amount = True
        return Subscription(
            provider="stripe",
            id=str(raw["id"]),
            status=_SUBSCRIPTION_STATUS.get(str(raw.get("status")), SubscriptionStatus.OTHER),
            plan_name=plan_name,
            plan_id=_id_of(first_price.get("product")) or first_price.get("id"),
            current_period_start=_dt(min(starts)) if starts else None,
            current_period_end=_dt(max(ends)) if ends else None,
            started_at=_dt(raw.get("start_date")),
            ends_at=_dt(raw.get("ended_at") or raw.get("cancel_at")),
            cancel_at_period_end=bool(raw.get("cancel_at_period_end")),
            recurring_amount=Money.from_minor(recurring, currency) if has_amount else None,
            raw=raw,
        )

    # invoices

    def invoice_status(self, raw: Mapping[str, Any]) -> InvoiceStatus:
        status = raw.get("status")
        if status == "open":
            due = raw.get("due_date")
            if due is not None and int(due) < self.now.timestamp():
                return InvoiceStatus.PAST_DUE
            if int(raw.get("attempt_count") or 0) > 0 and raw.get("next_payment_attempt"):
                return InvoiceStatus.PAST_DUE
            return InvoiceStatus.OPEN
        return {
            "paid": InvoiceStatus.PAID,
            "void": InvoiceStatus.VOID,
            "uncollectible": InvoiceStatus.UNCOLLECTIBLE,
        }.get(str(status), InvoiceStatus.DRAFT)

    def invoice(self, raw: JSON, lines: list[JSON], customer_id: str) -> Invoice:
        currency = _currency(raw, "an invoice")
        credits = _sum_minor(
            raw.get("total_pretax_credit_amounts"),
            where=lambda c: c.get("type") == "credit_balance_transaction",
        )
        tax = _sum_minor(
            raw.get("total_taxes"), where=lambda t: t.get("tax_behavior") != "inclusive"
        )
        ending = raw.get("ending_balance")
        balance_applied = None
        if ending is not None:
            balance_applied = _money(int(ending) - int(raw.get("starting_balance") or 0), currency)
        parent = _obj(raw.get("parent"))
        sub_id = _id_of(_obj(parent.get("subscription_details")).get("subscription"))
        mapped = tuple(self.line(line, currency) for line in lines)
        labels = (self.line_plan(line) for line in mapped if line.kind is LineKind.SUBSCRIPTION)
        plan_name = next((label for label in labels if label), None)
        return Invoice(
            provider="stripe",
            id=str(raw["id"]),
            customer_id=_id_of(raw.get("customer")) or customer_id,
            status=self.invoice_status(raw),
            currency=currency,
            total=_money(raw.get("total"), currency),
            subtotal=_money(raw.get("subtotal"), currency),
            tax=_money(tax, currency),
            discount=_money(_sum_minor(raw.get("total_discount_amounts")), currency),
            credits_applied=_money(credits, currency),
            balance_applied=balance_applied,
            amount_due=_money(raw.get("amount_due"), currency),
            amount_paid=_money(raw.get("amount_paid"), currency),
            number=raw.get("number"),
            created_at=_dt(raw.get("created")),
            period_start=_dt(raw.get("period_start")),
            period_end=_dt(raw.get("period_end")),
            due_at=_dt(raw.get("due_date")),
            paid_at=_dt(_obj(raw.get("status_transitions")).get("paid_at")),
            billing_reason=raw.get("billing_reason"),
            subscription_id=sub_id,
            plan_name=plan_name,
            url=raw.get("hosted_invoice_url"),
            memo=raw.get("description"),
            attempt_count=int(raw.get("attempt_count") or 0),
            lines=mapped,
            # A billing provider that invoices through Stripe names its own invoice in the
            # metadata (Orb: `orb_invoice_id`); every value is offered, the pairing decides.
            links=tuple(
                dict.fromkeys(
                    str(v) for v in _obj(raw.get("metadata")).values() if isinstance(v, str) and v
                )
            ),
            raw=raw,
        )

    def line(self, raw: JSON, currency: str) -> InvoiceLine:
        parent = _obj(raw.get("parent"))
        parent_type = parent.get("type")
        details = _obj(parent.get(str(parent_type))) if parent_type else {}
        proration = bool(details.get("proration"))
        pricing = _obj(raw.get("pricing"))
        price_ref = _obj(pricing.get("price_details")).get("price")
        price_id = _id_of(price_ref)
        price = price_ref if isinstance(price_ref, dict) else self.prices.get(str(price_id), {})
        recurring = _obj(price.get("recurring"))
        metric: str | None = None
        if proration:
            kind = LineKind.PRORATION
        elif parent_type == "invoice_item_details":
            kind = LineKind.ONE_OFF
        elif recurring.get("usage_type") == "metered":
            kind = LineKind.USAGE
            meter = recurring.get("meter")
            metric = self.meter_name(str(meter)) if meter else self.price_label(price) or price_id
        elif parent_type == "subscription_item_details" or recurring:
            kind = LineKind.SUBSCRIPTION
        else:
            kind = LineKind.ONE_OFF
        quantity = _dec(raw.get("quantity_decimal"))
        if quantity is None and raw.get("quantity") is not None:
            quantity = Decimal(int(raw["quantity"]))
        unit_minor = _dec(pricing.get("unit_amount_decimal"))
        if unit_minor is None:
            unit_minor = _dec(price.get("unit_amount_decimal"))
        unit_price = unit_minor.scaleb(-exponent(currency)) if unit_minor is not None else None
        period = _obj(raw.get("period"))
        product_id = _obj(pricing.get("price_details")).get("product") or _id_of(
            price.get("product")
        )
        return InvoiceLine(
            id=str(raw["id"]),
            description=str(raw.get("description") or ""),
            amount=_money(raw.get("amount"), currency),
            kind=kind,
            quantity=quantity,
            unit_price=unit_price,
            metric=metric,
            price_id=price_id,
            product_id=str(product_id) if product_id else None,
            period_start=_dt(period.get("start")),
            period_end=_dt(period.get("end")),
            proration=proration,
            discount_amount=_money(_sum_minor(raw.get("discount_amounts")), currency),
            tax_amount=_money(_sum_minor(raw.get("taxes")), currency),
            credits_applied=_money(
                _sum_minor(
                    raw.get("pretax_credit_amounts"),
                    where=lambda c: c.get("type") == "credit_balance_transaction",
                ),
                currency,
            ),
            raw=raw,
        )

    # payments

    def payment(self, raw: JSON, customer_id: str, invoice_id: str | None) -> Payment:
        currency = _currency(raw, "a charge")
        return Payment(
            provider="stripe",
            id=str(raw["id"]),
            customer_id=_id_of(raw.get("customer")) or customer_id,
            amount=_money(raw.get("amount"), currency),
            status=_PAYMENT_STATUS.get(str(raw.get("status")), PaymentStatus.PENDING),
            created_at=_dt(raw["created"]) or self.now,
            amount_refunded=_money(raw.get("amount_refunded"), currency),
            invoice_id=invoice_id,
            payment_intent_id=_id_of(raw.get("payment_intent")),
            failure_code=raw.get("failure_code"),
            failure_message=raw.get("failure_message"),
            disputed=bool(raw.get("disputed")),
            description=raw.get("description"),
            raw=raw,
        )

    def refund(self, raw: JSON) -> Refund:
        currency = _currency(raw, "a refund")
        metadata = {str(k): str(v) for k, v in _obj(raw.get("metadata")).items()}
        return Refund(
            provider="stripe",
            id=str(raw["id"]),
            amount=_money(raw.get("amount"), currency),
            status=str(raw.get("status") or "pending"),
            created_at=_dt(raw["created"]) or self.now,
            payment_id=_id_of(raw.get("charge")) or _id_of(raw.get("payment_intent")),
            reason=raw.get("reason"),
            metadata=metadata,
            raw=raw,
        )

    def dispute(self, raw: JSON) -> Dispute:
        currency = _currency(raw, "a dispute")
        return Dispute(
            provider="stripe",
            id=str(raw["id"]),
            amount=_money(raw.get("amount"), currency),
            status=str(raw.get("status")),
            reason=str(raw.get("reason") or "general"),
            created_at=_dt(raw["created"]) or self.now,
            payment_id=_id_of(raw.get("charge")),
            evidence_due_by=_dt(_obj(raw.get("evidence_details")).get("due_by")),
            raw=raw,
        )

    # usage

    def usage(self, rows: list[tuple[str, JSON]], subs: list[JSON]) -> list[UsagePoint]:
        prices = _metered_prices(subs)
        points: dict[tuple[date, str], UsagePoint] = {}
        for meter_id, row in rows:
            start = _dt(row.get("start_time"))
            if start is None:
                continue
            quantity = _dec(row.get("aggregated_value")) or Decimal(0)
            metric = self.meter_name(meter_id)
            point = UsagePoint(
                provider="stripe",
                day=start.date(),
                metric=metric,
                quantity=quantity,
                cost=_usage_cost(prices.get(meter_id), quantity),
            )
            points[(point.day, metric)] = point
        return [points[k] for k in sorted(points)]


def _usage_cost(price: Mapping[str, Any] | None, quantity: Decimal) -> Money | None:
    """quantity × unit price for simple per-unit prices; None where the price does not say."""
    if not price or price.get("billing_scheme", "per_unit") != "per_unit":
        return None
    if price.get("transform_quantity"):
        return None  # packages round per period, not per day
    unit = _dec(price.get("unit_amount_decimal"))
    if unit is None and price.get("unit_amount") is not None:
        unit = Decimal(int(price["unit_amount"]))
    if unit is None:
        return None
    return Money.from_minor(quantity * unit, _currency(price, "a price"))
