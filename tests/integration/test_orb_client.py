"""The Orb client over real HTTP against the Orb sandbox server (FakeProviderServer on 127.0.0.1):
lookups, snapshot contents, pagination, and the shared retry policy under scripted faults.

The builders at the top write Orb objects by hand in Orb's wire format (spec-valid; the contract
test checks them against orb-openapi.json and the SDK's models), so the tests do not depend on the
generated sandbox world; one test also runs the client over the real world when it is present.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
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
from integrations.orb import OrbBillingProvider
from integrations.sandbox.orb_server import OrbSandboxServer
from integrations.sandbox.wire import RouterTransport, WireRequest, WireResponse
from tests.support.fakeserver import FakeProviderServer, Fault

API_KEY = "orb-test-key"
TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
FAST = RetryPolicy(
    connect_timeout=0.5,
    read_timeout=0.5,
    max_attempts=3,
    backoff_base=0.01,
    backoff_max=0.05,
    max_retry_after=0.05,
    deadline=2.0,
)


# --- Orb wire-format builders -----------------------------------------------------------------


def iso(when: datetime) -> str:
    """Orb's timestamp format: ISO 8601 with an explicit +00:00 offset."""
    return when.astimezone(UTC).isoformat(timespec="seconds")


def days_ago(n: float) -> datetime:
    """Midnight UTC `n` days before today."""
    return TODAY - timedelta(days=n)


def customer(cid: str, external: str | None, *, balance: str = "0.00", name: str = "Acme") -> dict:
    """An Orb `Customer`."""
    return {
        "id": cid,
        "external_customer_id": external,
        "name": name,
        "email": f"billing@{cid}.example.com",
        "additional_emails": [],
        "timezone": "Etc/UTC",
        "payment_provider": "stripe_charge",
        "payment_provider_id": f"cus_{cid}",
        "created_at": iso(days_ago(500)),
        "shipping_address": None,
        "billing_address": None,
        "balance": balance,
        "currency": "USD",
        "tax_id": None,
        "auto_collection": True,
        "exempt_from_automated_tax": False,
        "email_delivery": True,
        "auto_issuance": None,
        "portal_url": None,
        "metadata": {},
        "hierarchy": {"parent": None, "children": []},
    }


def price(
    pid: str,
    name: str,
    *,
    kind: str = "usage",
    unit_amount: str | None = "0.002",
    tiers: list[dict[str, Any]] | None = None,
    metric: str | None = "bm_api",
    item: str = "API requests",
    quantity: float | None = None,
) -> dict:
    """An Orb `Price`: `unit` model (fixed or usage) or `tiered` (usage)."""
    fixed = kind == "fixed"
    body: dict[str, Any] = {
        "metadata": {},
        "id": pid,
        "name": name,
        "external_price_id": None,
        "replaces_price_id": None,
        "price_type": "fixed_price" if fixed else "usage_price",
        "created_at": iso(days_ago(500)),
        "cadence": "monthly",
        "billing_mode": "in_advance" if fixed else "in_arrear",
        "billing_cycle_configuration": {"duration": 1, "duration_unit": "month"},
        "invoicing_cycle_configuration": None,
        "billable_metric": None if fixed else {"id": metric},
        "fixed_price_quantity": (quantity if quantity is not None else 1) if fixed else None,
        "plan_phase_order": None,
        "currency": "USD",
        "conversion_rate": None,
        "conversion_rate_config": None,
        "item": {"id": f"item_{pid}", "name": item},
        "credit_allocation": None,
        "composite_price_filters": None,
        "invoice_grouping_key": None,
        "discount": None,
        "minimum": None,
        "minimum_amount": None,
        "maximum": None,
        "maximum_amount": None,
    }
    if tiers is not None:
        body.update(model_type="tiered", tiered_config={"tiers": tiers})
    else:
        body.update(model_type="unit", unit_config={"unit_amount": unit_amount})
    return body


PLATFORM = price("pr_platform", "Platform fee", kind="fixed", unit_amount="500.00", item="Platform")
API = price("pr_api", "API requests", unit_amount="0.002")
STORAGE = price(
    "pr_storage",
    "Storage",
    tiers=[
        {"first_unit": 0, "last_unit": 100, "unit_amount": "0.50"},
        {"first_unit": 100, "last_unit": None, "unit_amount": "0.25"},
    ],
    metric="bm_storage",
    item="Storage GB",
)


def adjustment(kind: str, amount: str, **extra: Any) -> dict:
    """A `MonetaryAdjustment` on a line item (`amount_discount`, `minimum`, …)."""
    body: dict[str, Any] = {
        "id": f"adj_{kind}_{amount}",
        "is_invoice_level": False,
        "filters": [],
        "applies_to_price_ids": [],
        "reason": None,
        "replaces_adjustment_id": None,
        "adjustment_type": kind,
        "amount": amount,
    }
    if kind == "amount_discount":
        body["amount_discount"] = extra.get("amount_discount", amount.lstrip("-"))
    elif kind == "minimum":
        body.update(minimum_amount=extra["minimum_amount"], item_id="item_min")
    return body


