"""Orb billing provider: customer lookup and billing snapshots over Orb's REST API (base URL
includes `/v1`), mapped into the domain's frozen dataclasses.

Wire facts this module relies on (notes/providers.md §2, spec orb-openapi.json):

- Money is a decimal string in major units (`"8.00"`); quantities and credit balances are JSON
  numbers, decoded straight to `Decimal` by `ProviderHttp`.
- Times are ISO 8601 with an offset; we convert them to aware UTC.
- Lists are `{data, pagination_metadata: {has_more, next_cursor}}`, paged with `limit` (max 100)
  and `cursor`; filters use brackets (`customer_id[]`, `invoice_date[gte]`).

Lookup: by our account ID (Orb's `external_customer_id`) and by Orb customer ID. Orb has no email
filter, so an email returns []: the resolution service goes email → Stripe → account ID → Orb.

Amounts on `Invoice` (so that `sum(line.amount) == subtotal` and
`total == subtotal - discount + tax - credits_applied`):

- each Orb line item becomes one `InvoiceLine` whose `amount` is the line's `subtotal` (before
  adjustments); a line's minimum true-up (`adjustments[]` of type `minimum`) becomes a separate
  `MINIMUM` line, so our `subtotal` is Orb's `subtotal` plus minimum true-ups;
- `discount` sums the discount adjustments (usage, amount, percentage, tiered percentage) and
  maximum caps of every line, as positive numbers;
- `tax` sums the lines' `tax_amounts`;
- `credits_applied` sums the lines' prepaid `credits_applied` plus any `partially_invoiced_amount`
  (already billed on an earlier partial invoice, so prepaid like credits);
- `total` is Orb's `total`, which already nets credits; `balance_applied` is `total - amount_due`
  (Orb applies the customer balance between the two: positive = the balance reduced what is due).

Writes (`BillingWriter`, after approval only; notes/providers.md §2.4, §5): a credit is a credit
ledger `increment` (`POST /customers/{id}/credits/ledger_entry`, answered 201 with the entry) with
`Idempotency-Key` and `metadata.request_id`. Orb has no money-back refund: `refund_payment`
refuses, refunds go through Stripe. Units: a ledger amount is in the unit named by `currency`,
which may be a custom pricing unit ("credits") rather than money. We always send the customer's
invoicing currency (Orb requires a real currency to match it), so the increment is money in that
currency; a customer without an invoicing currency is refused rather than credited in a unit we
cannot name. Orb replays a key with `Idempotent-Replayed: true`, and answers 409
`resource_conflict` while the original is in flight (retried with the same key) or when the key
comes back with another payload (`ProviderIdempotencyConflict`).
"""

from __future__ import annotations

