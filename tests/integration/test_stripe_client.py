"""The Stripe client over real HTTP against the Stripe sandbox server (FakeProviderServer on
127.0.0.1): lookups by each identifier kind, snapshot contents, pagination, and the shared retry
policy under scripted faults.

The builders below write Stripe objects by hand in Stripe's wire format (API 2026-10-28.endive,
basil-era field locations). `build_fixture_world()` is also what the contract test drives the
official SDK against, so these shapes are checked against the SDK's classes there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio

from bot.domain.identifiers import IdentifierKind
from bot.domain.models import (
    InvoiceStatus,
    LineKind,
    PaymentStatus,
    ProviderSnapshot,
    SubscriptionStatus,
)
from bot.domain.money import Money
from bot.errors import (
    ProviderAuthError,
    ProviderBadResponse,
    ProviderRateLimited,
    ProviderRequestError,
    ProviderUnavailable,
)
from integrations.http import RetryPolicy
from integrations.sandbox.stripe_server import StripeSandboxServer
from integrations.stripe import StripeBillingProvider
from tests.support.fakeserver import FakeProviderServer, Fault

KEY = "sk_test_51FixtureKey0000000000abcd"
NOW = datetime(2026, 11, 15, tzinfo=UTC)
DAY = 86400
FAST = RetryPolicy(
    connect_timeout=0.5,
    read_timeout=0.5,
    max_attempts=4,
    backoff_base=0.01,
    backoff_max=0.05,
    max_retry_after=0.05,
    deadline=2.0,
)


def ts(when: datetime) -> int:
    """Stripe's timestamps: Unix epoch seconds."""
    return int(when.timestamp())


def days_ago(n: float) -> int:
    """Epoch seconds `n` days before NOW."""
    return ts(NOW - timedelta(days=n))


# --- Stripe wire-format builders ----------------------------------------------------------------


def meter(mid: str, display: str, event: str) -> dict[str, Any]:
    """A `billing.meter`."""
    return {
        "id": mid, "object": "billing.meter", "display_name": display, "event_name": event,
        "created": days_ago(700), "updated": days_ago(700), "status": "active",
        "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
        "default_aggregation": {"formula": "sum"}, "event_time_window": None, "livemode": False,
        "status_transitions": {"deactivated_at": None},
        "value_settings": {"event_payload_key": "value"},
    }  # fmt: skip


def product(pid: str, name: str) -> dict[str, Any]:
    """A `product`."""
    return {"id": pid, "object": "product", "name": name, "active": True, "created": days_ago(800),
            "updated": days_ago(800), "images": [], "livemode": False, "marketing_features": [],
            "metadata": {}, "type": "service"}  # fmt: skip