def line(
    lid: str,
    prc: dict,
    *,
    subtotal: str,
    quantity: float,
    start: datetime,
    end: datetime,
    adjustments: list[dict] | None = None,
    adjusted: str | None = None,
    credits: str = "0.00",
    amount: str | None = None,
    tax: str | None = None,
) -> dict:
    """An `InvoiceLineItem`."""
    return {
        "id": lid,
        "name": prc["name"],
        "amount": amount if amount is not None else (adjusted or subtotal),
        "subtotal": subtotal,
        "adjusted_subtotal": adjusted or subtotal,
        "credits_applied": credits,
        "partially_invoiced_amount": "0.00",
        "quantity": quantity,
        "start_date": iso(start),
        "end_date": iso(end),
        "grouping": None,
        "adjustments": adjustments or [],
        "sub_line_items": [],
        "tax_amounts": []
        if tax is None
        else [{"tax_rate_description": "Sales tax", "tax_rate_percentage": "8", "amount": tax}],
        "price": prc,
        "usage_customer_ids": None,
        "filter": None,
    }


def attempt(aid: str, amount: str, when: datetime, *, ok: bool) -> dict:
    """A `PaymentAttempt`."""
    return {
        "id": aid,
        "payment_provider": "stripe",
        "payment_provider_id": f"pi_{aid}",
        "amount": amount,
        "succeeded": ok,
        "created_at": iso(when),
        "receipt_pdf": None,
    }


def invoice(
    iid: str,
    cust: dict,
    *,
    invoice_date: datetime,
    status: str,
    lines: list[dict],
    total: str,
    subtotal: str,
    amount_due: str | None = None,
    due_in_days: int = 15,
    attempts: list[dict] | None = None,
    payment_failed_at: datetime | None = None,
    paid_at: datetime | None = None,
    source: str = "subscription",
    subscription: str | None = "sub_1",
) -> dict:
    """An Orb `Invoice` with its line items."""
    return {
        "metadata": {},
        "id": iid,
        "invoice_number": f"INV-{iid}",
        "voided_at": iso(invoice_date + timedelta(days=1)) if status == "void" else None,
        "paid_at": iso(paid_at) if paid_at else None,
        "issued_at": iso(invoice_date) if status != "draft" else None,
        "scheduled_issue_at": None,
        "auto_collection": {
            "next_attempt_at": None,
            "previously_attempted_at": None,
            "enabled": True,
            "num_attempts": len(attempts or []),
        },
        "issue_failed_at": None,
        "sync_failed_at": None,
        "payment_failed_at": iso(payment_failed_at) if payment_failed_at else None,
        "payment_started_at": None,
        "amount_due": amount_due if amount_due is not None else total,
        "created_at": iso(invoice_date),
        "currency": "USD",
        "customer": {"id": cust["id"], "external_customer_id": cust["external_customer_id"]},
        "due_date": iso(invoice_date + timedelta(days=due_in_days)),
        "invoice_pdf": None,
        "subscription": {"id": subscription} if subscription else None,
        "total": total,
        "customer_balance_transactions": [],
        "status": status,
        "invoice_source": source,
        "shipping_address": None,
        "billing_address": None,
        "hosted_invoice_url": f"https://invoice.withorb.com/view/{iid}",
        "will_auto_issue": False,
        "eligible_to_issue_at": None,
        "customer_tax_id": None,
        "memo": None,
        "credit_notes": [],
        "payment_attempts": attempts or [],
        "discount": None,
        "discounts": [],
        "minimum": None,
        "minimum_amount": None,
        "maximum": None,
        "maximum_amount": None,
        "line_items": lines,
        # Required by the SDK's model (orb-billing 4.90.0) though not yet in the spec.
        "hidden_line_item_count": 0,
        "subtotal": subtotal,
        "invoice_date": iso(invoice_date),
    }


def plan() -> dict:
    """An Orb `Plan` ("Scale")."""
    return {
        "metadata": {},
        "id": "plan_scale",
        "name": "Scale",
        "description": "Scale plan",
        "maximum_amount": None,
        "minimum_amount": None,
        "created_at": iso(days_ago(600)),
        "status": "active",
        "maximum": None,
        "minimum": None,
        "discount": None,
        "product": {"created_at": iso(days_ago(600)), "id": "prod_1", "name": "Cloud"},
        "version": 1,
        "trial_config": {"trial_period": None, "trial_period_unit": "days"},
        "plan_phases": None,
        "base_plan": None,
        "base_plan_id": None,
        "external_plan_id": "scale",
        "currency": "USD",
        "invoicing_currency": "USD",
        "net_terms": 15,
        "default_invoice_memo": None,
        "prices": [PLATFORM, API],
        "adjustments": [],
    }


def subscription(sid: str, cust: dict, *, period_start: datetime) -> dict:
    """An active Orb `Subscription` on the Scale plan."""
    period_end = period_start + timedelta(days=30)
    intervals = [
        {
            "id": f"pi_{p['id']}",
            "start_date": iso(days_ago(400)),
            "end_date": None,
            "price": p,
            "billing_cycle_day": period_start.day,
            "can_defer_billing": False,
            "fixed_fee_quantity_transitions": None,
            "current_billing_period_start_date": iso(period_start),
            "current_billing_period_end_date": iso(period_end),
            "filter": None,
            "usage_customer_ids": None,
        }
        for p in (PLATFORM, API)
    ]
    return {
        "metadata": {},
        "id": sid,
        "customer": cust,
        "plan": plan(),
        "name": "Scale",
        "start_date": iso(days_ago(400)),
        "end_date": None,
        "created_at": iso(days_ago(400)),
        "current_billing_period_start_date": iso(period_start),
        "current_billing_period_end_date": iso(period_end),
        "status": "active",
        "trial_info": {"end_date": None},
        "active_plan_phase_order": None,
        "fixed_fee_quantity_schedule": [],
        "default_invoice_memo": None,
        "auto_collection": None,
        "auto_issuance": None,
        "net_terms": 15,
        "redeemed_coupon": None,
        "billing_cycle_day": period_start.day,
        "billing_cycle_anchor_configuration": {
            "day": period_start.day,
            "month": None,
            "year": None,
        },
        "invoicing_threshold": None,
        "price_intervals": intervals,
        "adjustment_intervals": [],
        "discount_intervals": [],
        "minimum_intervals": [],
        "maximum_intervals": [],
        "pending_subscription_change": None,
    }