import asyncio
import calendar
import copy
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Final
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from bot.domain.identifiers import IdentifierKind
from bot.domain.models import (
    CreditBalance,
    CustomerRecord,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    LineKind,
    Payment,
    PaymentStatus,
    ProviderName,
    ProviderSnapshot,
    Subscription,
    SubscriptionStatus,
    UsagePoint,
    WriteKind,
    WriteResult,
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
from integrations.http import HttpAnswer, ProviderHttp, RetryPolicy
from integrations.writes import check_write, logged_write, no_refunds

DEFAULT_BASE_URL: Final = "https://api.withorb.com/v1"
#: Orb's maximum page size for the list endpoints we use (spec: `limit` ≤ 100).
PAGE_LIMIT: Final = 100
#: Invoices fetched per snapshot: 12+ months of history for `explain` and `invoice_jump`.
INVOICE_HISTORY_DAYS: Final = 400
#: Safety stop for pagination; 20 pages of 100 is far beyond any real customer's history.
MAX_PAGES: Final = 20
DASHBOARD_URL: Final = "https://app.withorb.com/customers/{id}"

_INVOICE_STATUSES: Final = ("draft", "issued", "paid", "synced", "void")
_DISCOUNT_ADJUSTMENTS: Final = frozenset(
    {"usage_discount", "amount_discount", "percentage_discount", "tiered_percentage_discount"}
)
_CADENCE_MONTHS: Final = {"monthly": 1, "quarterly": 3, "semi_annual": 6, "annual": 12}
#: Phrases Orb uses for a 409 on an idempotent request that is still running (the one 409 worth
#: retrying, notes/providers.md §6); a different-payload 409 is a bug and must not be retried.
_IN_FLIGHT_HINTS: Final = ("in progress", "in-progress", "in flight", "in-flight", "concurrent")


# --- HTTP hooks -------------------------------------------------------------------------------


def orb_retry_hook(response: httpx.Response) -> bool | None:
    """Orb's retry hints: `Transient-Error: true` marks a 5xx safe; 409 only while in flight."""
    status = response.status_code
    if status >= 500 and response.headers.get("transient-error", "").lower() == "true":
        return True
    if status == 409:
        return True if any(h in _error_text(response).lower() for h in _IN_FLIGHT_HINTS) else None
    return None


def orb_classify(response: httpx.Response) -> type[ProviderError] | None:
    """A 409 that is not "still in flight" (those are retried) means the idempotency key came
    back with a different payload."""
    if response.status_code == 409:
        return ProviderIdempotencyConflict
    return None


def orb_error_message(response: httpx.Response) -> str:
    """A short message from Orb's RFC 7807 error body (`detail`, else `title`).

    A 404 that is not Orb's "resource not found" (an unknown URL, or not Orb at all) says so, so
    that a base URL missing `/v1` reads as a configuration error, not as "no such customer".
    """
    if response.status_code == 404 and not _error_type(response).endswith(_RESOURCE_NOT_FOUND):
        return _NO_SUCH_ENDPOINT
    text = _error_text(response)
    return text[:300] if text else f"HTTP {response.status_code}"


_RESOURCE_NOT_FOUND: Final = "#404-resource-not-found"
_NO_SUCH_ENDPOINT: Final = "Orb has no such endpoint; check that ORB_API_BASE ends in /v1"


def _error_body(response: httpx.Response) -> Mapping[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, Mapping) else {}


def _error_type(response: httpx.Response) -> str:
    value = _error_body(response).get("type")
    return value if isinstance(value, str) else ""


def _error_text(response: httpx.Response) -> str:
    body = _error_body(response)
    for key in ("detail", "title"):
        value = body.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


# --- the client -------------------------------------------------------------------------------


#: Orb publishes no fixed production limit (it asks to be told before volume changes by an
#: order of magnitude; test mode is documented at about 10 requests/s for ingestion). 100/s,
#: Stripe's live figure, is the default; 429 feedback lowers it; ORB_RATE_LIMIT overrides.
DEFAULT_RATE_LIMIT = 100.0


class OrbBillingProvider:
    """`BillingProvider` for Orb: lookups by account ID or Orb customer ID, and snapshots."""

    name: ProviderName = "orb"

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
    ) -> None:
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        self.usage_days = usage_days
        self.invoice_days = invoice_days
        #: The newest invoices a snapshot reads instead of `invoice_days` of them (`scan_view`).
        self._invoice_count: int | None = None
        #: "Now" for history windows and past-due checks; the sandbox passes its world's clock.
        self._clock = clock or (lambda: datetime.now(UTC))
        self._http = ProviderHttp(
            "orb",
            base_url=base_url,
            headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
            policy=policy,
            transport=transport,
            retry_hook=orb_retry_hook,
            error_parser=orb_error_message,
            classify=orb_classify,
            # Requests/s; None: not paced (the composition root passes the documented
            # default, see `default_rate_limit` / `DEFAULT_RATE_LIMIT`).
            rate=rate_limit or None,
        )

    @property
    def http(self) -> ProviderHttp:
        """The underlying HTTP client (call counters for /metrics)."""
        return self._http

    def scan_view(self, *, invoices: int, payment_days: int) -> OrbBillingProvider:
        """This client reading only what an anomaly scan needs: the newest `invoices` invoices
        (one page) with their payment attempts (Orb's payments are on invoices); lookups keep
        the full history. The view shares this client's HTTP client (pacing, limits, counters)
        and caches."""
        view = copy.copy(self)
        view._invoice_count = max(1, min(invoices, PAGE_LIMIT))
        return view

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # -- lookup --

    async def find_customers(self, kind: IdentifierKind, value: str) -> list[CustomerRecord]:
        """The Orb customer for an account ID or Orb customer ID; [] for other kinds.

        Emails are not searchable in Orb (no email filter on `GET /customers`); the resolution
        service finds the account ID through Stripe and asks again with it.
        """
        if kind is IdentifierKind.ACCOUNT_ID:
            path = f"customers/external_customer_id/{_seg(value)}"
        elif kind is IdentifierKind.ORB_CUSTOMER:
            path = f"customers/{_seg(value)}"
        else:
            return []
        try:
            body = await self._http.request("GET", path)
        except ProviderNotFound as exc:
            if exc.message == _NO_SUCH_ENDPOINT:
                raise ProviderRequestError("orb", exc.message, status=404) from None
            return []
        return [self._customer(_obj(body, "customer"))]

    # -- writes (BillingWriter, after approval only) --

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
        """Orb cannot move money back: always `ProviderRequestError` (refund through Stripe)."""
        check_write(request_id=request_id, idempotency_key=idempotency_key, amount=amount)

        async def run() -> WriteResult:
            raise no_refunds("orb", "Orb")

        return await logged_write(
            "orb", "refund", request_id=request_id, idempotency_key=idempotency_key, run=run
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
        """Add `amount` to the customer's credits: a ledger `increment` in the customer's
        invoicing currency (a new credit block, never expiring), `metadata.request_id` set."""
        check_write(request_id=request_id, idempotency_key=idempotency_key, amount=amount)

        async def run() -> WriteResult:
            if not customer.currency:
                raise ProviderRequestError(
                    "orb",
                    "this Orb customer has no invoicing currency, so Orb would count the credit "
                    "in its own credit unit rather than money; set the customer's currency first",
                )
            if customer.currency != amount.currency:
                raise ProviderRequestError(
                    "orb",
                    f"this Orb customer is invoiced in {customer.currency.upper()}; a credit in "
                    f"{amount.currency.upper()} cannot be added",
                )
            body = {
                "entry_type": "increment",
                "amount": amount.amount,
                "currency": amount.currency.upper(),
                "description": description,
                "metadata": {"request_id": request_id},
            }
            answer = await self._http.send(
                "POST",
                f"customers/{_seg(customer.customer_id)}/credits/ledger_entry",
                json_body=body,
                idempotency_key=idempotency_key,
                write=True,
            )
            return _ledger_result(answer, request_id)

        return await logged_write(
            "orb", "credit", request_id=request_id, idempotency_key=idempotency_key, run=run
        )

    async def find_write(
        self,
        *,
        customer: CustomerRecord,
        kind: WriteKind,
        request_id: str,
        payment_id: str | None = None,
    ) -> WriteResult | None:
        """The ledger increment whose `metadata.request_id` is `request_id` (the customer's
        ledger in its invoicing currency, paged), else None. Orb makes no refunds: None."""
        if kind == "refund":
            return None
        params: list[tuple[str, str]] = [("entry_type", "increment")]
        if customer.currency:
            params.append(("currency", customer.currency.upper()))
        entries = await self._list_all(
            f"customers/{_seg(customer.customer_id)}/credits/ledger", params, what="ledger"
        )
        mine = [e for e in entries if _map(e.get("metadata")).get("request_id") == request_id]
        if not mine:
            return None
        found = HttpAnswer(status=200, body=mine[0], headers=httpx.Headers())
        return dataclasses.replace(_ledger_result(found, request_id), replayed=True)

    async def customer_pages(
        self, *, page_size: int = PAGE_LIMIT
    ) -> AsyncIterator[list[CustomerRecord]]:
        """Every customer, a page at a time (`GET /customers` with `cursor`)."""
        cursor: str | None = None
        limit = str(max(1, min(page_size, PAGE_LIMIT)))
        while True:
            query = [("limit", limit)]
            if cursor:
                query.append(("cursor", cursor))
            body = _obj(await self._http.request("GET", "customers", params=query), "customers")
            records = [self._customer(c) for c in _items(body.get("data"), "customers")]
            if records:
                yield records
            meta = body.get("pagination_metadata")
            cursor = meta.get("next_cursor") if isinstance(meta, Mapping) else None
            if not (isinstance(meta, Mapping) and meta.get("has_more") and cursor):
                return

    # -- snapshot --

    async def get_snapshot(self, customer: CustomerRecord) -> ProviderSnapshot:
        """Subscriptions, invoices with lines, payments, credits and daily costs, concurrently."""
        now = self._clock()
        cid = customer.customer_id
        fresh_customer = "balance" not in customer.raw
        try:
            async with asyncio.TaskGroup() as tg:
                cust_task = tg.create_task(self._get_customer(cid)) if fresh_customer else None
                subs_task = tg.create_task(
                    self._list_all("subscriptions", {"customer_id[]": cid}, what="subscriptions")
                )
                inv_task = tg.create_task(self._list_invoices(cid, now))
                cred_task = tg.create_task(self._list_credits(cid, customer.currency))
                cost_task = tg.create_task(self._get_costs(cid, now))
        except* ProviderError as group:
            # One failed part fails the snapshot (the others are cancelled); callers expect a
            # single `ProviderError`, not a group.
            raise group.exceptions[0] from None
        record = cust_task.result() if cust_task is not None else customer
        try:
            return self._snapshot(
                record,
                subscriptions=subs_task.result(),
                invoices=inv_task.result(),
                credit_blocks=cred_task.result(),
                costs=cost_task.result(),
                now=now,
            )
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            raise ProviderBadResponse(
                "orb", f"Orb sent data we could not read ({type(exc).__name__})"
            ) from exc

    async def _get_customer(self, customer_id: str) -> CustomerRecord:
        body = await self._http.request("GET", f"customers/{_seg(customer_id)}")
        return self._customer(_obj(body, "customer"))

    async def _list_invoices(self, customer_id: str, now: datetime) -> list[Mapping[str, Any]]:
        if self._invoice_count is not None:  # the newest invoices: one page, newest first
            query: list[tuple[str, str]] = [
                ("customer_id", customer_id),
                *(("status[]", s) for s in _INVOICE_STATUSES),
                ("limit", str(self._invoice_count)),
            ]
            body = _obj(await self._http.request("GET", "invoices", params=query), "invoices")
            return _items(body.get("data"), "invoices")
        since = (now - timedelta(days=self.invoice_days)).replace(microsecond=0)
        params: list[tuple[str, str]] = [
            ("customer_id", customer_id),
            ("invoice_date[gte]", since.isoformat()),
            *(("status[]", s) for s in _INVOICE_STATUSES),
        ]
        return await self._list_all("invoices", params, what="invoices")

    async def _list_credits(
        self, customer_id: str, currency: str | None
    ) -> list[Mapping[str, Any]]:
        # Orb reports block balances in the ledger unit asked for (default: the custom unit
        # `credits`); ask for the customer's currency so balances are money we can show and add.
        params = {"currency": currency.upper()} if currency else {}
        return await self._list_all(
            f"customers/{_seg(customer_id)}/credits", params, what="credit blocks"
        )

    async def _get_costs(self, customer_id: str, now: datetime) -> list[Mapping[str, Any]]:
        tomorrow = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
        start = tomorrow - timedelta(days=self.usage_days)
        body = await self._http.request(
            "GET",
            f"customers/{_seg(customer_id)}/costs",
            params={
                "timeframe_start": start.isoformat(),
                "timeframe_end": tomorrow.isoformat(),
                "view_mode": "periodic",
            },
        )
        return _items(_obj(body, "costs").get("data"), "costs")

    async def _list_all(
        self, path: str, params: Mapping[str, str] | Sequence[tuple[str, str]], *, what: str
    ) -> list[Mapping[str, Any]]:
        """Every item of a cursor-paged list (`limit=100`, then `cursor=<next_cursor>`)."""
        base = list(params.items()) if isinstance(params, Mapping) else list(params)
        out: list[Mapping[str, Any]] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            query = [*base, ("limit", str(PAGE_LIMIT))]
            if cursor:
                query.append(("cursor", cursor))
            body = _obj(await self._http.request("GET", path, params=query), what)
            out.extend(_items(body.get("data"), what))
            meta = body.get("pagination_metadata")
            cursor = meta.get("next_cursor") if isinstance(meta, Mapping) else None
            if not (isinstance(meta, Mapping) and meta.get("has_more") and cursor):
                break
        return out

    # -- mapping --

    def _customer(self, raw: Mapping[str, Any]) -> CustomerRecord:
        currency = _currency(raw.get("currency"))
        balance = raw.get("balance")
        if currency is None and balance not in (None, "") and Decimal(str(balance)) != 0:
            # Orb sets a customer's currency with its first price; a balance without one is
            # malformed, and guessing USD would show a wrong amount.
            raise _no_currency("a customer balance")
        return CustomerRecord(
            provider="orb",
            customer_id=str(raw["id"]),
            account_id=raw.get("external_customer_id") or None,
            name=raw.get("name") or None,
            email=raw.get("email") or None,
            currency=currency,
            # Orb's positive balance is credit for the customer; ours is Stripe's (positive = owes).
            balance=-Money.of(balance, currency)
            if currency and balance not in (None, "")
            else None,
            created_at=_time(raw.get("created_at")),
            dashboard_url=DASHBOARD_URL.format(id=quote(str(raw["id"]), safe="")),
            raw=raw,
        )

    def _snapshot(
        self,
        customer: CustomerRecord,
        *,
        subscriptions: list[Mapping[str, Any]],
        invoices: list[Mapping[str, Any]],
        credit_blocks: list[Mapping[str, Any]],
        costs: list[Mapping[str, Any]],
        now: datetime,
    ) -> ProviderSnapshot:
        currency = customer.currency or _first_currency(invoices)
        if currency is None and (credit_blocks or costs):
            raise _no_currency("credits or costs for a customer")
        subs = tuple(
            sorted(
                (_subscription(s, now) for s in subscriptions),
                key=lambda s: (s.status is not SubscriptionStatus.ACTIVE, _neg_time(s.started_at)),
            )
        )
        plan_by_sub = {s.id: s.plan_name for s in subs}
        # A customer set up for Stripe Invoicing has its invoices synced to Stripe, which
        # collects them (docs.withorb.com/integrations-and-exports/stripe).
        invoicing = customer.raw.get("payment_provider") == "stripe_invoice"
        mapped = [
            _invoice(i, customer.customer_id, plan_by_sub, now, stripe_invoicing=invoicing)
            for i in invoices
        ]
        mapped.sort(key=lambda inv: _neg_time(inv.created_at))
        drafts = [inv for inv in mapped if inv.status is InvoiceStatus.DRAFT]
        final = tuple(inv for inv in mapped if inv.status is not InvoiceStatus.DRAFT)
        payments = sorted(
            (p for raw in invoices for p in _payments(raw, customer.customer_id)),
            key=lambda p: p.created_at,
            reverse=True,
        )
        balances = [_credit_block(b, currency) for b in credit_blocks if currency]
        orb_balance = -customer.balance if customer.balance is not None else None
        if orb_balance is not None and not orb_balance.is_zero():
            balances.append(
                CreditBalance(
                    provider="orb",
                    kind="customer_balance",
                    remaining=orb_balance,
                    name="Customer balance",
                )
            )
        if any(inv.status is InvoiceStatus.PAST_DUE for inv in final):
            customer = dataclasses.replace(customer, delinquent=True)
        return ProviderSnapshot(
            provider="orb",
            customer=customer,
            subscriptions=subs,
            invoices=final,
            upcoming_invoice=drafts[0] if drafts else None,
            payments=tuple(payments),
            balances=tuple(balances),
            usage=_usage(costs, currency) if currency else (),
        )


# --- pure mapping helpers ---------------------------------------------------------------------


def _subscription(raw: Mapping[str, Any], now: datetime) -> Subscription:
    status = {
        "active": SubscriptionStatus.ACTIVE,
        "ended": SubscriptionStatus.ENDED,
        "upcoming": SubscriptionStatus.UPCOMING,
    }.get(str(raw.get("status")), SubscriptionStatus.OTHER)
    trial_end = _time(_get(raw, "trial_info", "end_date"))
    if status is SubscriptionStatus.ACTIVE and trial_end is not None and trial_end > now:
        status = SubscriptionStatus.TRIALING
    plan = _map(raw.get("plan"))
    ends_at = _time(raw.get("end_date"))
    return Subscription(
        provider="orb",
        id=str(raw["id"]),
        status=status,
        plan_name=plan.get("name") or raw.get("name") or None,
        plan_id=plan.get("id") or None,
        current_period_start=_time(raw.get("current_billing_period_start_date")),
        current_period_end=_time(raw.get("current_billing_period_end_date")),
        started_at=_time(raw.get("start_date")),
        ends_at=ends_at,
        # Orb schedules a cancellation by setting `end_date` on the still-active subscription.
        cancel_at_period_end=status in (SubscriptionStatus.ACTIVE, SubscriptionStatus.TRIALING)
        and ends_at is not None,
        recurring_amount=_recurring_amount(raw, now, _currency(plan.get("invoicing_currency"))),
        raw=raw,
    )


def _recurring_amount(raw: Mapping[str, Any], now: datetime, currency: str | None) -> Money | None:
    """Monthly fixed fees of the price intervals in force now (unit-priced fees only)."""
    total: Decimal | None = None
    for interval in raw.get("price_intervals") or ():
        price = _map(interval.get("price"))
        start, end = _time(interval.get("start_date")), _time(interval.get("end_date"))
        if (start is not None and start > now) or (end is not None and end <= now):
            continue
        if price.get("price_type") != "fixed_price" or price.get("cadence") != "monthly":
            continue
        unit = _get(price, "unit_config", "unit_amount")
        if unit is None:
            continue
        qty = _dec(price.get("fixed_price_quantity"))
        if qty is None or qty == qty.to_integral_value():
            # Orb sends `1.0`; an integral quantity keeps the fee's own decimals (799.00).
            qty = Decimal(int(qty)) if qty is not None else Decimal(1)
        amount = Decimal(unit) * qty
        total = amount if total is None else total + amount
        currency = currency or _currency(price.get("currency"))
    if total is None:
        return None
    if currency is None:
        raise _no_currency("a subscription price")
    return Money(total, currency)


def _invoice(
    raw: Mapping[str, Any],
    customer_id: str,
    plan_by_sub: Mapping[str, str | None],
    now: datetime,
    *,
    stripe_invoicing: bool = False,
) -> Invoice:
    cur = _invoice_currency(raw)
    lines: list[InvoiceLine] = []
    discount = tax = credits = Decimal(0)
    for item in raw.get("line_items") or ():
        built = _lines(item, cur, str(raw.get("invoice_source") or ""))
        lines.extend(built)
        main = built[0]
        discount += main.discount_amount.amount if main.discount_amount else 0
        tax += main.tax_amount.amount if main.tax_amount else 0
        credits += main.credits_applied.amount if main.credits_applied else 0
    total = Money.of(raw["total"], cur)
    amount_due = _money(raw.get("amount_due"), cur)
    subtotal = sum((ln.amount.amount for ln in lines), Decimal(0))
    payments = [a for a in raw.get("payment_attempts") or () if a.get("succeeded")]
    paid = sum((Decimal(a["amount"]) for a in payments), Decimal(0))
    status = _invoice_status(raw, now)
    if not payments and status is InvoiceStatus.PAID and amount_due is not None:
        paid = amount_due.amount
    sub_id = _get(raw, "subscription", "id")
    starts = [ln.period_start for ln in lines if ln.period_start]
    ends = [ln.period_end for ln in lines if ln.period_end]
    num_attempts = _get(raw, "auto_collection", "num_attempts")
    balance_applied = total - amount_due if amount_due is not None else None
    return Invoice(
        provider="orb",
        id=str(raw["id"]),
        customer_id=str(_get(raw, "customer", "id") or customer_id),
        status=status,
        currency=cur,
        total=total,
        subtotal=Money(subtotal, cur),
        tax=Money(tax, cur),
        discount=Money(discount, cur),
        credits_applied=Money(credits, cur),
        balance_applied=balance_applied
        if balance_applied is not None and not balance_applied.is_zero()
        else None,
        amount_due=amount_due,
        amount_paid=Money(paid, cur),
        number=raw.get("invoice_number") or None,
        created_at=_time(raw.get("invoice_date")) or _time(raw.get("created_at")),
        period_start=min(starts) if starts else None,
        period_end=max(ends) if ends else None,
        due_at=_time(raw.get("due_date")),
        paid_at=_time(raw.get("paid_at")),
        billing_reason=raw.get("invoice_source") or None,
        subscription_id=sub_id,
        plan_name=plan_by_sub.get(sub_id) if sub_id else None,
        url=raw.get("hosted_invoice_url") or None,
        memo=raw.get("memo") or None,
        attempt_count=int(num_attempts)
        if isinstance(num_attempts, int)
        else len(raw.get("payment_attempts") or ()),
        lines=tuple(lines),
        links=_links(raw),
        collected_by="stripe" if stripe_invoicing or raw.get("status") == "synced" else None,
        raw=raw,
    )


def _links(raw: Mapping[str, Any]) -> tuple[str, ...]:
    """IDs of the invoice elsewhere that the Orb invoice names (its metadata values)."""
    metadata = _map(raw.get("metadata"))
    return tuple(dict.fromkeys(v for v in metadata.values() if isinstance(v, str) and v))


def _invoice_status(raw: Mapping[str, Any], now: datetime) -> InvoiceStatus:
    status = raw.get("status")
    if status == "draft":
        return InvoiceStatus.DRAFT
    if status == "void":
        return InvoiceStatus.VOID
    if status == "paid" or raw.get("paid_at"):
        return InvoiceStatus.PAID
    if status == "synced":
        # Synced to an external invoicing provider (Stripe): a one-way sync, so Orb does not
        # know whether it was paid; the copy there tells (bot.domain.mirrors). Never past due
        # on Orb's say-so.
        return InvoiceStatus.OPEN
    # `issued` (or `synced` to an external invoicing provider) and not paid yet.
    due = _time(raw.get("due_date"))
    if raw.get("payment_failed_at") or (due is not None and due < now):
        return InvoiceStatus.PAST_DUE
    return InvoiceStatus.OPEN


def _lines(item: Mapping[str, Any], cur: str, source: str) -> list[InvoiceLine]:
    """One Orb line item → its `InvoiceLine`, plus a `MINIMUM` line for a minimum true-up."""
    price = _map(item.get("price"))
    start, end = _time(item.get("start_date")), _time(item.get("end_date"))
    kind, proration = _line_kind(price, source, start, end)
    discount = minimum = Decimal(0)
    for adj in item.get("adjustments") or ():
        amount = abs(Decimal(adj.get("amount") or 0))
        kind_of = adj.get("adjustment_type")
        if kind_of in _DISCOUNT_ADJUSTMENTS or kind_of == "maximum":
            discount += amount
        elif kind_of == "minimum":
            minimum += amount
    tax = sum((Decimal(t["amount"]) for t in item.get("tax_amounts") or ()), Decimal(0))
    credits = abs(Decimal(item.get("credits_applied") or 0)) + abs(
        Decimal(item.get("partially_invoiced_amount") or 0)
    )
    quantity = _dec(item.get("quantity"))
    name = str(item.get("name") or price.get("name") or "")
    line_id = str(item["id"])
    main = InvoiceLine(
        id=line_id,
        description=name,
        amount=Money.of(item["subtotal"], cur),
        kind=kind,
        quantity=quantity,
        unit_price=_unit_price(price),
        metric=metric_name(price, fallback=name) if kind is LineKind.USAGE else None,
        price_id=price.get("id") or None,
        product_id=_get(price, "item", "id"),
        period_start=start,
        period_end=end,
        proration=proration,
        discount_amount=Money(discount, cur) if discount else None,
        tax_amount=Money(tax, cur) if tax else None,
        credits_applied=Money(credits, cur) if credits else None,
        raw=item,
    )
    if not minimum:
        return [main]
    true_up = InvoiceLine(
        id=f"{line_id}:minimum",
        description=f"Minimum commitment: {name}",
        amount=Money(minimum, cur),
        kind=LineKind.MINIMUM,
        price_id=main.price_id,
        product_id=main.product_id,
        period_start=start,
        period_end=end,
        raw=item,
    )
    return [main, true_up]


def _line_kind(
    price: Mapping[str, Any], source: str, start: datetime | None, end: datetime | None
) -> tuple[LineKind, bool]:
    price_type = price.get("price_type")
    if price_type == "fixed_price" or price.get("model_type") == "fixed":
        if price.get("cadence") == "one_time" or source == "one_off":
            return LineKind.ONE_OFF, False
        if _partial_period(price.get("cadence"), start, end):
            return LineKind.PRORATION, True
        return LineKind.SUBSCRIPTION, False
    if price_type == "usage_price" or price.get("billable_metric"):
        return LineKind.USAGE, False
    if source == "one_off":
        return LineKind.ONE_OFF, False
    return LineKind.OTHER, False


def _partial_period(cadence: Any, start: datetime | None, end: datetime | None) -> bool:
    """True when a fixed fee covers less than its cadence's full period (a proration)."""
    months = _CADENCE_MONTHS.get(str(cadence))
    if months is None or start is None or end is None:
        return False
    return end < _add_months(start, months) - timedelta(days=1)


def _add_months(when: datetime, months: int) -> datetime:
    month = when.month - 1 + months
    year, month = when.year + month // 12, month % 12 + 1
    day = min(when.day, calendar.monthrange(year, month)[1])
    return when.replace(year=year, month=month, day=day)


def _unit_price(price: Mapping[str, Any]) -> Decimal | None:
    """The per-unit price where the model has one (unit pricing); None for tiered and others."""
    unit = _get(price, "unit_config", "unit_amount")
    return Decimal(unit) if unit is not None else None


def metric_name(price: Mapping[str, Any], *, fallback: str | None = None) -> str | None:
    """The usage metric a price bills: billable metric name, else item name, else price name."""
    for value in (
        _get(price, "billable_metric", "name"),
        _get(price, "item", "name"),
        price.get("name"),
    ):
        if isinstance(value, str) and value:
            return value
    return fallback


def _payments(raw: Mapping[str, Any], customer_id: str) -> list[Payment]:
    cur = _invoice_currency(raw)
    invoice_id = str(raw["id"])
    out: list[Payment] = []
    for attempt in raw.get("payment_attempts") or ():
        provider_id = attempt.get("payment_provider_id")
        succeeded = bool(attempt.get("succeeded"))
        out.append(
            Payment(
                provider="orb",
                id=str(attempt["id"]),
                customer_id=customer_id,
                amount=Money.of(attempt["amount"], cur),
                status=PaymentStatus.SUCCEEDED if succeeded else PaymentStatus.FAILED,
                created_at=_time(attempt.get("created_at")) or _epoch(),
                invoice_id=invoice_id,
                payment_intent_id=provider_id
                if isinstance(provider_id, str) and provider_id.startswith("pi_")
                else None,
                failure_message=None if succeeded else "payment attempt failed",
                description=f"Invoice {raw.get('invoice_number') or invoice_id}",
                raw=attempt,
            )
        )
    failed_at = _time(raw.get("payment_failed_at"))
    if failed_at is not None and not any(p.status is PaymentStatus.FAILED for p in out):
        # Orb recorded a failure without an attempt object; keep it visible as a failed payment.
        out.append(
            Payment(
                provider="orb",
                id=f"{invoice_id}:payment_failed",
                customer_id=customer_id,
                amount=_money(raw.get("amount_due"), cur) or Money.of(raw["total"], cur),
                status=PaymentStatus.FAILED,
                created_at=failed_at,
                invoice_id=invoice_id,
                failure_message="payment failed",
                description=f"Invoice {raw.get('invoice_number') or invoice_id}",
                raw={"payment_failed_at": raw.get("payment_failed_at")},
            )
        )
    return out


def _ledger_result(answer: HttpAnswer, request_id: str) -> WriteResult:
    """A ledger entry as a `WriteResult`. An entry we cannot read may still have been made, so
    that is an unknown outcome, not a failure."""
    raw = answer.body
    try:
        if not isinstance(raw, Mapping) or not raw.get("id"):
            raise KeyError("id")
        currency = _currency(raw.get("currency"))
        if currency is None:
            raise KeyError("currency")
        recorded = _map(raw.get("metadata")).get("request_id")
        amount = Money(_dec(raw["amount"]) or Decimal(0), currency)
        if amount.quantize().amount == amount.amount:
            amount = amount.quantize()  # 25.5 on the wire is $25.50
        return WriteResult(
            provider="orb",
            kind="credit",
            object_id=str(raw["id"]),
            amount=amount,
            status=str(raw.get("entry_status") or "pending"),
            request_id=str(recorded or request_id),
            replayed=answer.headers.get("idempotent-replayed", "").lower() == "true",
            raw=raw,
        )
    except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
        raise ProviderOutcomeUnknown(
            "orb", "Orb answered the credit with a ledger entry we could not read"
        ) from exc


def _credit_block(raw: Mapping[str, Any], currency: str) -> CreditBalance:
    """A credit block; its `balance` is in the ledger's unit, asked for in the customer's currency
    when known, otherwise Orb's default custom unit `credits`."""
    balance = _dec(raw.get("balance")) or Decimal(0)
    initial = _dec(raw.get("maximum_initial_balance"))
    source = raw.get("credit_block_source")
    return CreditBalance(
        provider="orb",
        kind="credits",
        remaining=Money(balance, currency),
        granted=Money(initial, currency) if initial is not None else None,
        name=f"Credit block ({source})" if source else "Credit block",
        expires_at=_time(raw.get("expiry_date")),
        raw=raw,
    )


def _usage(costs: Iterable[Mapping[str, Any]], currency: str) -> tuple[UsagePoint, ...]:
    """Daily periodic costs → one total point per day plus one point per usage price's metric."""
    per: dict[tuple[date, str | None], tuple[Decimal | None, Decimal]] = {}
    for bucket in costs:
        day = _bucket_day(bucket)
        if day is None:
            continue
        qty_total, cost_total = per.get((day, None), (None, Decimal(0)))
        per[(day, None)] = (qty_total, cost_total + Decimal(bucket.get("total") or 0))
        for pc in bucket.get("per_price_costs") or ():
            price = _map(pc.get("price"))
            # Fixed fees land on billing days only; they are not usage and would read as spikes.
            if price.get("price_type") == "fixed_price":
                continue
            metric = metric_name(price, fallback=str(pc.get("price_id") or "usage"))
            qty, cost = per.get((day, metric), (None, Decimal(0)))
            more = _dec(pc.get("quantity"))
            if more is not None:
                qty = more if qty is None else qty + more
            per[(day, metric)] = (qty, cost + Decimal(pc.get("total") or 0))
    return tuple(
        UsagePoint(provider="orb", day=day, metric=metric, quantity=qty, cost=Money(cost, currency))
        for (day, metric), (qty, cost) in sorted(
            per.items(), key=lambda kv: (kv[0][0], kv[0][1] is not None, kv[0][1] or "")
        )
    )


def _bucket_day(bucket: Mapping[str, Any]) -> date | None:
    """The local day of a one-day window: the UTC date of its midpoint (right for any offset up
    to ±12 h, so a Tokyo day starting 15:00Z the evening before still lands on its own date)."""
    start, end = _time(bucket.get("timeframe_start")), _time(bucket.get("timeframe_end"))
    if start is None:
        return None
    if end is None or end <= start:
        return start.date()
    return (start + (end - start) / 2).date()


# --- small parsers ----------------------------------------------------------------------------


def _seg(value: str) -> str:
    """A path segment, percent-encoded (IDs are opaque strings)."""
    return quote(value, safe="")


def _obj(body: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise ProviderBadResponse("orb", f"Orb sent an unexpected {what} response")
    return body


def _items(data: Any, what: str) -> list[Mapping[str, Any]]:
    if not isinstance(data, list) or not all(isinstance(x, Mapping) for x in data):
        raise ProviderBadResponse("orb", f"Orb sent an unexpected {what} list")
    return data


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _get(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _time(value: Any) -> datetime | None:
    """ISO 8601 (with offset, `Z`, or a bare date) → aware UTC; naive values are taken as UTC."""
    if not isinstance(value, str) or not value:
        return None
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _epoch() -> datetime:
    return datetime.fromtimestamp(0, UTC)


def _neg_time(value: datetime | None) -> float:
    return -(value.timestamp() if value is not None else 0.0)


def _dec(value: Any) -> Decimal | None:
    """A JSON number or decimal string as `Decimal` (never through float)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int | str):
        return Decimal(value)
    raise TypeError(f"not a number: {type(value).__name__}")


def _money(value: Any, currency: str) -> Money | None:
    return Money.of(value, currency) if value not in (None, "") else None


def _currency(value: Any) -> str | None:
    return value.lower() if isinstance(value, str) and value else None


def _no_currency(what: str) -> ProviderBadResponse:
    return ProviderBadResponse("orb", f"Orb sent {what} with no currency")


def _invoice_currency(raw: Mapping[str, Any]) -> str:
    """An invoice's currency (always sent by Orb); missing means malformed, never USD."""
    currency = _currency(raw.get("currency"))
    if currency is None:
        raise _no_currency("an invoice")
    return currency


def _first_currency(invoices: Iterable[Mapping[str, Any]]) -> str | None:
    return next((c for i in invoices if (c := _currency(i.get("currency")))), None)