def price(
    pid: str, product_id: str, unit: str, *, metered: str | None = None,
    nickname: str | None = None, recurring: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """A `price`; `metered` is the meter ID of a metered price; `unit` is minor units (decimal)."""
    whole = Decimal(unit) == Decimal(unit).to_integral_value()
    return {
        "id": pid, "object": "price", "active": True, "billing_scheme": "per_unit",
        "created": days_ago(800), "currency": "usd", "livemode": False, "lookup_key": None,
        "metadata": {}, "nickname": nickname, "product": product_id,
        "recurring": {
            "interval": "month", "interval_count": 1, "meter": metered,
            "usage_type": "metered" if metered else "licensed", "trial_period_days": None,
        } if recurring else None,
        "tax_behavior": "exclusive", "tiers_mode": None, "transform_quantity": None,
        "type": "recurring" if recurring else "one_time",
        "unit_amount": int(Decimal(unit)) if whole else None, "unit_amount_decimal": unit,
    }  # fmt: skip


def line(
    lid: str, amount: int, description: str, *, price_id: str, product_id: str,
    quantity: int | Decimal = 1, unit: str | None = None, item: str | None = None,
    sub: str | None = None, invoice_item: str | None = None, proration: bool = False,
    period: tuple[int, int] = (0, 0), discount: int = 0, tax: int = 0, credit: int = 0,
    currency: str = "usd",
) -> dict[str, Any]:  # fmt: skip
    """An invoice `line_item`: from a subscription item (`item`) or an invoice item."""
    if item is not None:
        parent: dict[str, Any] = {
            "type": "subscription_item_details",
            "subscription_item_details": {
                "invoice_item": invoice_item,
                "proration": proration,
                "proration_details": {"credited_items": None},
                "subscription": sub,
                "subscription_item": item,
            },
        }
    else:
        parent = {
            "type": "invoice_item_details",
            "invoice_item_details": {
                "invoice_item": invoice_item or f"ii_{lid}",
                "proration": proration,
                "proration_details": {"credited_items": None},
                "subscription": None,
            },
        }
    return {
        "id": lid, "object": "line_item", "amount": amount, "currency": currency,
        "description": description,
        "discount_amounts": [{"amount": discount, "discount": "di_20off"}] if discount else [],
        "discountable": not proration, "discounts": ["di_20off"] if discount else [],
        "livemode": False, "metadata": {}, "parent": parent,
        "period": {"start": period[0], "end": period[1]},
        "pretax_credit_amounts": (
            [{"amount": discount, "type": "discount", "discount": "di_20off",
              "credit_balance_transaction": None}] if discount else []
        ) + (
            [{"amount": credit, "type": "credit_balance_transaction", "discount": None,
              "credit_balance_transaction": "cbtxn_grant"}] if credit else []
        ),
        "pricing": {"type": "price_details",
                    "price_details": {"price": price_id, "product": product_id},
                    "unit_amount_decimal": unit},
        "quantity": int(quantity) if quantity == int(quantity) else None,
        "quantity_decimal": str(quantity),
        "subscription": sub, "subtotal": amount,
        "taxes": [{"amount": tax, "tax_behavior": "exclusive",
                   "taxability_reason": "standard_rated", "taxable_amount": amount - discount,
                   "type": "tax_rate_details", "tax_rate_details": {"tax_rate": "txr_8pct"}}]
        if tax else [],
    }  # fmt: skip


def invoice(
    iid: str, cid: str, created: int, lines: list[dict[str, Any]], *, status: str = "paid",
    discount: int = 0, tax: int = 0, credit: int = 0, starting_balance: int = 0,
    ending_balance: int | None = 0, attempt_count: int = 0, next_attempt: int | None = None,
    sub: str | None = None, reason: str = "subscription_cycle", currency: str = "usd",
    number: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """An `invoice` with its full lines; totals computed the way Stripe computes them."""
    subtotal = sum(int(x["amount"]) for x in lines)
    total = subtotal - discount - credit + tax
    applied = (
        ending_balance if ending_balance is not None else starting_balance
    ) - starting_balance
    amount_due = max(0, total - applied)
    paid = amount_due if status == "paid" else 0
    pretax = (
        [{"amount": discount, "type": "discount", "discount": "di_20off",
          "credit_balance_transaction": None}] if discount else []
    ) + (
        [{"amount": credit, "type": "credit_balance_transaction", "discount": None,
          "credit_balance_transaction": "cbtxn_grant"}] if credit else []
    )  # fmt: skip
    return {
        "id": iid, "object": "invoice", "customer": cid, "currency": currency,
        "created": created, "effective_at": created, "status": status, "number": number,
        "billing_reason": reason, "collection_method": "charge_automatically",
        "period_start": created - 30 * DAY, "period_end": created,
        "subtotal": subtotal, "subtotal_excluding_tax": subtotal, "total": total,
        "total_excluding_tax": total - tax, "amount_due": amount_due, "amount_paid": paid,
        "amount_remaining": amount_due - paid, "amount_overpaid": 0, "amount_shipping": 0,
        "starting_balance": starting_balance, "ending_balance": ending_balance,
        "attempt_count": attempt_count, "attempted": attempt_count > 0,
        "next_payment_attempt": next_attempt, "due_date": None,
        "total_discount_amounts": [{"amount": discount, "discount": "di_20off"}]
        if discount else [],
        "total_pretax_credit_amounts": pretax,
        "total_taxes": [{"amount": tax, "tax_behavior": "exclusive",
                         "taxability_reason": "standard_rated",
                         "taxable_amount": subtotal - discount, "type": "tax_rate_details",
                         "tax_rate_details": {"tax_rate": "txr_8pct"}}] if tax else [],
        "hosted_invoice_url": f"https://invoice.stripe.com/i/{iid}",
        "parent": {"type": "subscription_details", "quote_details": None,
                   "subscription_details": {"metadata": {}, "subscription": sub}}
        if sub else None,
        "status_transitions": {"finalized_at": created, "marked_uncollectible_at": None,
                               "paid_at": created + 3600 if status == "paid" else None,
                               "voided_at": None},
        "lines": {"object": "list", "data": lines, "has_more": False,
                  "url": f"/v1/invoices/{iid}/lines"},
    }  # fmt: skip


def invoice_payment(pid: str, iid: str, created: int, amount: int, *, charge: str | None = None,
                    intent: str | None = None, status: str = "paid") -> dict[str, Any]:  # fmt: skip
    """An `invoice_payment` linking an invoice to a charge or a payment intent."""
    ref = (
        {"type": "charge", "charge": charge}
        if charge
        else {"type": "payment_intent", "payment_intent": intent}
    )
    return {
        "id": pid, "object": "invoice_payment", "amount_paid": amount if status == "paid" else None,
        "amount_requested": amount, "created": created, "currency": "usd", "invoice": iid,
        "is_default": True, "livemode": False, "payment": ref, "status": status,
        "status_transitions": {"canceled_at": None,
                               "paid_at": created if status == "paid" else None},
    }  # fmt: skip


def charge(
    chid: str, cid: str, created: int, amount: int, *, status: str = "succeeded",
    intent: str | None = None, refunded: int = 0, disputed: bool = False,
    failure: tuple[str, str] | None = None, currency: str = "usd",
) -> dict[str, Any]:  # fmt: skip
    """A `charge` (succeeded, or failed with `failure` = (code, message))."""
    ok = status == "succeeded"
    return {
        "id": chid, "object": "charge", "amount": amount, "amount_captured": amount if ok else 0,
        "amount_refunded": refunded, "captured": ok, "created": created, "currency": currency,
        "customer": cid, "description": "Subscription payment", "disputed": disputed,
        "failure_code": failure[0] if failure else None,
        "failure_message": failure[1] if failure else None, "livemode": False, "metadata": {},
        "outcome": {"advice_code": None, "network_advice_code": None,
                    "network_decline_code": None,
                    "network_status": "approved_by_network" if ok else "declined_by_network",
                    "reason": None if ok else "generic_decline", "risk_level": "normal",
                    "risk_score": 12, "rule": None,
                    "seller_message": "Payment complete." if ok else "The bank declined.",
                    "type": "authorized" if ok else "issuer_declined"},
        "paid": ok, "payment_intent": intent, "refunded": refunded == amount, "status": status,
        "billing_details": {"address": None, "email": None, "name": "Jane Doe", "phone": None,
                            "tax_id": None},
    }  # fmt: skip


@dataclass
class FixtureStripeData:
    """One account's Stripe objects, shaped like the sandbox world's `StripeData`."""

    customer: dict[str, Any]
    subscriptions: list[dict[str, Any]] = field(default_factory=list)
    invoices: list[dict[str, Any]] = field(default_factory=list)
    invoice_payments: list[dict[str, Any]] = field(default_factory=list)
    charges: list[dict[str, Any]] = field(default_factory=list)
    payment_intents: list[dict[str, Any]] = field(default_factory=list)
    refunds: list[dict[str, Any]] = field(default_factory=list)
    disputes: list[dict[str, Any]] = field(default_factory=list)
    balance_transactions: list[dict[str, Any]] = field(default_factory=list)
    meter_event_summaries: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    meters: list[dict[str, Any]] = field(default_factory=list)
    prices: list[dict[str, Any]] = field(default_factory=list)  # catalogue extras
    products: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class FixtureAccount:
    """An account of the fixture world."""

    account_id: str


@dataclass
class FixtureWorld:
    """The sandbox world's interface, over hand-written accounts."""

    now: datetime
    data: dict[str, FixtureStripeData]

    @property
    def accounts(self) -> list[FixtureAccount]:
        """Every account."""
        return [FixtureAccount(a) for a in self.data]

    def stripe(self, account_id: str) -> FixtureStripeData | None:
        """The account's Stripe objects."""
        return self.data.get(account_id)


def customer(cid: str, email: str, account_id: str | None, *, name: str = "Acme",
             balance: int = 0, currency: str = "usd") -> dict[str, Any]:  # fmt: skip
    """A `customer`."""
    return {
        "id": cid, "object": "customer", "email": email, "name": name, "balance": balance,
        "currency": currency, "created": days_ago(900), "delinquent": False,
        "livemode": False, "metadata": {"account_id": account_id} if account_id else {},
    }  # fmt: skip


# The main account: Jane at Acme, on Pro with metered API requests.
JANE = "cus_Jane00000001"
PERIOD_START = ts(datetime(2026, 11, 1, tzinfo=UTC))
PERIOD_END = ts(datetime(2026, 12, 1, tzinfo=UTC))
OCT_1 = ts(datetime(2026, 10, 1, tzinfo=UTC))
SEP_1 = ts(datetime(2026, 9, 1, tzinfo=UTC))
AUG_1 = ts(datetime(2026, 8, 1, tzinfo=UTC))
API_UNIT = "0.5"  # half a cent per request


def usage_value(days_back: int) -> Decimal:
    """The API requests on the day `days_back` days before NOW (one fractional day)."""
    return Decimal("12.5") if days_back == 3 else Decimal(1000 + 10 * days_back)


def _jane() -> FixtureStripeData:
    pro = price("price_Pro", "prod_Pro", "4900", nickname="Pro monthly")
    growth = price("price_Growth", "prod_Growth", "2900")
    api = price("price_Api", "prod_Api", API_UNIT, metered="mtr_Api")
    sub = {
        "id": "sub_Jane", "object": "subscription", "customer": JANE, "status": "active",
        "created": days_ago(200), "start_date": days_ago(200), "currency": "usd",
        "billing_cycle_anchor": PERIOD_START, "cancel_at_period_end": False, "metadata": {},
        "items": {"object": "list", "has_more": False,
                  "url": "/v1/subscription_items?subscription=sub_Jane", "data": [
                      {"id": "si_Pro", "object": "subscription_item", "created": days_ago(45),
                       "current_period_start": PERIOD_START, "current_period_end": PERIOD_END,
                       "price": pro, "quantity": 1, "subscription": "sub_Jane", "metadata": {},
                       "discounts": []},
                      {"id": "si_Api", "object": "subscription_item", "created": days_ago(200),
                       "current_period_start": PERIOD_START, "current_period_end": PERIOD_END,
                       "price": api, "subscription": "sub_Jane", "metadata": {},
                       "discounts": []}]},
    }  # fmt: skip
    sub_line = {"sub": "sub_Jane"}
    in3 = invoice(
        "in_Jane3", JANE, PERIOD_START, [
            line("il_3pro", 4900, "1 × Pro (at $49.00 / month)", price_id="price_Pro",
                 product_id="prod_Pro", unit="4900", item="si_Pro",
                 period=(PERIOD_START, PERIOD_END), discount=980, tax=315, credit=0, **sub_line),
            line("il_3api", 50000, "API requests", price_id="price_Api", product_id="prod_Api",
                 quantity=100000, unit=API_UNIT, item="si_Api", period=(OCT_1, PERIOD_START),
                 tax=3998, credit=1000, **sub_line),
        ],
        discount=980, tax=4313, credit=1000, starting_balance=-500, ending_balance=0,
        sub="sub_Jane", number="ACME-0003",
    )  # fmt: skip
    in2 = invoice(
        "in_Jane2", JANE, OCT_1, [
            line("il_2cred", -1450, "Unused time on Growth after 16 Sep 2026",
                 price_id="price_Growth", product_id="prod_Growth", unit="2900", item="si_Pro",
                 proration=True, invoice_item="ii_p1", period=(SEP_1 + 15 * DAY, OCT_1),
                 **sub_line),
            line("il_2deb", 2450, "Remaining time on Pro after 16 Sep 2026",
                 price_id="price_Pro", product_id="prod_Pro", unit="4900", item="si_Pro",
                 proration=True, invoice_item="ii_p2", period=(SEP_1 + 15 * DAY, OCT_1),
                 **sub_line),
            line("il_2pro", 4900, "1 × Pro (at $49.00 / month)", price_id="price_Pro",
                 product_id="prod_Pro", unit="4900", item="si_Pro", period=(OCT_1, PERIOD_START),
                 **sub_line),
            line("il_2api", 40000, "API requests", price_id="price_Api", product_id="prod_Api",
                 quantity=80000, unit=API_UNIT, item="si_Api", period=(SEP_1, OCT_1), **sub_line),
            line("il_2onb", 15000, "Onboarding package", price_id="price_Onboard",
                 product_id="prod_Onboard", unit="15000"),
        ],
        sub="sub_Jane", reason="subscription_update", number="ACME-0002",
    )  # fmt: skip
    in1 = invoice(
        "in_Jane1", JANE, SEP_1, [
            line("il_1gro", 2900, "1 × Growth (at $29.00 / month)", price_id="price_Growth",
                 product_id="prod_Growth", unit="2900", item="si_Growth",
                 period=(SEP_1, OCT_1), **sub_line),
            line("il_1api", 30000, "API requests", price_id="price_Api", product_id="prod_Api",
                 quantity=60000, unit=API_UNIT, item="si_Api", period=(AUG_1, SEP_1), **sub_line),
        ],
        status="open", attempt_count=2, next_attempt=ts(NOW + timedelta(days=2)),
        ending_balance=None, sub="sub_Jane", number="ACME-0001",
    )  # fmt: skip
    in_a = invoice(
        "in_JaneA", JANE, AUG_1, [
            line("il_Agro", 2900, "1 × Growth", price_id="price_Growth", product_id="prod_Growth",
                 unit="2900", item="si_Growth", period=(AUG_1, SEP_1), **sub_line),
        ],
        sub="sub_Jane", number="ACME-000A",
    )  # fmt: skip
    in_old = invoice(
        "in_JaneOld", JANE, days_ago(450), [
            line("il_Ogro", 2900, "1 × Growth", price_id="price_Growth", product_id="prod_Growth",
                 unit="2900", item="si_Growth", period=(days_ago(450), days_ago(420)), **sub_line),
        ],
        sub="sub_Jane", number="ACME-OLD",
    )  # fmt: skip
    summaries = []
    for back in range(59, -1, -1):
        start = days_ago(back)
        summaries.append(
            {
                "id": f"mtrusg_{back:03d}",
                "object": "billing.meter_event_summary",
                "aggregated_value": usage_value(back),
                "start_time": start,
                "end_time": start + DAY,
                "livemode": False,
                "meter": "mtr_Api",
            }
        )
    return FixtureStripeData(
        customer=customer(JANE, "jane@acme.com", "acct_acme", name="Acme Inc", balance=-500),
        subscriptions=[sub],
        invoices=[in3, in2, in1, in_a, in_old],
        invoice_payments=[
            invoice_payment("inpay_3", "in_Jane3", PERIOD_START + 3600, 56733, intent="pi_Jane3"),
            invoice_payment("inpay_2", "in_Jane2", OCT_1 + 3600, 60900, charge="ch_Jane2"),
            invoice_payment("inpay_1", "in_Jane1", SEP_1 + 3600, 32900, intent="pi_Jane1",
                            status="open"),
            invoice_payment("inpay_A", "in_JaneA", AUG_1 + 3600, 2900, charge="ch_JaneA"),
        ],
        charges=[
            charge("ch_Jane3", JANE, PERIOD_START + 3600, 56733, intent="pi_Jane3"),
            charge("ch_Jane2", JANE, OCT_1 + 3600, 60900, refunded=5000),
            charge("ch_Jane1b", JANE, SEP_1 + 4 * DAY, 32900, status="failed",
                   intent="pi_Jane1", failure=("card_declined", "Your card was declined.")),
            charge("ch_Jane1", JANE, SEP_1 + 3600, 32900, status="failed", intent="pi_Jane1",
                   failure=("card_declined", "Your card was declined.")),
            charge("ch_JaneA", JANE, AUG_1 + 3600, 2900, disputed=True),
        ],
        refunds=[{"id": "re_Jane2", "object": "refund", "amount": 5000, "charge": "ch_Jane2",
                  "created": OCT_1 + 5 * DAY, "currency": "usd", "payment_intent": None,
                  "metadata": {"request_id": "R-17"}, "reason": "requested_by_customer",
                  "status": "succeeded"}],
        disputes=[{"id": "dp_JaneA", "object": "dispute", "amount": 2900, "charge": "ch_JaneA",
                   "created": days_ago(2), "currency": "usd", "reason": "fraudulent",
                   "status": "needs_response", "payment_intent": None,
                   "is_charge_refundable": True,
                   "evidence_details": {"due_by": ts(NOW + timedelta(days=5)),
                                        "has_evidence": False, "past_due": False,
                                        "submission_count": 0}}],
        meter_event_summaries={"mtr_Api": summaries},
        meters=[meter("mtr_Api", "API requests", "api_request")],
        prices=[growth, price("price_Onboard", "prod_Onboard", "15000", recurring=False)],
        products=[product("prod_Pro", "Pro"), product("prod_Growth", "Growth"),
                  product("prod_Api", "API requests"), product("prod_Onboard", "Onboarding")],
    )  # fmt: skip


HEAVY = "cus_Heavy0000001"
HEAVY_CHARGES = 130
HEAVY_LINES = 120


def _heavy() -> FixtureStripeData:
    lines = [
        line(f"il_h{n:03d}", 100 + n, f"Seat {n}", price_id="price_Seat", product_id="prod_Seat",
             unit=str(100 + n), period=(days_ago(30), days_ago(0)))
        for n in range(HEAVY_LINES)
    ]  # fmt: skip
    return FixtureStripeData(
        customer=customer(HEAVY, "ops@heavy.example", "acct_heavy", name="Heavy Co"),
        invoices=[invoice("in_Heavy", HEAVY, days_ago(1), lines, reason="manual")],
        charges=[charge(f"ch_h{n:03d}", HEAVY, days_ago(n + 1), 1000)
                 for n in range(HEAVY_CHARGES)],
    )  # fmt: skip


def build_fixture_world() -> FixtureWorld:
    """The hand-written world: Acme (everything), Heavy (more than a page of charges and invoice
    lines), a yen customer, a mixed-case email, a quote in an account ID, and a deleted customer."""
    yen_lines = [line("il_Yen", 1200, "Starter", price_id="price_Yen", product_id="prod_Yen",
                      unit="1200", currency="jpy")]  # fmt: skip
    return FixtureWorld(
        now=NOW,
        data={
            "acct_acme": _jane(),
            "acct_heavy": _heavy(),
            "acct_yen": FixtureStripeData(
                customer=customer("cus_Yen000000001", "kaito@yen.example", "acct_yen",
                                  currency="jpy"),
                invoices=[invoice("in_Yen", "cus_Yen000000001", days_ago(3), yen_lines,
                                  currency="jpy", reason="manual")],
                charges=[charge("ch_Yen", "cus_Yen000000001", days_ago(3), 1200,
                                currency="jpy")],
            ),
            "acct_bob": FixtureStripeData(
                customer=customer("cus_Bob000000001", "Bob@Example.com", "acct_bob")),
            "acct_quote": FixtureStripeData(
                customer=customer("cus_Quote0000001", "q@quote.example", "o'brien\\1")),
            "acct_gone": FixtureStripeData(
                customer={"id": "cus_Gone00000001", "object": "customer", "deleted": True}),
        },
    )  # fmt: skip


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def world() -> FixtureWorld:
    """A fresh fixture world per test."""
    return build_fixture_world()


@pytest_asyncio.fixture
async def server(world: FixtureWorld) -> AsyncIterator[FakeProviderServer]:
    """The Stripe sandbox server on 127.0.0.1."""
    async with FakeProviderServer(StripeSandboxServer(world, api_key=KEY)) as fake:
        yield fake


@pytest_asyncio.fixture
async def stripe(server: FakeProviderServer) -> AsyncIterator[StripeBillingProvider]:
    """The production client pointed at the sandbox server."""
    client = StripeBillingProvider(KEY, base_url=server.url, policy=FAST, clock=lambda: NOW)
    yield client
    await client.aclose()


def paths(server: FakeProviderServer) -> list[str]:
    """Paths the server received, in order."""
    return [r.path for r in server.requests]


async def jane_snapshot(stripe: StripeBillingProvider) -> ProviderSnapshot:
    """Acme's snapshot, via an ID lookup."""
    [record] = await stripe.find_customers(IdentifierKind.STRIPE_CUSTOMER, JANE)
    return await stripe.get_snapshot(record)


def usd(amount: str) -> Money:
    """Dollars."""
    return Money(Decimal(amount), "usd")


# --- lookups ------------------------------------------------------------------------------------


async def test_email_lookup_finds_the_customer_with_our_account_id(
    stripe: StripeBillingProvider, server: FakeProviderServer
) -> None:
    """Looking up an email finds the Stripe customer, its account ID, balance and dashboard link."""
    [found] = await stripe.find_customers(IdentifierKind.EMAIL, "jane@acme.com")
    assert found.customer_id == JANE
    assert found.account_id == "acct_acme"
    assert found.name == "Acme Inc"
    assert found.balance == usd("-5.00")
    assert found.created_at is not None and found.created_at.tzinfo is UTC
    assert found.dashboard_url == f"https://dashboard.stripe.com/test/customers/{JANE}"
    assert paths(server) == ["/v1/customers"]
    seen = server.requests[0]
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.headers["stripe-version"] == "2026-10-28.endive"


async def test_email_typed_in_another_case_is_found_through_the_lower_cased_address(
    stripe: StripeBillingProvider, server: FakeProviderServer
) -> None:
    """An email typed with capitals still finds a customer stored in lower case."""
    [found] = await stripe.find_customers(IdentifierKind.EMAIL, "Jane@ACME.com")
    assert found.customer_id == JANE
    assert sorted(dict(r.query)["email"] for r in server.requests) == [
        "Jane@ACME.com",
        "jane@acme.com",
    ]


async def test_email_stored_in_mixed_case_is_found_by_search(
    stripe: StripeBillingProvider, server: FakeProviderServer
) -> None:
    """A customer whose email was saved with capitals is found through search."""
    [found] = await stripe.find_customers(IdentifierKind.EMAIL, "bob@example.com")
    assert found.customer_id == "cus_Bob000000001"
    assert paths(server)[-1] == "/v1/customers/search"
    assert dict(server.requests[-1].query)["query"] == "email:'bob@example.com'"


async def test_unknown_email_finds_nobody(stripe: StripeBillingProvider) -> None:
    """An email no customer has gives an empty answer, not an error."""
    assert await stripe.find_customers(IdentifierKind.EMAIL, "nobody@nowhere.example") == []


async def test_customer_id_lookup(stripe: StripeBillingProvider) -> None:
    """A `cus_…` ID finds that customer."""
    [found] = await stripe.find_customers(IdentifierKind.STRIPE_CUSTOMER, JANE)
    assert found.email == "jane@acme.com"


async def test_unknown_customer_id_is_not_an_error(
    stripe: StripeBillingProvider, server: FakeProviderServer
) -> None:
    """A `cus_…` ID Stripe does not know (404) finds nobody, without retries."""
    assert await stripe.find_customers(IdentifierKind.STRIPE_CUSTOMER, "cus_Missing000001") == []
    assert len(server.requests) == 1


async def test_deleted_customer_is_not_found(stripe: StripeBillingProvider) -> None:
    """A deleted Stripe customer is treated as not found."""
    assert await stripe.find_customers(IdentifierKind.STRIPE_CUSTOMER, "cus_Gone00000001") == []


async def test_account_id_lookup_searches_metadata(
    stripe: StripeBillingProvider, server: FakeProviderServer
) -> None:
    """Our account ID finds the customer whose metadata carries it."""
    [found] = await stripe.find_customers(IdentifierKind.ACCOUNT_ID, "acct_heavy")
    assert found.customer_id == HEAVY
    assert dict(server.requests[0].query)["query"] == "metadata['account_id']:'acct_heavy'"


async def test_account_id_with_quotes_is_escaped_in_the_search(
    stripe: StripeBillingProvider,
) -> None:
    """Quotes and backslashes in an account ID cannot break out of the search query."""
    [found] = await stripe.find_customers(IdentifierKind.ACCOUNT_ID, "o'brien\\1")
    assert found.customer_id == "cus_Quote0000001"
    assert await stripe.find_customers(IdentifierKind.ACCOUNT_ID, "o' OR email:'x") == []


async def test_kinds_stripe_cannot_search_make_no_calls(
    stripe: StripeBillingProvider, server: FakeProviderServer
) -> None:
    """Orb and Metronome customer IDs are not Stripe's: no answer and no request."""
    assert await stripe.find_customers(IdentifierKind.ORB_CUSTOMER, "abc") == []
    assert await stripe.find_customers(IdentifierKind.METRONOME_CUSTOMER, "abc") == []
    assert server.requests == []


async def test_custom_metadata_key(server: FakeProviderServer) -> None:
    """STRIPE_ACCOUNT_ID_METADATA_KEY changes which metadata key holds our account ID."""
    client = StripeBillingProvider(
        KEY, base_url=server.url, policy=FAST, account_id_metadata_key="tenant"
    )
    try:
        assert await client.find_customers(IdentifierKind.ACCOUNT_ID, "acct_acme") == []
        [found] = await client.find_customers(IdentifierKind.STRIPE_CUSTOMER, JANE)
        assert found.account_id is None
        assert dict(server.requests[0].query)["query"] == "metadata['tenant']:'acct_acme'"
    finally:
        await client.aclose()


# --- snapshot -----------------------------------------------------------------------------------


async def test_snapshot_subscription_plan_and_period(stripe: StripeBillingProvider) -> None:
    """The status shows the plan, its state, the current period and the recurring fee."""
    snap = await jane_snapshot(stripe)
    [sub] = snap.subscriptions
    assert sub.id == "sub_Jane"
    assert sub.status is SubscriptionStatus.ACTIVE
    assert sub.plan_name == "Pro"
    assert sub.plan_id == "prod_Pro"
    assert sub.current_period_start == datetime(2026, 11, 1, tzinfo=UTC)
    assert sub.current_period_end == datetime(2026, 12, 1, tzinfo=UTC)
    assert sub.recurring_amount == usd("49.00")
    assert not sub.cancel_at_period_end


async def test_snapshot_invoices_amounts_and_statuses(stripe: StripeBillingProvider) -> None:
    """Recent invoices come newest first, with exact totals, statuses and the money breakdown."""
    snap = await jane_snapshot(stripe)
    assert [i.id for i in snap.invoices] == ["in_Jane3", "in_Jane2", "in_Jane1", "in_JaneA"]
    latest, update, failed, _ = snap.invoices
    assert latest.status is InvoiceStatus.PAID
    assert latest.subtotal == usd("549.00")
    assert latest.discount == usd("9.80")
    assert latest.tax == usd("43.13")
    assert latest.credits_applied == usd("10.00")  # the discount is not counted twice
    assert latest.total == usd("572.33")
    assert latest.balance_applied == usd("5.00")  # the $5 customer credit
    assert latest.amount_due == usd("567.33")
    assert latest.amount_paid == usd("567.33")
    assert latest.number == "ACME-0003"
    assert latest.subscription_id == "sub_Jane"
    assert latest.plan_name == "Pro"
    assert latest.created_at == datetime(2026, 11, 1, tzinfo=UTC)
    assert latest.paid_at == datetime(2026, 11, 1, 1, tzinfo=UTC)
    assert latest.url == "https://invoice.stripe.com/i/in_Jane3"
    assert update.billing_reason == "subscription_update"
    assert failed.status is InvoiceStatus.PAST_DUE  # open, attempted, retry scheduled
    assert failed.attempt_count == 2
    assert failed.balance_applied is None
    for inv in snap.invoices:
        assert inv.subtotal is not None and inv.discount is not None and inv.tax is not None
        assert inv.credits_applied is not None
        assert sum((ln.amount for ln in inv.lines), Money.zero()) == inv.subtotal
        assert inv.total == inv.subtotal - inv.discount + inv.tax - inv.credits_applied


async def test_snapshot_invoice_lines_are_classified(stripe: StripeBillingProvider) -> None:
    """Lines say what they are: plan fee, metered usage (metric, quantity, unit price),
    prorations and one-off items, with their discounts, taxes and credits."""
    snap = await jane_snapshot(stripe)
    latest, update, failed, _ = snap.invoices
    fee, usage = latest.lines
    assert fee.kind is LineKind.SUBSCRIPTION and fee.price_id == "price_Pro"
    assert fee.discount_amount == usd("9.80")
    assert fee.tax_amount == usd("3.15")
    assert fee.period_start == datetime(2026, 11, 1, tzinfo=UTC)
    assert usage.kind is LineKind.USAGE
    assert usage.metric == "API requests"
    assert usage.quantity == Decimal(100000)
    assert usage.unit_price == Decimal("0.005")
    assert usage.amount == usd("500.00")
    assert usage.credits_applied == usd("10.00")
    kinds = [(ln.id, ln.kind, ln.proration) for ln in update.lines]
    assert kinds == [
        ("il_2cred", LineKind.PRORATION, True),
        ("il_2deb", LineKind.PRORATION, True),
        ("il_2pro", LineKind.SUBSCRIPTION, False),
        ("il_2api", LineKind.USAGE, False),
        ("il_2onb", LineKind.ONE_OFF, False),
    ]
    assert update.lines[0].amount == usd("-14.50")
    # The Growth price is no longer on the subscription: its price was looked up.
    assert failed.lines[0].kind is LineKind.SUBSCRIPTION
    assert failed.lines[0].unit_price == Decimal("29.00")
    assert failed.plan_name == "Growth"


async def test_snapshot_payments_refunds_and_disputes(stripe: StripeBillingProvider) -> None:
    """Failed payments, refunds and open disputes (with the evidence due date) are listed, and
    each charge names the invoice it paid."""
    snap = await jane_snapshot(stripe)
    by_id = {p.id: p for p in snap.payments}
    assert [p.id for p in snap.payments] == ["ch_Jane3", "ch_Jane2", "ch_Jane1b", "ch_Jane1",
                                             "ch_JaneA"]  # fmt: skip
    assert by_id["ch_Jane3"].invoice_id == "in_Jane3"  # through the payment intent
    assert by_id["ch_Jane2"].invoice_id == "in_Jane2"  # through the charge
    assert by_id["ch_Jane1"].invoice_id == by_id["ch_Jane1b"].invoice_id == "in_Jane1"
    failed = by_id["ch_Jane1"]
    assert failed.status is PaymentStatus.FAILED
    assert failed.failure_code == "card_declined"
    assert failed.failure_message == "Your card was declined."
    assert failed.payment_intent_id == "pi_Jane1"
    assert by_id["ch_Jane2"].amount_refunded == usd("50.00")
    assert by_id["ch_Jane2"].refundable == usd("559.00")
    assert by_id["ch_JaneA"].disputed
    [refund] = snap.refunds
    assert (refund.id, refund.amount, refund.payment_id, refund.reason) == (
        "re_Jane2", usd("50.00"), "ch_Jane2", "requested_by_customer")  # fmt: skip
    assert refund.metadata == {"request_id": "R-17"}
    [dispute] = snap.disputes
    assert dispute.is_open and dispute.reason == "fraudulent"
    assert dispute.amount == usd("29.00")
    assert dispute.payment_id == "ch_JaneA"
    assert dispute.evidence_due_by == datetime(2026, 11, 20, tzinfo=UTC)


async def test_snapshot_balance_usage_and_upcoming_invoice(stripe: StripeBillingProvider) -> None:
    """The customer credit, daily metered usage with its cost, and the upcoming invoice show."""
    snap = await jane_snapshot(stripe)
    [balance] = snap.balances
    assert balance.kind == "customer_balance" and balance.remaining == usd("5.00")
    assert len(snap.usage) == 35
    assert [p.day for p in snap.usage] == [
        date(2026, 11, 15) - timedelta(days=n) for n in range(34, -1, -1)
    ]
    assert {p.metric for p in snap.usage} == {"API requests"}
    spike = next(p for p in snap.usage if p.day == date(2026, 11, 12))
    assert spike.quantity == Decimal("12.5")
    assert spike.cost == Money(Decimal("0.0625"), "usd")
    first = snap.usage[0]
    assert first.quantity == usage_value(34) and first.cost == usd("6.70")
    upcoming = snap.upcoming_invoice
    assert upcoming is not None
    assert upcoming.status is InvoiceStatus.DRAFT
    assert upcoming.subscription_id == "sub_Jane"
    used = sum(usage_value(n) for n in range(15))  # 1–15 November
    metered = int((used * Decimal(API_UNIT)).quantize(Decimal(1)))
    assert upcoming.subtotal == Money.from_minor(4900 + metered, "usd")
    kinds = {ln.kind for ln in upcoming.lines}
    assert kinds == {LineKind.SUBSCRIPTION, LineKind.USAGE}


async def test_snapshot_uses_few_requests(
    stripe: StripeBillingProvider, server: FakeProviderServer
) -> None:
    """A snapshot is a handful of requests: list calls with embedded data, not one per object."""
    [record] = await stripe.find_customers(IdentifierKind.STRIPE_CUSTOMER, JANE)
    server.requests.clear()
    await stripe.get_snapshot(record)
    assert sorted(paths(server)) == sorted([
        "/v1/subscriptions", "/v1/invoices", "/v1/charges", "/v1/billing/meters/mtr_Api",
        "/v1/disputes", "/v1/billing/meters/mtr_Api/event_summaries",
        "/v1/invoices/create_preview", "/v1/prices/price_Growth",
    ])  # fmt: skip
    server.requests.clear()
    await stripe.get_snapshot(record)  # meters and prices are cached now
    assert "/v1/billing/meters/mtr_Api" not in paths(server)
    assert "/v1/prices/price_Growth" not in paths(server)


async def test_snapshot_history_window(stripe: StripeBillingProvider) -> None:
    """Invoices older than the history window are not fetched."""
    snap = await jane_snapshot(stripe)
    assert "in_JaneOld" not in {i.id for i in snap.invoices}


async def test_usage_window_is_configurable(server: FakeProviderServer) -> None:
    """usage_days sets how many days of usage come back (chunked into 100-day requests)."""
    client = StripeBillingProvider(KEY, base_url=server.url, policy=FAST, usage_days=400,
                                   clock=lambda: NOW)  # fmt: skip
    try:
        snap = await jane_snapshot(client)
    finally:
        await client.aclose()
    assert len(snap.usage) == 60  # all the fixture has
    summaries = [r for r in server.requests if r.path.endswith("/event_summaries")]
    assert len(summaries) == 4


async def test_zero_decimal_currency(stripe: StripeBillingProvider) -> None:
    """Yen amounts are whole yen (Stripe's minor unit of JPY is the yen)."""
    [record] = await stripe.find_customers(IdentifierKind.EMAIL, "kaito@yen.example")
    snap = await stripe.get_snapshot(record)
    [inv] = snap.invoices
    assert inv.total == Money(Decimal(1200), "jpy")
    assert inv.lines[0].unit_price == Decimal(1200)
    assert snap.payments[0].amount == Money(Decimal(1200), "jpy")
    assert snap.usage == () and snap.upcoming_invoice is None and snap.balances == ()


@pytest.mark.parametrize(
    ("drop", "what"),
    [("invoice", "an invoice"), ("charge", "a charge"), ("subscription", "a subscription")],
)
async def test_an_object_without_currency_is_a_malformed_response(
    world: FixtureWorld, stripe: StripeBillingProvider, drop: str, what: str
) -> None:
    """An invoice, charge or subscription with no currency is a malformed response naming Stripe,
    never silently read as USD."""
    data = world.data["acct_acme"]
    objects = {"invoice": data.invoices, "charge": data.charges, "subscription": data.subscriptions}
    objects[drop][0]["currency"] = None
    [record] = await stripe.find_customers(IdentifierKind.STRIPE_CUSTOMER, JANE)
    with pytest.raises(ProviderBadResponse) as info:
        await stripe.get_snapshot(record)
    assert info.value.provider == "stripe"
    assert info.value.message == f"Stripe sent {what} with no currency"


async def test_a_customer_without_currency_has_no_balance_unless_it_owes_one(
    world: FixtureWorld, stripe: StripeBillingProvider
) -> None:
    """A never-billed customer (no currency, zero balance) resolves with no balance; a balance
    with no currency is malformed."""
    [bob] = await stripe.find_customers(IdentifierKind.STRIPE_CUSTOMER, "cus_Bob000000001")
    assert bob.currency == "usd" and bob.balance == usd("0")
    world.data["acct_bob"].customer.update(currency=None, balance=0)
    world.data["acct_quote"].customer.update(currency=None, balance=-500)
    fresh = StripeSandboxServer(world, api_key=KEY)
    async with FakeProviderServer(fresh) as other:
        client = StripeBillingProvider(KEY, base_url=other.url, policy=FAST, clock=lambda: NOW)
        try:
            [bob] = await client.find_customers(IdentifierKind.STRIPE_CUSTOMER, "cus_Bob000000001")
            assert bob.currency is None and bob.balance is None
            with pytest.raises(ProviderBadResponse, match="customer balance with no currency"):
                await client.find_customers(IdentifierKind.STRIPE_CUSTOMER, "cus_Quote0000001")
        finally:
            await client.aclose()


async def test_pagination_is_followed(
    stripe: StripeBillingProvider, server: FakeProviderServer
) -> None:
    """More charges than one page and an invoice with more lines than Stripe embeds all arrive."""
    [record] = await stripe.find_customers(IdentifierKind.STRIPE_CUSTOMER, HEAVY)
    snap = await stripe.get_snapshot(record)
    assert len(snap.payments) == HEAVY_CHARGES
    assert len({p.id for p in snap.payments}) == HEAVY_CHARGES
    [inv] = snap.invoices
    assert [ln.id for ln in inv.lines] == [f"il_h{n:03d}" for n in range(HEAVY_LINES)]
    assert sum((ln.amount for ln in inv.lines), Money.zero()) == inv.subtotal
    charge_pages = [dict(r.query) for r in server.requests if r.path == "/v1/charges"]
    assert len(charge_pages) == 2 and charge_pages[1]["starting_after"] == "ch_h099"
    line_pages = [dict(r.query) for r in server.requests if r.path.endswith("/lines")]
    assert [q["starting_after"] for q in line_pages] == ["il_h009", "il_h109"]


async def test_snapshot_without_cached_customer_fetches_it(
    stripe: StripeBillingProvider, server: FakeProviderServer
) -> None:
    """A customer record from a cache (no raw object) is refreshed within the first round."""
    [record] = await stripe.find_customers(IdentifierKind.STRIPE_CUSTOMER, JANE)
    bare = replace(record, raw={}, balance=None)
    server.requests.clear()
    snap = await stripe.get_snapshot(bare)
    assert f"/v1/customers/{JANE}" in paths(server)
    assert snap.customer.balance == usd("-5.00")


# --- faults -------------------------------------------------------------------------------------


async def test_429_with_retry_after_is_retried(
    stripe: StripeBillingProvider, server: FakeProviderServer
) -> None:
    """A rate limit with Retry-After is waited out and the lookup succeeds."""
    server.fail(429, retry_after="0.01", times=2)
    [found] = await stripe.find_customers(IdentifierKind.STRIPE_CUSTOMER, JANE)
    assert found.customer_id == JANE
    assert len(server.requests) == 3


async def test_429_forever_is_rate_limited(
    stripe: StripeBillingProvider, server: FakeProviderServer
) -> None:
    """Endless rate limiting ends as ProviderRateLimited within the deadline."""
    server.fail(429, times=None, body=b'{"error":{"type":"invalid_request_error",'
                b'"code":"lock_timeout","message":"busy"}}')  # fmt: skip
    with pytest.raises(ProviderRateLimited):
        await stripe.find_customers(IdentifierKind.EMAIL, "jane@acme.com")


async def test_500_then_success(stripe: StripeBillingProvider, server: FakeProviderServer) -> None:
    """A passing server error is retried."""
    server.fail(500, times=1, path=r"^/v1/invoices$")
    snap = await jane_snapshot(stripe)
    assert len(snap.invoices) == 4


async def test_500_forever_is_unavailable(
    stripe: StripeBillingProvider, server: FakeProviderServer
) -> None:
    """A server that keeps failing makes the snapshot fail as ProviderUnavailable."""
    [record] = await stripe.find_customers(IdentifierKind.STRIPE_CUSTOMER, JANE)
    server.fail(500, times=None, path=r"^/v1/charges$")
    with pytest.raises(ProviderUnavailable) as caught:
        await stripe.get_snapshot(record)
    assert not isinstance(caught.value, ProviderRateLimited)
    assert caught.value.provider == "stripe"


async def test_should_retry_false_is_not_retried(
    stripe: StripeBillingProvider, server: FakeProviderServer
) -> None:
    """`Stripe-Should-Retry: false` stops retries at once."""
    server.fail(503, times=None, headers={"Stripe-Should-Retry": "false"})
    with pytest.raises(ProviderUnavailable):
        await stripe.find_customers(IdentifierKind.STRIPE_CUSTOMER, JANE)
    assert len(server.requests) == 1


async def test_lock_timeout_409_is_retried(
    stripe: StripeBillingProvider, server: FakeProviderServer
) -> None:
    """A 409 (lock contention) is retried like a transient error."""
    server.fail(409, times=1, body=b'{"error":{"type":"invalid_request_error",'
                b'"code":"lock_timeout","message":"locked"}}')  # fmt: skip
    [found] = await stripe.find_customers(IdentifierKind.STRIPE_CUSTOMER, JANE)
    assert found.customer_id == JANE


async def test_malformed_json_once_is_retried(
    stripe: StripeBillingProvider, server: FakeProviderServer
) -> None:
    """A garbled body is retried and the lookup succeeds."""
    server.add_fault(Fault("malformed", times=1))
    [found] = await stripe.find_customers(IdentifierKind.STRIPE_CUSTOMER, JANE)
    assert found.customer_id == JANE


async def test_malformed_json_forever_is_a_bad_response(
    stripe: StripeBillingProvider, server: FakeProviderServer
) -> None:
    """A body that never parses ends as ProviderBadResponse."""
    server.add_fault(Fault("malformed", times=None))
    with pytest.raises(ProviderBadResponse):
        await stripe.find_customers(IdentifierKind.STRIPE_CUSTOMER, JANE)


async def test_hang_times_out_within_the_deadline(server: FakeProviderServer) -> None:
    """A server that never answers makes the lookup fail as "timed out" within the deadline."""
    policy = RetryPolicy(connect_timeout=0.2, read_timeout=0.2, max_attempts=3,
                         backoff_base=0.01, backoff_max=0.02, deadline=0.8)  # fmt: skip
    client = StripeBillingProvider(KEY, base_url=server.url, policy=policy)
    server.add_fault(Fault("hang", times=None))
    try:
        with pytest.raises(ProviderUnavailable, match="timed out"):
            await client.find_customers(IdentifierKind.STRIPE_CUSTOMER, JANE)
    finally:
        await client.aclose()


async def test_wrong_key_is_an_auth_error_without_retries(server: FakeProviderServer) -> None:
    """A rejected key fails at once as ProviderAuthError, and its text never contains the key."""
    wrong = "sk_test_51WrongKey000000000wxyz"
    client = StripeBillingProvider(wrong, base_url=server.url, policy=FAST)
    try:
        with pytest.raises(ProviderAuthError) as caught:
            await client.find_customers(IdentifierKind.EMAIL, "jane@acme.com")
    finally:
        await client.aclose()
    assert len(server.requests) == 1
    assert "Wrong" not in str(caught.value) and wrong not in repr(caught.value.__dict__)


async def test_error_messages_never_echo_keys(
    stripe: StripeBillingProvider, server: FakeProviderServer
) -> None:
    """Even if Stripe quotes a key in an error, our error text does not carry it."""
    server.fail(400, times=1, body=b'{"error":{"type":"invalid_request_error",'
                b'"message":"Bad key sk_live_51Abcdef0123456789 used"}}')  # fmt: skip
    with pytest.raises(ProviderRequestError) as caught:
        await stripe.find_customers(IdentifierKind.STRIPE_CUSTOMER, JANE)
    assert "Abcdef" not in caught.value.message
    assert "sk_live_" in caught.value.message


# --- the generated sandbox world ----------------------------------------------------------------


@pytest.fixture(scope="module")
def generated_world() -> Iterator[Any]:
    """The real sandbox world."""
    from integrations.sandbox.world import build_world

    yield build_world(ordinary_accounts=20)


async def test_every_stripe_account_of_the_sandbox_world_snapshots(generated_world: Any) -> None:
    """Every Stripe customer of the generated world resolves and snapshots consistently."""
    async with FakeProviderServer(StripeSandboxServer(generated_world, api_key=KEY)) as fake:
        client = StripeBillingProvider(KEY, base_url=fake.url, policy=FAST,
                                       clock=lambda: generated_world.now)  # fmt: skip
        try:
            checked = 0
            for account in generated_world.accounts:
                data = generated_world.stripe(account.account_id)
                if data is None or data.customer.get("deleted"):
                    continue
                found = await client.find_customers(
                    IdentifierKind.STRIPE_CUSTOMER, account.stripe_customer_id
                )
                assert [c.customer_id for c in found] == [account.stripe_customer_id]
                snap = await client.get_snapshot(found[0])
                for inv in snap.invoices:
                    assert inv.subtotal is not None
                    assert sum((ln.amount for ln in inv.lines), Money.zero(inv.currency)) == (
                        inv.subtotal
                    ), inv.id
                    assert inv.discount is not None and inv.tax is not None
                    assert inv.credits_applied is not None
                    assert inv.total == inv.subtotal - inv.discount + inv.tax - (
                        inv.credits_applied
                    ), inv.id
                checked += 1
            assert checked > 0
        finally:
            await client.aclose()