def credit_block(bid: str, balance: Decimal, *, expires: datetime | None) -> dict:
    """A `CustomerCreditBalance` (credit block); `balance` is a JSON number."""
    return {
        "metadata": {},
        "id": bid,
        "balance": balance,
        "effective_date": iso(days_ago(60)),
        "expiry_date": iso(expires) if expires else None,
        "per_unit_cost_basis": "1.00",
        "status": "active",
        "maximum_initial_balance": Decimal("500.0"),
        "filters": [],
        "credit_block_source": "manual",
    }


def cost_bucket(day: datetime, api_qty: int) -> dict:
    """One periodic `AggregatedCost` day: API usage at $0.002, plus the fee on the 1st."""
    api_cost = Decimal(api_qty) * Decimal("0.002")
    per_price = [
        {
            "price": API,
            "price_id": API["id"],
            "subtotal": f"{api_cost:.2f}",
            "total": f"{api_cost:.2f}",
            "quantity": api_qty,
        }
    ]
    if day.day == 1:
        per_price.append(
            {
                "price": PLATFORM,
                "price_id": PLATFORM["id"],
                "subtotal": "500.00",
                "total": "500.00",
                "quantity": 1,
            }
        )
    total = sum((Decimal(p["total"]) for p in per_price), Decimal(0))
    return {
        "timeframe_start": iso(day),
        "timeframe_end": iso(day + timedelta(days=1)),
        "subtotal": f"{total:.2f}",
        "total": f"{total:.2f}",
        "per_price_costs": per_price,
    }


@dataclass
class FixtureOrbData:
    """One account's Orb objects (the shape of the world's `OrbData`)."""

    customer: dict[str, Any]
    subscriptions: list[dict[str, Any]] = field(default_factory=list)
    invoices: list[dict[str, Any]] = field(default_factory=list)
    costs: list[dict[str, Any]] = field(default_factory=list)
    credit_blocks: list[dict[str, Any]] = field(default_factory=list)
    ledger_entries: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class FixtureAccount:
    """The part of `SandboxAccount` the Orb server reads."""

    account_id: str
    orb_customer_id: str | None
    billing: str = "orb"


@dataclass
class FixtureWorld:
    """A hand-written world with the `SandboxWorld` methods the Orb server uses."""

    now: datetime
    data: dict[str, FixtureOrbData]

    @property
    def accounts(self) -> list[FixtureAccount]:
        """Every account."""
        return [FixtureAccount(a, d.customer["id"]) for a, d in self.data.items()]

    def orb(self, account_id: str) -> FixtureOrbData | None:
        """The account's Orb objects."""
        return self.data.get(account_id)

    def owner_of(self, object_id: str) -> str | None:
        """Unknown for every ID: the server then searches all accounts."""
        return None


def acme_data() -> FixtureOrbData:
    """Acme: an active Scale subscription, a past-due invoice with discount, credits, tax and a
    balance applied, a paid invoice with a proration and a minimum true-up, a draft, a void, one
    invoice outside the history window, credit blocks, and 40 days of costs."""
    cust = customer("orb_acme", "acct_acme", balance="15.00", name="Acme Corp")
    period = days_ago(5)
    prev = period - timedelta(days=30)
    latest = invoice(
        "inv_latest",
        cust,
        invoice_date=days_ago(20),
        status="issued",
        due_in_days=10,  # due 10 days ago
        payment_failed_at=days_ago(19),
        attempts=[attempt("pa_fail", "700.00", days_ago(19), ok=False)],
        total="715.00",
        subtotal="750.00",
        amount_due="700.00",
        lines=[
            line(
                "li_fee",
                PLATFORM,
                subtotal="500.00",
                quantity=1,
                start=days_ago(20),
                end=days_ago(20) + timedelta(days=31),
                tax="40.00",
            ),
            line(
                "li_api",
                API,
                subtotal="250.00",
                quantity=125000,
                start=days_ago(50),
                end=days_ago(20),
                adjustments=[adjustment("amount_discount", "-25.00", amount_discount="25.00")],
                adjusted="225.00",
                credits="50.00",
                amount="175.00",
            ),
        ],
    )
    paid = invoice(
        "inv_paid",
        cust,
        invoice_date=days_ago(50),
        status="paid",
        paid_at=days_ago(49),
        attempts=[attempt("pa_ok", "761.29", days_ago(49), ok=True)],
        total="761.29",
        subtotal="701.29",
        lines=[
            line(
                "li_fee2",
                PLATFORM,
                subtotal="500.00",
                quantity=1,
                start=days_ago(50),
                end=days_ago(50) + timedelta(days=31),
            ),
            line(
                "li_prorate",
                PLATFORM,
                subtotal="161.29",
                quantity=1,
                start=days_ago(60),
                end=days_ago(50),
            ),
            line(
                "li_storage",
                STORAGE,
                subtotal="40.00",
                quantity=80,
                start=days_ago(80),
                end=days_ago(50),
                adjustments=[adjustment("minimum", "60.00", minimum_amount="100.00")],
                adjusted="100.00",
            ),
        ],
    )
    draft = invoice(
        "inv_draft",
        cust,
        invoice_date=period + timedelta(days=30),
        status="draft",
        total="512.00",
        subtotal="512.00",
        lines=[
            line(
                "li_draft",
                API,
                subtotal="12.00",
                quantity=6000,
                start=period,
                end=period + timedelta(days=30),
            ),
            line(
                "li_draft_fee",
                PLATFORM,
                subtotal="500.00",
                quantity=1,
                start=period + timedelta(days=30),
                end=period + timedelta(days=61),
            ),
        ],
    )
    void = invoice(
        "inv_void",
        cust,
        invoice_date=days_ago(100),
        status="void",
        total="500.00",
        subtotal="500.00",
        lines=[
            line(
                "li_void",
                PLATFORM,
                subtotal="500.00",
                quantity=1,
                start=days_ago(100),
                end=days_ago(69),
            )
        ],
    )
    ancient = invoice(
        "inv_ancient",
        cust,
        invoice_date=days_ago(500),
        status="paid",
        paid_at=days_ago(499),
        total="500.00",
        subtotal="500.00",
        lines=[],
    )
    return FixtureOrbData(
        customer=cust,
        subscriptions=[subscription("sub_1", cust, period_start=prev + timedelta(days=30))],
        invoices=[draft, latest, paid, void, ancient],
        costs=[cost_bucket(days_ago(n), 1000 + 10 * n) for n in range(39, -1, -1)],
        credit_blocks=[
            credit_block("cb_active", Decimal("120.5"), expires=days_ago(-30)),
            credit_block("cb_expired", Decimal("80"), expires=days_ago(3)),
            credit_block("cb_empty", Decimal("0"), expires=None),
        ],
    )


def bulk_data(count: int = 130) -> FixtureOrbData:
    """Bulkco: `count` one-off invoices, more than one page of 100."""
    cust = customer("orb_bulk", "acct_bulk", name="Bulk Co")
    invoices = [
        invoice(
            f"inv_bulk_{n:03d}",
            cust,
            invoice_date=days_ago(n * 2 + 1),
            status="paid",
            paid_at=days_ago(n * 2),
            total="10.00",
            subtotal="10.00",
            source="one_off",
            subscription=None,
            lines=[
                line(
                    f"li_bulk_{n:03d}",
                    price("pr_addon", "Support add-on", kind="fixed", unit_amount="10.00"),
                    subtotal="10.00",
                    quantity=1,
                    start=days_ago(n * 2 + 1),
                    end=days_ago(n * 2 + 1),
                )
            ],
        )
        for n in range(count)
    ]
    return FixtureOrbData(customer=cust, invoices=invoices)


def fixture_world() -> FixtureWorld:
    """The hand-written Orb world used by these tests and the contract test."""
    return FixtureWorld(
        now=datetime.now(UTC),
        data={"acct_acme": acme_data(), "acct_bulk": bulk_data()},
    )


# --- fixtures ---------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeProviderServer]:
    """The Orb sandbox server over loopback HTTP."""
    async with FakeProviderServer(OrbSandboxServer(fixture_world(), api_key=API_KEY)) as server:
        yield server


@pytest_asyncio.fixture
async def orb(fake: FakeProviderServer) -> AsyncIterator[OrbBillingProvider]:
    """The production client pointed at the fake, with a fast retry policy."""
    client = OrbBillingProvider(API_KEY, base_url=fake.url + "/v1", policy=FAST)
    yield client
    await client.aclose()


async def acme(orb: OrbBillingProvider) -> Any:
    """Acme's snapshot."""
    [record] = await orb.find_customers(IdentifierKind.ACCOUNT_ID, "acct_acme")
    return await orb.get_snapshot(record)


def usd(value: str) -> Money:
    """Dollars."""
    return Money(Decimal(value), "usd")


# --- lookups ----------------------------------------------------------------------------------


async def test_lookup_by_account_id_finds_the_orb_customer(orb: OrbBillingProvider) -> None:
    """Typing our account ID finds the Orb customer with that external_customer_id."""
    [record] = await orb.find_customers(IdentifierKind.ACCOUNT_ID, "acct_acme")
    assert record.provider == "orb"
    assert record.customer_id == "orb_acme"
    assert record.account_id == "acct_acme"
    assert record.name == "Acme Corp"
    assert record.email == "billing@orb_acme.example.com"
    assert record.currency == "usd"
    # Orb's +15.00 balance is credit for the customer: -15.00 in Stripe's convention.
    assert record.balance == usd("-15.00")
    assert record.created_at is not None and record.created_at.tzinfo is not None
    assert record.dashboard_url == "https://app.withorb.com/customers/orb_acme"


async def test_lookup_by_orb_customer_id(orb: OrbBillingProvider) -> None:
    """Typing an Orb customer ID finds that customer."""
    [record] = await orb.find_customers(IdentifierKind.ORB_CUSTOMER, "orb_bulk")
    assert (record.customer_id, record.account_id) == ("orb_bulk", "acct_bulk")


async def test_unknown_customer_is_not_found_not_an_error(
    orb: OrbBillingProvider, fake: FakeProviderServer
) -> None:
    """An ID Orb does not know (404) gives no match instead of an error."""
    assert await orb.find_customers(IdentifierKind.ACCOUNT_ID, "acct_nobody") == []
    assert await orb.find_customers(IdentifierKind.ORB_CUSTOMER, "orb_nobody") == []
    assert len(fake.requests) == 2  # a 404 is not retried


async def test_base_url_without_v1_is_a_configuration_error(fake: FakeProviderServer) -> None:
    """A base URL missing `/v1` fails loudly instead of reporting "no such customer"."""
    client = OrbBillingProvider(API_KEY, base_url=fake.url, policy=FAST)
    try:
        with pytest.raises(ProviderRequestError, match="ORB_API_BASE"):
            await client.find_customers(IdentifierKind.ACCOUNT_ID, "acct_acme")
    finally:
        await client.aclose()


async def test_email_and_foreign_ids_are_not_searched(
    orb: OrbBillingProvider, fake: FakeProviderServer
) -> None:
    """Orb cannot search by email or other providers' IDs: no match and no request."""
    assert await orb.find_customers(IdentifierKind.EMAIL, "billing@orb_acme.example.com") == []
    assert await orb.find_customers(IdentifierKind.STRIPE_CUSTOMER, "cus_orb_acme") == []
    assert await orb.find_customers(IdentifierKind.METRONOME_CUSTOMER, "x") == []
    assert fake.requests == []


async def test_ids_with_reserved_characters_stay_one_path_segment() -> None:
    """An account ID with `/` or `?` is sent as one encoded path segment, never another URL."""
    seen: list[WireRequest] = []
    server = OrbSandboxServer(fixture_world(), api_key=API_KEY)

    class Recorder:
        async def handle(self, request: WireRequest) -> WireResponse:
            seen.append(request)
            return await server.handle(request)

    client = OrbBillingProvider(
        API_KEY, base_url="https://orb.test/v1", transport=RouterTransport(Recorder())
    )
    try:
        assert await client.find_customers(IdentifierKind.ACCOUNT_ID, "acct/../x?y=1") == []
    finally:
        await client.aclose()
    [request] = seen
    assert request.path == "/v1/customers/external_customer_id/acct%2F..%2Fx%3Fy%3D1"
    assert request.query == ()


# --- snapshot ---------------------------------------------------------------------------------


async def test_snapshot_subscription_plan_and_period(orb: OrbBillingProvider) -> None:
    """The status view shows the plan, its status, period and monthly fee."""
    snap = await acme(orb)
    [sub] = snap.subscriptions
    assert sub.id == "sub_1"
    assert sub.status is SubscriptionStatus.ACTIVE
    assert (sub.plan_name, sub.plan_id) == ("Scale", "plan_scale")
    assert sub.current_period_start == days_ago(5)
    assert sub.current_period_end == days_ago(-25)
    assert sub.started_at == days_ago(400)
    assert sub.recurring_amount == usd("500.00")
    assert not sub.cancel_at_period_end


async def test_snapshot_invoices_are_final_newest_first_within_the_window(
    orb: OrbBillingProvider,
) -> None:
    """Invoices of the last 400 days, newest first; the draft is the upcoming invoice."""
    snap = await acme(orb)
    assert [i.id for i in snap.invoices] == ["inv_latest", "inv_paid", "inv_void"]
    assert [i.status for i in snap.invoices] == [
        InvoiceStatus.PAST_DUE,
        InvoiceStatus.PAID,
        InvoiceStatus.VOID,
    ]
    assert snap.upcoming_invoice is not None
    assert snap.upcoming_invoice.id == "inv_draft"
    assert snap.upcoming_invoice.status is InvoiceStatus.DRAFT
    assert snap.customer.delinquent


async def test_past_due_invoice_amounts_add_up(orb: OrbBillingProvider) -> None:
    """A past-due invoice shows discount, tax, credits and balance applied, and they add up."""
    inv = (await acme(orb)).invoices[0]
    assert inv.total == usd("715.00")
    assert inv.subtotal == usd("750.00")
    assert inv.discount == usd("25.00")
    assert inv.tax == usd("40.00")
    assert inv.credits_applied == usd("50.00")
    assert inv.amount_due == usd("700.00")
    assert inv.balance_applied == usd("15.00")
    assert inv.amount_paid == usd("0")
    assert inv.number == "INV-inv_latest"
    assert inv.billing_reason == "subscription"
    assert (inv.subscription_id, inv.plan_name) == ("sub_1", "Scale")
    assert inv.created_at == days_ago(20)
    assert inv.due_at == days_ago(10)
    assert inv.attempt_count == 1
    assert inv.url == "https://invoice.withorb.com/view/inv_latest"
    assert inv.subtotal is not None and inv.discount and inv.tax and inv.credits_applied
    assert sum((ln.amount for ln in inv.lines), usd("0")) == inv.subtotal
    assert inv.total == inv.subtotal - inv.discount + inv.tax - inv.credits_applied


async def test_invoice_lines_carry_kind_metric_quantity_and_unit_price(
    orb: OrbBillingProvider,
) -> None:
    """Fee and usage lines are told apart; usage lines name their metric, quantity and price."""
    fee, api = (await acme(orb)).invoices[0].lines
    assert (fee.kind, fee.amount, fee.tax_amount) == (
        LineKind.SUBSCRIPTION,
        usd("500.00"),
        usd("40.00"),
    )
    assert fee.quantity == 1 and fee.unit_price == Decimal("500.00")
    assert fee.metric is None and not fee.proration
    assert api.kind is LineKind.USAGE
    assert api.metric == "API requests"
    assert api.quantity == Decimal(125000)
    assert api.unit_price == Decimal("0.002")
    assert api.amount == usd("250.00")
    assert api.discount_amount == usd("25.00")
    assert api.credits_applied == usd("50.00")
    assert (api.price_id, api.product_id) == ("pr_api", "item_pr_api")
    assert api.period_start == days_ago(50) and api.period_end == days_ago(20)


async def test_proration_and_minimum_true_up_lines(orb: OrbBillingProvider) -> None:
    """A partial-period fee is a proration; a minimum commitment true-up is its own line."""
    inv = (await acme(orb)).invoices[1]
    kinds = [(ln.id, ln.kind, ln.amount) for ln in inv.lines]
    assert kinds == [
        ("li_fee2", LineKind.SUBSCRIPTION, usd("500.00")),
        ("li_prorate", LineKind.PRORATION, usd("161.29")),
        ("li_storage", LineKind.USAGE, usd("40.00")),
        ("li_storage:minimum", LineKind.MINIMUM, usd("60.00")),
    ]
    assert inv.lines[1].proration
    storage = inv.lines[2]
    assert storage.metric == "Storage GB" and storage.unit_price is None  # tiered: no unit price
    assert inv.subtotal == usd("761.29")  # Orb's 701.29 plus the 60.00 true-up
    assert inv.total == usd("761.29") and inv.amount_paid == usd("761.29")
    assert inv.paid_at == days_ago(49)


async def test_payments_from_payment_attempts(orb: OrbBillingProvider) -> None:
    """Payment attempts show as payments, newest first, failed ones flagged."""
    snap = await acme(orb)
    assert [(p.id, p.status, p.amount) for p in snap.payments] == [
        ("pa_fail", PaymentStatus.FAILED, usd("700.00")),
        ("pa_ok", PaymentStatus.SUCCEEDED, usd("761.29")),
    ]
    failed = snap.payments[0]
    assert failed.invoice_id == "inv_latest" and failed.created_at == days_ago(19)
    assert failed.payment_intent_id == "pi_pa_fail"
    assert failed.refundable == usd("0")


async def test_credit_blocks_and_customer_balance(orb: OrbBillingProvider) -> None:
    """Unexpired, non-empty credit blocks and the customer balance show as balances."""
    snap = await acme(orb)
    credits = [b for b in snap.balances if b.kind == "credits"]
    assert [(b.remaining, b.granted, b.expires_at) for b in credits] == [
        (usd("120.5"), usd("500.0"), days_ago(-30))
    ]
    [balance] = [b for b in snap.balances if b.kind == "customer_balance"]
    assert balance.remaining == usd("15.00")


async def test_daily_usage_points_cover_the_window(orb: OrbBillingProvider) -> None:
    """35 days of daily cost: a total per day and one point per usage metric, oldest first."""
    snap = await acme(orb)
    totals = [u for u in snap.usage if u.metric is None]
    api = [u for u in snap.usage if u.metric == "API requests"]
    assert len(totals) == len(api) == 35
    assert {u.metric for u in snap.usage} == {None, "API requests"}  # the fixed fee is not usage
    assert totals[0].day == (TODAY - timedelta(days=34)).date()
    assert totals[-1].day == TODAY.date()
    assert [u.day for u in totals] == sorted(u.day for u in totals)
    today = api[-1]
    assert today.quantity == Decimal(1000)
    assert today.cost == usd("2.00")
    first_of_month = [u for u in totals if u.day.day == 1]
    for point in first_of_month:
        assert point.cost is not None and point.cost.amount > 500


@pytest.mark.parametrize(
    ("break_it", "what"),
    [
        (lambda d: d.invoices[0].update(currency=None), "an invoice"),
        (lambda d: d.customer.update(currency=None), "a customer balance"),
    ],
)
async def test_an_object_without_currency_is_a_malformed_response(
    break_it: Callable[[FixtureOrbData], object], what: str
) -> None:
    """An Orb invoice, or a balance, with no currency is a malformed response naming Orb, never
    silently read as USD."""
    world = fixture_world()
    break_it(world.data["acct_acme"])
    async with FakeProviderServer(OrbSandboxServer(world, api_key=API_KEY)) as server:
        client = OrbBillingProvider(API_KEY, base_url=server.url + "/v1", policy=FAST)
        try:
            with pytest.raises(ProviderBadResponse) as info:
                [record] = await client.find_customers(IdentifierKind.ACCOUNT_ID, "acct_acme")
                await client.get_snapshot(record)
        finally:
            await client.aclose()
    assert info.value.provider == "orb"
    assert info.value.message == f"Orb sent {what} with no currency"


async def test_a_new_customer_without_currency_or_balance_still_resolves() -> None:
    """A customer Orb has not given a currency yet (nothing billed, zero balance) is found, with
    no balance rather than a made-up USD one."""
    world = fixture_world()
    world.data["acct_bulk"].customer.update(currency=None, balance="0.00")
    async with FakeProviderServer(OrbSandboxServer(world, api_key=API_KEY)) as server:
        client = OrbBillingProvider(API_KEY, base_url=server.url + "/v1", policy=FAST)
        try:
            [record] = await client.find_customers(IdentifierKind.ACCOUNT_ID, "acct_bulk")
        finally:
            await client.aclose()
    assert record.currency is None and record.balance is None


async def test_snapshot_is_one_request_per_resource_with_orb_filters(
    orb: OrbBillingProvider, fake: FakeProviderServer
) -> None:
    """A snapshot is a handful of requests using Orb's own filters and page size."""
    await acme(orb)
    seen = {r.path: dict(r.query) for r in fake.requests}
    assert set(seen) == {
        "/v1/customers/external_customer_id/acct_acme",
        "/v1/subscriptions",
        "/v1/invoices",
        "/v1/customers/orb_acme/credits",
        "/v1/customers/orb_acme/costs",
    }
    assert seen["/v1/subscriptions"]["customer_id[]"] == "orb_acme"
    assert seen["/v1/invoices"]["limit"] == "100"
    since = datetime.fromisoformat(seen["/v1/invoices"]["invoice_date[gte]"])
    assert since.tzinfo is not None
    assert seen["/v1/customers/orb_acme/costs"]["view_mode"] == "periodic"
    assert seen["/v1/customers/orb_acme/credits"]["currency"] == "USD"
    statuses = [
        v for r in fake.requests if r.path == "/v1/invoices" for k, v in r.query if k == "status[]"
    ]
    assert sorted(statuses) == ["draft", "issued", "paid", "synced", "void"]


async def test_snapshot_fetches_the_customer_when_given_only_an_id(
    orb: OrbBillingProvider,
) -> None:
    """A snapshot for a bare customer ID (e.g. from the links cache) fetches a fresh customer."""
    from bot.domain.models import CustomerRecord

    bare = CustomerRecord(provider="orb", customer_id="orb_acme", account_id="acct_acme")
    snap = await orb.get_snapshot(bare)
    assert snap.customer.name == "Acme Corp"
    assert snap.customer.balance == usd("-15.00")


async def test_invoices_are_paged_with_the_cursor(
    orb: OrbBillingProvider, fake: FakeProviderServer
) -> None:
    """An account with more invoices than one page gets all of them, via `cursor`."""
    [record] = await orb.find_customers(IdentifierKind.ACCOUNT_ID, "acct_bulk")
    snap = await orb.get_snapshot(record)
    assert len(snap.invoices) == 130
    assert len({i.id for i in snap.invoices}) == 130
    assert all(i.lines[0].kind is LineKind.ONE_OFF for i in snap.invoices)
    pages = [r for r in fake.requests if r.path == "/v1/invoices"]
    assert len(pages) == 2
    assert "cursor" not in dict(pages[0].query)
    assert dict(pages[1].query)["cursor"]
    assert snap.usage == () and snap.subscriptions == ()


# --- faults -----------------------------------------------------------------------------------


async def test_rate_limit_with_retry_after_is_retried(
    orb: OrbBillingProvider, fake: FakeProviderServer
) -> None:
    """A 429 with Retry-After is waited out and the lookup succeeds."""
    fake.fail(429, retry_after="0.01", times=2, body=_error(429, "429-too-many-requests"))
    [record] = await orb.find_customers(IdentifierKind.ACCOUNT_ID, "acct_acme")
    assert record.customer_id == "orb_acme"
    assert len(fake.requests) == 3


async def test_endless_rate_limit_gives_rate_limited(
    orb: OrbBillingProvider, fake: FakeProviderServer
) -> None:
    """429s that never stop end as "rate limited" within the retry budget."""
    fake.fail(429, times=None, body=_error(429, "429-too-many-requests"))
    with pytest.raises(ProviderRateLimited):
        await orb.find_customers(IdentifierKind.ACCOUNT_ID, "acct_acme")
    assert len(fake.requests) == FAST.max_attempts


async def test_server_error_then_success(orb: OrbBillingProvider, fake: FakeProviderServer) -> None:
    """A transient 500 (Orb marks it `Transient-Error: true`) is retried."""
    fake.fail(
        500,
        headers={"Transient-Error": "true"},
        body=_error(500, "500-internal-server-error"),
        path=r"/invoices$",
    )
    snap = await acme(orb)
    assert len(snap.invoices) == 3


async def test_endless_server_errors_give_unavailable(
    orb: OrbBillingProvider, fake: FakeProviderServer
) -> None:
    """5xx that never stop make Orb "unavailable"."""
    fake.fail(500, times=None, body=_error(500, "500-internal-server-error"))
    with pytest.raises(ProviderUnavailable) as info:
        await orb.find_customers(IdentifierKind.ORB_CUSTOMER, "orb_acme")
    assert not isinstance(info.value, ProviderRateLimited)
    assert "unavailable" in info.value.message


async def test_malformed_json_is_retried(orb: OrbBillingProvider, fake: FakeProviderServer) -> None:
    """One malformed body is retried; the lookup still succeeds."""
    fake.add_fault(Fault("malformed"))
    [record] = await orb.find_customers(IdentifierKind.ACCOUNT_ID, "acct_acme")
    assert record.customer_id == "orb_acme"


async def test_persistently_malformed_json_is_a_bad_response(
    orb: OrbBillingProvider, fake: FakeProviderServer
) -> None:
    """A body that never parses ends as a bad response."""
    fake.add_fault(Fault("malformed", times=None))
    with pytest.raises(ProviderBadResponse):
        await orb.find_customers(IdentifierKind.ACCOUNT_ID, "acct_acme")


async def test_hang_times_out_as_unavailable(fake: FakeProviderServer) -> None:
    """A server that never answers ends as "timed out" within the deadline."""
    policy = RetryPolicy(
        read_timeout=0.1, max_attempts=2, backoff_base=0.01, max_retry_after=0.05, deadline=0.5
    )
    client = OrbBillingProvider(API_KEY, base_url=fake.url + "/v1", policy=policy)
    fake.add_fault(Fault("hang", times=None))
    try:
        with pytest.raises(ProviderUnavailable) as info:
            await client.find_customers(IdentifierKind.ACCOUNT_ID, "acct_acme")
        assert "timed out" in info.value.message
    finally:
        await client.aclose()


async def test_wrong_key_is_an_auth_error_not_retried(fake: FakeProviderServer) -> None:
    """A rejected API key (401) fails at once as an authentication error."""
    client = OrbBillingProvider("wrong-key", base_url=fake.url + "/v1", policy=FAST)
    try:
        with pytest.raises(ProviderAuthError):
            await client.find_customers(IdentifierKind.ACCOUNT_ID, "acct_acme")
    finally:
        await client.aclose()
    assert len(fake.requests) == 1


async def test_snapshot_fails_whole_when_a_part_fails(
    orb: OrbBillingProvider, fake: FakeProviderServer
) -> None:
    """If one part of a snapshot fails for good, the snapshot raises a provider error."""
    [record] = await orb.find_customers(IdentifierKind.ACCOUNT_ID, "acct_acme")
    fake.fail(500, times=None, path=r"/costs$", body=_error(500, "500-internal-server-error"))
    with pytest.raises(ProviderUnavailable):
        await orb.get_snapshot(record)


def test_retry_hook_follows_orb_hints() -> None:
    """Orb's `Transient-Error` marks safe 5xx; only an in-flight 409 is worth retrying."""
    import httpx

    from integrations.orb import orb_error_message, orb_retry_hook

    def answer(status: int, detail: str | None = None, **headers: str) -> httpx.Response:
        body = {"type": "x", "status": status, "title": "Conflict", "detail": detail}
        return httpx.Response(status, json=body, headers=headers)

    assert orb_retry_hook(answer(500, **{"Transient-Error": "true"})) is True
    assert orb_retry_hook(answer(502)) is None  # default rules: reads retry 5xx anyway
    assert orb_retry_hook(answer(409, "A request with this key is in progress")) is True
    assert orb_retry_hook(answer(409, "Idempotency key reused with another payload")) is None
    assert orb_retry_hook(answer(400, "bad")) is None
    assert orb_error_message(answer(400, "limit: must be between 1 and 100")) == (
        "limit: must be between 1 and 100"
    )
    assert orb_error_message(answer(409)) == "Conflict"  # no detail: the title
    not_found = httpx.Response(404, json={"type": "…#404-resource-not-found", "title": "Nope"})
    assert orb_error_message(not_found) == "Nope"
    assert "ORB_API_BASE" in orb_error_message(httpx.Response(404, text="Not Found"))
    assert orb_error_message(httpx.Response(502, text="<html>")) == "HTTP 502"


def _error(status: int, code: str) -> bytes:
    import json

    return json.dumps(
        {
            "type": f"https://docs.withorb.com/reference/error-responses#{code}",
            "status": status,
            "title": "scripted",
            "detail": None,
        }
    ).encode()


# --- the generated sandbox world ----------------------------------------------------------------


async def test_every_orb_account_of_the_sandbox_world_snapshots_consistently() -> None:
    """Every Orb-billed sandbox account resolves by account ID and its invoices add up."""
    from integrations.sandbox.world import build_world

    world = build_world(ordinary_accounts=12)
    async with FakeProviderServer(OrbSandboxServer(world)) as server:
        client = OrbBillingProvider(API_KEY, base_url=server.url + "/v1", policy=FAST)
        try:
            accounts = [a for a in world.accounts if a.billing == "orb"]
            assert accounts
            for account in accounts:
                [record] = await client.find_customers(
                    IdentifierKind.ACCOUNT_ID, account.account_id
                )
                assert record.customer_id == account.orb_customer_id
                snap = await client.get_snapshot(record)
                assert snap.invoices, account.account_id
                for inv in snap.invoices:
                    assert inv.subtotal is not None and inv.discount is not None
                    assert inv.tax is not None and inv.credits_applied is not None
                    assert sum((ln.amount for ln in inv.lines), Money.zero(inv.currency)) == (
                        inv.subtotal
                    ), inv.id
                    assert inv.total == (
                        inv.subtotal - inv.discount + inv.tax - inv.credits_applied
                    ), inv.id
                assert all(u.day <= date.today() + timedelta(days=1) for u in snap.usage)
        finally:
            await client.aclose()
    await asyncio.sleep(0)
