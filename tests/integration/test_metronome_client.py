"""The Metronome client over real HTTP against the Metronome sandbox server: lookups, snapshot
contents, pagination, and the shared retry policy's behaviour on Metronome's faults.

The world here is hand-written in Metronome's wire format (`build_fixture_world`), small enough to
state exact amounts; `test_metronome_contract.py` reuses it for the SDK and OpenAPI checks.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from bot.domain.identifiers import IdentifierKind
from bot.domain.models import (
    CustomerRecord,
    Invoice,
    InvoiceStatus,
    LineKind,
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
from integrations.metronome import MetronomeBillingProvider, account_id_of, fiat_currency
from integrations.sandbox.metronome_server import MetronomeSandboxServer
from integrations.sandbox.wire import RouterTransport, WireRequest
from integrations.sandbox.world import SandboxWorld, build_world
from tests.support.fakeserver import FakeProviderServer, Fault

# --- a small world in Metronome's wire format --------------------------------------------------

NOW = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)
API_KEY = "test-metronome-token"
_NS = uuid.UUID("6f1c2a8e-3b1d-4c55-9a57-0d7c3e0b9d11")
USD = {"id": "2714e483-4ff1-48e4-9e25-ac732e8f24f2", "name": "USD (cents)"}


def uid(name: str) -> str:
    """A stable UUID for a fixture object."""
    return str(uuid.uuid5(_NS, name))


CPU = {"id": uid("credit-type:cpu"), "name": "Compute credits"}
ACME = uid("customer:acme")
BULK = uid("customer:bulk")
P_PLATFORM = uid("product:platform")
P_API = uid("product:api")
M_REQUESTS = uid("metric:requests")
M_STORAGE = uid("metric:storage")
M_EGRESS = uid("metric:egress")
COMMIT = uid("commit:acme-prepaid")
D = Decimal


def ts(value: datetime) -> str:
    """RFC 3339 the way Metronome writes it."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def month(year: int, mon: int) -> datetime:
    """Midnight UTC on the first of a month."""
    return datetime(year, mon, 1, tzinfo=UTC)


def next_month(value: datetime) -> datetime:
    """The first of the following month."""
    return month(value.year + value.month // 12, value.month % 12 + 1)


@dataclass
class FixtureAccount:
    """The slice of `SandboxAccount` the Metronome server reads."""

    account_id: str
    metronome_customer_id: str | None
    billing: str = "metronome"


@dataclass
class FixtureMetronomeData:
    """One account's Metronome objects (the world's `MetronomeData` shape)."""

    customer: dict[str, Any]
    contracts: list[dict[str, Any]] = field(default_factory=list)
    invoices: list[dict[str, Any]] = field(default_factory=list)
    balances: list[dict[str, Any]] = field(default_factory=list)
    usage: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FixtureWorld:
    """The slice of `SandboxWorld` the Metronome server reads."""

    now: datetime
    accounts: list[FixtureAccount]
    data: dict[str, FixtureMetronomeData]

    def metronome(self, account_id: str) -> FixtureMetronomeData | None:
        """The account's Metronome data."""
        return self.data.get(account_id)


def customer_detail(
    customer_id: str, name: str, aliases: Sequence[str], external_id: str | None = None
) -> dict[str, Any]:
    """A `CustomerDetail`."""
    return {
        "id": customer_id,
        "external_id": external_id if external_id is not None else (aliases or [customer_id])[0],
        "ingest_aliases": list(aliases),
        "name": name,
        "customer_config": {"salesforce_account_id": None},
        "custom_fields": {},
        "created_at": ts(datetime(2023, 11, 2, 9, 30, tzinfo=UTC)),
        "updated_at": ts(datetime(2025, 1, 2, 9, 30, tzinfo=UTC)),
    }


def contract(
    key: str, customer_id: str, name: str, start: datetime, end: datetime | None
) -> dict[str, Any]:
    """A `Contract` with a monthly usage statement schedule."""
    terms: dict[str, Any] = {
        "name": name,
        "rate_card_id": uid(f"rate-card:{key}"),
        "starting_at": ts(start),
        "commits": [],
        "overrides": [],
        "scheduled_charges": [],
        "transitions": [],
        "created_at": ts(start - timedelta(days=3)),
        "created_by": "sales@example.com",
        "usage_statement_schedule": {"billing_anchor_date": ts(start), "frequency": "MONTHLY"},
    }
    if end is not None:
        terms["ending_before"] = ts(end)
    return {"id": uid(f"contract:{key}"), "customer_id": customer_id, "initial": terms,
            "current": dict(terms), "amendments": []}  # fmt: skip


def line(name: str, kind: str, total: Decimal | int, **extra: Any) -> dict[str, Any]:
    """An invoice line item in USD cents."""
    return {"name": name, "type": kind, "credit_type": USD, "total": total, **extra}


def acme_invoice(start: datetime, *, status: str = "FINALIZED", **extra: Any) -> dict[str, Any]:
    """One month of Acme's usage invoice: platform fee, API usage, prepaid commit drawn."""
    end = next_month(start)
    requests = 2_000_000 + start.month * 10_000
    usage_total = D(requests) * D("0.01")
    lines = [
        line("Platform fee", "subscription", 50000, quantity=1, unit_price=50000,
             product_id=P_PLATFORM, product_type="SubscriptionProductListItem",
             starting_at=ts(start), ending_before=ts(end), is_prorated=False),
        line("API calls", "usage", usage_total, quantity=requests, unit_price=D("0.01"),
             product_id=P_API, product_type="UsageProductListItem",
             starting_at=ts(start), ending_before=ts(end),
             sub_line_items=[{"name": "API requests", "quantity": requests,
                              "subtotal": usage_total, "price": D("0.01"), "custom_fields": {}}]),
        line("Prepaid commit", "applied_commit_or_credit", -20000, product_id=P_API,
             applied_commit_or_credit={"id": COMMIT, "type": "PREPAID"}, commit_id=COMMIT,
             commit_type="PrepaidCommit"),
    ]  # fmt: skip
    invoice: dict[str, Any] = {
        "id": uid(f"invoice:acme:{start:%Y-%m}"),
        "customer_id": ACME,
        "type": "USAGE",
        "status": status,
        "credit_type": USD,
        "contract_id": uid("contract:acme-2025"),
        "start_timestamp": ts(start),
        "end_timestamp": ts(end),
        "net_payment_terms_days": 30,
        "line_items": lines,
        "invoice_adjustments": [],
    }
    if status != "DRAFT":
        invoice["issued_at"] = ts(end + timedelta(hours=2))
    invoice.update(extra)
    _retotal(invoice)
    return invoice


def _retotal(invoice: dict[str, Any]) -> None:
    """Metronome's totals: lines plus adjustments, postpaid commit applications excluded."""
    lines = [
        item for item in invoice["line_items"]
        if (item.get("applied_commit_or_credit") or {}).get("type") != "POSTPAID"
    ]  # fmt: skip
    charges = sum((D(item["total"]) for item in lines if D(item["total"]) > 0), D(0))
    total = sum((D(item["total"]) for item in lines), D(0))
    total += sum((D(adj["total"]) for adj in invoice["invoice_adjustments"]), D(0))
    invoice["subtotal"] = charges
    invoice["total"] = total


def build_acme() -> FixtureMetronomeData:
    """Acme: an active contract, 13+ months of invoices with every line kind, commits, usage."""
    invoices = []
    start = month(2024, 1)
    while start < month(2025, 6):
        extra: dict[str, Any] = {}
        if start == month(2024, 12):
            extra["status"] = "VOID"
        invoice = acme_invoice(start, **extra)
        if start == month(2025, 1):
            # A postpaid commit application: shown, but not part of Metronome's total.
            invoice["line_items"].append(
                line("Postpaid commit", "applied_commit_or_credit", -3000, product_id=P_API,
                     applied_commit_or_credit={"id": uid("commit:postpaid"), "type": "POSTPAID"})
            )  # fmt: skip
        if start == month(2025, 2):
            invoice["invoice_adjustments"] = [
                {"name": "Promotional credit", "total": -1000, "credit_type": USD,
                 "credit_grant_id": uid("grant:promo")}
            ]  # fmt: skip
        if start == month(2025, 3):
            # Mid-month upgrade: a prorated fee for the rest of March, fractional cents.
            invoice["amendment_id"] = uid("amendment:pro")
            invoice["line_items"].append(
                line("Platform fee (Pro upgrade)", "subscription", D("12903.23"),
                     quantity=1, unit_price=D("12903.23"), product_id=P_PLATFORM,
                     product_type="SubscriptionProductListItem", is_prorated=True,
                     starting_at=ts(datetime(2025, 3, 19, tzinfo=UTC)),
                     ending_before=ts(month(2025, 4)))
            )  # fmt: skip
        if start == month(2025, 4):
            invoice["invoice_adjustments"] = [
                {"name": "Monthly minimum ($1,000) true-up", "total": 5000, "credit_type": USD}
            ]
            invoice["line_items"].append(
                line("Loyalty discount", "usage", -2500, product_id=P_API,
                     discount_id=uid("discount:loyalty"))
            )  # fmt: skip
        if start == month(2025, 5):
            invoice["external_invoice"] = {
                "billing_provider_type": "stripe",
                "invoice_id": "in_1PaidAcmeMay",
                "external_status": "PAID",
                "pdf_url": "https://pay.stripe.com/invoice/in_1PaidAcmeMay/pdf",
            }
        _retotal(invoice)
        invoices.append(invoice)
        start = next_month(start)
    # The current month so far: 1,234,567 requests at 0.01¢ is 12,345.67¢ (fractional cents).
    draft = acme_invoice(month(2025, 6), status="DRAFT")
    draft["line_items"][1].update(quantity=1_234_567, total=D("12345.67"))
    draft["line_items"] = draft["line_items"][:2]
    _retotal(draft)
    invoices.append(draft)
    # Commit purchases billed in a custom pricing unit are not money: the client leaves them out.
    invoices.append({
        "id": uid("invoice:acme:cpu"), "customer_id": ACME, "type": "SCHEDULED",
        "status": "FINALIZED", "credit_type": CPU, "total": 400, "subtotal": 400,
        "issued_at": ts(datetime(2025, 6, 1, tzinfo=UTC)),
        "start_timestamp": ts(datetime(2025, 6, 1, tzinfo=UTC)),
        "end_timestamp": ts(datetime(2025, 6, 2, tzinfo=UTC)),
        "line_items": [{"name": "Compute pack", "type": "scheduled", "credit_type": CPU,
                        "total": 400}],
    })  # fmt: skip
    invoices.sort(key=lambda inv: inv.get("issued_at") or inv["end_timestamp"], reverse=True)

    def schedule(amount: Decimal | int, start: datetime, end: datetime, ct: Any = USD) -> Any:
        return {"credit_type": ct, "schedule_items": [
            {"id": uid(f"segment:{amount}:{start}"), "amount": amount,
             "starting_at": ts(start), "ending_before": ts(end)}]}  # fmt: skip

    balances = [
        {"id": COMMIT, "type": "PREPAID", "name": "2025 prepaid commit",
         "product": {"id": uid("product:commit"), "name": "Prepaid commit"},
         "access_schedule": schedule(1_000_000, month(2025, 1), month(2026, 1)),
         "balance": D("250000.5"), "created_at": ts(month(2025, 1)),
         "contract": {"id": uid("contract:acme-2025")},
         "ledger": [{"type": "PREPAID_COMMIT_SEGMENT_START", "amount": 1_000_000,
                     "segment_id": uid("segment:commit"), "timestamp": ts(month(2025, 1))}]},
        {"id": uid("credit:onboarding"), "type": "CREDIT",
         "product": {"id": uid("product:credit"), "name": "Onboarding credit"},
         "access_schedule": schedule(50000, month(2025, 1), month(2025, 7)), "balance": 0},
        {"id": uid("credit:cpu"), "type": "CREDIT", "name": "Compute credits",
         "product": {"id": uid("product:cpu"), "name": "Compute"},
         "access_schedule": schedule(900, month(2025, 1), month(2026, 1), CPU), "balance": 300},
        {"id": uid("commit:archived"), "type": "PREPAID", "name": "Old commit",
         "product": {"id": uid("product:old"), "name": "Old"}, "created_at": ts(month(2024, 1)),
         "archived_at": ts(month(2024, 6)), "balance": 100,
         "access_schedule": schedule(100, month(2024, 1), month(2025, 1))},
    ]  # fmt: skip
    usage = []
    day = datetime(2025, 4, 1, tzinfo=UTC)
    while day <= NOW:
        nxt = day + timedelta(days=1)
        usage.append({"customer_id": ACME, "billable_metric_id": M_REQUESTS,
                      "billable_metric_name": "API requests", "start_timestamp": ts(day),
                      "end_timestamp": ts(nxt), "value": 60_000 + day.day * 10})  # fmt: skip
        storage = None if day.date() == date(2025, 6, 1) else D("12.5")
        usage.append({"customer_id": ACME, "billable_metric_id": M_STORAGE,
                      "billable_metric_name": "Storage GB", "start_timestamp": ts(day),
                      "end_timestamp": ts(nxt), "value": storage})  # fmt: skip
        day = nxt
    return FixtureMetronomeData(
        customer=customer_detail(ACME, "Acme Corp", ["acct_acme", "billing@acme.io"]),
        contracts=[
            contract("acme-2025", ACME, "Acme Enterprise 2025", month(2025, 1), month(2026, 1)),
            contract("acme-2024", ACME, "Acme Starter", month(2024, 1), month(2025, 1)),
        ],
        invoices=invoices,
        balances=balances,
        usage=usage,
    )


def build_bulk() -> FixtureMetronomeData:
    """Bulk Co: more contracts, invoices, balances and usage than one page of each holds."""
    base = NOW.replace(hour=0) - timedelta(days=390)
    invoices = []
    for i in range(130):
        start = base + timedelta(days=3 * i)
        invoices.append({
            "id": uid(f"invoice:bulk:{i}"), "customer_id": BULK, "type": "SCHEDULED",
            "status": "FINALIZED", "credit_type": USD, "total": 1000 + i, "subtotal": 1000 + i,
            "issued_at": ts(start + timedelta(days=3)), "start_timestamp": ts(start),
            "end_timestamp": ts(start + timedelta(days=3)),
            "line_items": [line("Support plan", "scheduled", 1000 + i, quantity=1,
                                unit_price=1000 + i, product_type="FixedProductListItem")],
        })  # fmt: skip
    invoices.reverse()
    contracts = [
        contract(f"bulk-{i}", BULK, f"Bulk term {i}", month(2023, 1) + timedelta(days=10 * i),
                 month(2023, 1) + timedelta(days=10 * i + 10))
        for i in range(21)
    ] + [contract("bulk-now", BULK, "Bulk current", month(2025, 1), None)]  # fmt: skip
    balances = [
        {"id": uid(f"credit:bulk:{i}"), "type": "CREDIT", "name": f"Credit {i}",
         "product": {"id": uid("product:bulk-credit"), "name": "Credit"},
         "access_schedule": {"credit_type": USD, "schedule_items": [
             {"id": uid(f"segment:bulk:{i}"), "amount": 1000, "starting_at": ts(month(2025, 1)),
              "ending_before": ts(month(2026, 1))}]},
         "balance": 1000 - i}
        for i in range(30)
    ]  # fmt: skip
    usage = []
    day = NOW.replace(hour=0) - timedelta(days=39)
    while day <= NOW:
        for metric_id, name in ((M_REQUESTS, "Requests"), (M_STORAGE, "Storage"),
                                (M_EGRESS, "Egress")):  # fmt: skip
            usage.append({"customer_id": BULK, "billable_metric_id": metric_id,
                          "billable_metric_name": name, "start_timestamp": ts(day),
                          "end_timestamp": ts(day + timedelta(days=1)), "value": 5})  # fmt: skip
        day += timedelta(days=1)
    return FixtureMetronomeData(
        customer=customer_detail(BULK, "Bulk Co", ["acct_bulk"]),
        contracts=contracts,
        invoices=invoices,
        balances=balances,
        usage=usage,
    )


def build_fixture_world() -> FixtureWorld:
    """Acme, Bulk Co, and an account billed elsewhere."""
    return FixtureWorld(
        now=NOW,
        accounts=[
            FixtureAccount("acct_acme", ACME),
            FixtureAccount("acct_bulk", BULK),
            FixtureAccount("acct_stripe_only", None, billing="stripe"),
        ],
        data={"acct_acme": build_acme(), "acct_bulk": build_bulk()},
    )


# --- fixtures ------------------------------------------------------------------------------------

FAST = RetryPolicy(
    connect_timeout=0.5, read_timeout=0.3, max_attempts=3, backoff_base=0.01, backoff_max=0.05,
    max_retry_after=0.05, deadline=2.0,
)  # fmt: skip


@pytest.fixture
async def server() -> AsyncIterator[FakeProviderServer]:
    """The Metronome sandbox server on 127.0.0.1 (small usage pages, so paging is exercised)."""
    router = MetronomeSandboxServer(build_fixture_world(), api_key=API_KEY, usage_page_size=50)
    async with FakeProviderServer(router) as fake:
        yield fake


@pytest.fixture
async def client(server: FakeProviderServer) -> AsyncIterator[MetronomeBillingProvider]:
    """The production client pointed at the fake server, on the fixture world's clock."""
    provider = MetronomeBillingProvider(
        API_KEY, base_url=server.url, policy=FAST, clock=lambda: NOW
    )
    yield provider
    await provider.aclose()


async def acme(client: MetronomeBillingProvider) -> CustomerRecord:
    """Acme's customer record, looked up by its Metronome ID."""
    [record] = await client.find_customers(IdentifierKind.METRONOME_CUSTOMER, ACME)
    return record


def usd(value: str) -> Money:
    """Dollars."""
    return Money(D(value), "usd")


def assert_reconciles(invoice: Invoice) -> None:
    """The invariants every mapped invoice keeps."""
    zero = Money.zero(invoice.currency)
    assert sum((ln.amount for ln in invoice.lines), zero) == invoice.subtotal
    expected = (invoice.subtotal or zero) - (invoice.discount or zero) + (invoice.tax or zero)
    expected = expected - (invoice.credits_applied or zero)
    assert invoice.total == expected, invoice.id


# --- lookups -------------------------------------------------------------------------------------


async def test_lookup_by_metronome_id_returns_the_customer(
    client: MetronomeBillingProvider,
) -> None:
    """A Metronome customer ID finds the customer with its name, account ID and email."""
    record = await acme(client)
    assert record.provider == "metronome"
    assert record.customer_id == ACME
    assert record.account_id == "acct_acme"
    assert record.name == "Acme Corp"
    assert record.email == "billing@acme.io"
    assert record.created_at == datetime(2023, 11, 2, 9, 30, tzinfo=UTC)
    assert record.dashboard_url is not None and ACME in record.dashboard_url


async def test_lookup_by_account_id_and_email_uses_ingest_aliases(
    client: MetronomeBillingProvider, server: FakeProviderServer
) -> None:
    """Our account ID and an email both find the customer through its ingest aliases."""
    by_account = await client.find_customers(IdentifierKind.ACCOUNT_ID, "acct_acme")
    by_email = await client.find_customers(IdentifierKind.EMAIL, "Billing@Acme.io")
    assert [r.customer_id for r in by_account] == [ACME]
    assert [r.customer_id for r in by_email] == [ACME]
    aliases = [dict(s.query).get("ingest_alias") for s in server.requests]
    assert aliases == ["acct_acme", "Billing@Acme.io", "billing@acme.io"]


async def test_lookup_misses_return_empty(
    client: MetronomeBillingProvider, server: FakeProviderServer
) -> None:
    """Unknown IDs and aliases, non-UUIDs and kinds Metronome can't search give no customers."""
    assert await client.find_customers(IdentifierKind.METRONOME_CUSTOMER, uid("nobody")) == []
    assert await client.find_customers(IdentifierKind.ACCOUNT_ID, "acct_nobody") == []
    assert await client.find_customers(IdentifierKind.METRONOME_CUSTOMER, "not-a-uuid") == []
    assert await client.find_customers(IdentifierKind.STRIPE_CUSTOMER, "cus_123") == []
    assert await client.find_customers(IdentifierKind.ORB_CUSTOMER, "orb_1") == []
    assert len(server.requests) == 2  # the non-UUID and the other kinds cost no call


async def test_lookup_treats_a_400_for_the_id_as_not_found(
    client: MetronomeBillingProvider, server: FakeProviderServer
) -> None:
    """Metronome's 400 for an ID it cannot parse reads as "no such customer", not an error."""
    server.fail(400, body=b'{"message": "customer_id must be a valid UUID"}')
    assert await client.find_customers(IdentifierKind.METRONOME_CUSTOMER, ACME) == []


def test_account_id_rule_prefers_external_id_then_non_email_alias() -> None:
    """Our account ID is the external ID, else the first alias, skipping emails and the UUID."""
    assert account_id_of({"id": ACME, "external_id": "acct_1", "ingest_aliases": ["x"]}) == "acct_1"
    assert account_id_of({"id": ACME, "external_id": "a@b.io",
                          "ingest_aliases": ["a@b.io", "acct_2"]}) == "acct_2"  # fmt: skip
    assert account_id_of({"id": ACME, "external_id": ACME, "ingest_aliases": [ACME]}) is None
    assert account_id_of({"id": ACME, "external_id": "", "ingest_aliases": ["a@b.io"]}) is None


def test_fiat_credit_types_are_recognised_by_name() -> None:
    """ "USD (cents)" is US dollars; custom pricing units are not money."""
    assert fiat_currency(USD) == "usd"
    assert fiat_currency({"id": "x", "name": "EUR (cents)"}) == "eur"
    assert fiat_currency(CPU) is None
    assert fiat_currency(None) is None


# --- snapshot ------------------------------------------------------------------------------------


async def snapshot_of(client: MetronomeBillingProvider) -> ProviderSnapshot:
    """Acme's snapshot."""
    return await client.get_snapshot(await acme(client))


async def test_snapshot_contracts_become_subscriptions(client: MetronomeBillingProvider) -> None:
    """Contracts show as subscriptions with their name, status and the current statement period."""
    snap = await snapshot_of(client)
    subs = {s.plan_name: s for s in snap.subscriptions}
    current = subs["Acme Enterprise 2025"]
    assert current.status is SubscriptionStatus.ACTIVE
    assert current.id == uid("contract:acme-2025")
    assert current.started_at == month(2025, 1)
    assert current.ends_at == month(2026, 1)
    assert (current.current_period_start, current.current_period_end) == (
        month(2025, 6),
        month(2025, 7),
    )
    assert subs["Acme Starter"].status is SubscriptionStatus.ENDED
    assert subs["Acme Starter"].current_period_start is None


async def test_snapshot_invoices_have_exact_amounts_and_statuses(
    client: MetronomeBillingProvider,
) -> None:
    """A year of invoices, newest first, in dollars from cents, with Metronome's statuses."""
    snap = await snapshot_of(client)
    # Billing periods from June 2024 (400 days back) to May 2025; the custom-unit invoice is
    # not money and the draft is the upcoming invoice.
    starts = [inv.period_start for inv in snap.invoices]
    assert starts == [month(2025, m) for m in range(5, 0, -1)] + [
        month(2024, m) for m in range(12, 5, -1)
    ]
    by_month = {inv.period_start: inv for inv in snap.invoices}
    may = by_month[month(2025, 5)]
    assert may.status is InvoiceStatus.PAID
    assert may.total == usd("505.00")  # $500 fee + 2,050,000 × $0.0001 − $200 commit
    assert may.subtotal == usd("705.00")
    assert may.credits_applied == usd("200.00")
    assert may.amount_paid == usd("505.00")
    assert may.url == "https://pay.stripe.com/invoice/in_1PaidAcmeMay/pdf"
    assert may.created_at == datetime(2025, 6, 1, 2, 0, tzinfo=UTC)
    assert may.due_at == datetime(2025, 7, 1, 2, 0, tzinfo=UTC)
    assert may.plan_name == "Acme Enterprise 2025"
    assert may.subscription_id == uid("contract:acme-2025")
    assert may.billing_reason == "usage"
    assert by_month[month(2025, 4)].status is InvoiceStatus.OPEN
    assert by_month[month(2024, 12)].status is InvoiceStatus.VOID
    for inv in snap.invoices:
        assert inv.currency == "usd"
        assert inv.created_at is not None and inv.created_at.tzinfo is UTC
        assert_reconciles(inv)


async def test_snapshot_invoice_lines_carry_kinds_metrics_and_credits(
    client: MetronomeBillingProvider,
) -> None:
    """Lines carry kind, metric, quantity, unit price, and the credits and discounts on them."""
    snap = await snapshot_of(client)
    by_month = {inv.period_start: inv for inv in snap.invoices}
    may = by_month[month(2025, 5)]
    fee, api = may.lines
    assert (fee.kind, fee.amount, fee.quantity) == (LineKind.SUBSCRIPTION, usd("500"), D(1))
    assert api.kind is LineKind.USAGE
    assert api.metric == "API requests"
    assert api.quantity == D(2_050_000)
    assert api.unit_price == D("0.0001")
    assert api.amount == usd("205.00")
    assert api.credits_applied == usd("200")
    assert api.product_id == P_API
    assert api.period_start == month(2025, 5) and api.period_end == month(2025, 6)

    march = by_month[month(2025, 3)]
    proration = next(ln for ln in march.lines if ln.proration)
    assert proration.kind is LineKind.PRORATION
    assert proration.amount == Money(D("129.0323"), "usd")  # fractional cents kept
    assert march.billing_reason == "contract_amendment"

    april = by_month[month(2025, 4)]
    minimum = next(ln for ln in april.lines if ln.kind is LineKind.MINIMUM)
    assert minimum.amount == usd("50")
    assert april.discount == usd("25")
    assert next(ln for ln in april.lines if ln.kind is LineKind.USAGE).discount_amount == usd("25")

    assert by_month[month(2025, 2)].credits_applied == usd("210")  # commit + promotional grant
    january = by_month[month(2025, 1)]
    assert january.credits_applied == usd("200")  # the postpaid commit is not in the total
    assert all(ln.kind is not LineKind.OTHER for ln in january.lines)


async def test_snapshot_draft_invoice_is_the_upcoming_one(
    client: MetronomeBillingProvider,
) -> None:
    """The month-to-date DRAFT invoice is the upcoming invoice, fractional cents and all."""
    snap = await snapshot_of(client)
    upcoming = snap.upcoming_invoice
    assert upcoming is not None
    assert upcoming.status is InvoiceStatus.DRAFT
    assert upcoming.total == Money(D("623.4567"), "usd")
    assert upcoming.period_start == month(2025, 6)
    assert upcoming.amount_due is None
    assert_reconciles(upcoming)
    assert all(inv.status is not InvoiceStatus.DRAFT for inv in snap.invoices)


async def test_snapshot_balances_and_usage(client: MetronomeBillingProvider) -> None:
    """Commit and credit balances show remaining and granted dollars; usage is daily per metric."""
    snap = await snapshot_of(client)
    commit, credit = snap.balances  # the custom-unit credit and the archived commit are left out
    assert (commit.kind, commit.name) == ("commit", "2025 prepaid commit")
    assert commit.remaining == Money(D("2500.005"), "usd")
    assert commit.granted == usd("10000")
    assert commit.expires_at == month(2026, 1)
    assert (credit.kind, credit.name, credit.remaining) == (
        "credits",
        "Onboarding credit",
        usd("0"),
    )
    assert credit.granted == usd("500")

    assert len(snap.usage) == 72  # 35 days before today and today so far, × 2 metrics
    days = sorted({p.day for p in snap.usage})
    assert days[0] == date(2025, 5, 11) and days[-1] == date(2025, 6, 15)
    assert [p.day for p in snap.usage] == sorted(p.day for p in snap.usage)
    june_first = {p.metric: p.quantity for p in snap.usage if p.day == date(2025, 6, 1)}
    assert june_first == {"API requests": D(60_010), "Storage GB": D(0)}
    assert {p.quantity for p in snap.usage if p.metric == "Storage GB"} == {D("12.5"), D(0)}
    assert snap.payments == () and snap.refunds == () and snap.disputes == ()


async def test_a_balance_without_credit_type_is_a_malformed_response() -> None:
    """A commit whose schedule states no credit type is a malformed response naming Metronome:
    its balance is not guessed to be USD cents."""
    world = build_fixture_world()
    del world.data["acct_acme"].balances[0]["access_schedule"]["credit_type"]
    async with FakeProviderServer(MetronomeSandboxServer(world, api_key=API_KEY)) as fake:
        provider = MetronomeBillingProvider(
            API_KEY, base_url=fake.url, policy=FAST, clock=lambda: NOW
        )
        try:
            [record] = await provider.find_customers(IdentifierKind.METRONOME_CUSTOMER, ACME)
            with pytest.raises(ProviderBadResponse) as info:
                await provider.get_snapshot(record)
        finally:
            await provider.aclose()
    assert info.value.provider == "metronome"
    assert info.value.message == "Metronome sent a balance with no credit type"


async def test_snapshot_requests_use_metronome_shapes(
    client: MetronomeBillingProvider, server: FakeProviderServer
) -> None:
    """Reads go out as Metronome expects: Bearer auth, JSON POST reads, midnight-aligned windows."""
    await snapshot_of(client)
    seen = {(s.method, s.path): s for s in server.requests}
    assert all(s.headers["authorization"] == f"Bearer {API_KEY}" for s in server.requests)
    usage = json.loads(seen[("POST", "/v1/usage")].body)
    assert usage == {"starting_on": "2025-05-11T00:00:00Z", "ending_before": "2025-06-16T00:00:00Z",
                     "window_size": "DAY", "customer_ids": [ACME]}  # fmt: skip
    assert json.loads(seen[("POST", "/v1/contracts/list")].body) == {"customer_id": ACME}
    balances = json.loads(seen[("POST", "/v1/contracts/customerBalances/list")].body)
    assert balances["include_balance"] is True
    invoices = dict(seen[("GET", f"/v1/customers/{ACME}/invoices")].query)
    assert invoices["sort"] == "date_desc" and invoices["limit"] == "100"
    assert invoices["starting_on"] == "2024-05-11T00:00:00Z"


async def test_snapshot_follows_every_cursor(
    client: MetronomeBillingProvider, server: FakeProviderServer
) -> None:
    """Customers with more than a page of anything get all of it, each list paged its own way."""
    [bulk] = await client.find_customers(IdentifierKind.ACCOUNT_ID, "acct_bulk")
    snap = await client.get_snapshot(bulk)
    assert len(snap.invoices) == 130
    assert [inv.total.amount for inv in snap.invoices] == [D(1129 - i) / 100 for i in range(130)]
    assert len(snap.balances) == 30
    assert len(snap.subscriptions) == 22
    assert [s.status for s in snap.subscriptions].count(SubscriptionStatus.ACTIVE) == 1
    assert len(snap.usage) == 36 * 3

    invoice_pages = [s for s in server.requests if s.path.endswith("/invoices")]
    assert len(invoice_pages) == 2 and "next_page" in dict(invoice_pages[1].query)
    balance_pages = [s for s in server.requests if "customerBalances" in s.path]
    assert len(balance_pages) == 2 and "next_page" in json.loads(balance_pages[1].body)
    contract_pages = [s for s in server.requests if s.path == "/v1/contracts/list"]
    assert len(contract_pages) == 2 and "cursor" in json.loads(contract_pages[1].body)
    usage_pages = [s for s in server.requests if s.path == "/v1/usage"]
    assert len(usage_pages) == 3  # 108 points at 50 a page
    assert all("next_page" in dict(s.query) for s in usage_pages[1:])
    assert all("next_page" not in json.loads(s.body) for s in usage_pages)


async def test_long_usage_history_is_fetched_in_concurrent_windows(
    server: FakeProviderServer,
) -> None:
    """A long usage window (anomaly baselines) is fetched as ≤36-day requests side by side."""
    provider = MetronomeBillingProvider(
        API_KEY, base_url=server.url, policy=FAST, clock=lambda: NOW, usage_days=75
    )
    try:
        [record] = await provider.find_customers(IdentifierKind.ACCOUNT_ID, "acct_acme")
        snap = await provider.get_snapshot(record)
    finally:
        await provider.aclose()
    windows = [json.loads(s.body) for s in server.requests if s.path == "/v1/usage"]
    bounds = sorted({(w["starting_on"], w["ending_before"]) for w in windows})
    assert bounds[0][0] == "2025-04-01T00:00:00Z" and bounds[-1][1] == "2025-06-16T00:00:00Z"
    assert len(bounds) == 3
    assert len(snap.usage) == 76 * 2


async def test_in_process_router_transport_serves_the_same_answers() -> None:
    """The sandbox wiring (no sockets) gives the same snapshot as real HTTP."""
    router = MetronomeSandboxServer(build_fixture_world())
    provider = MetronomeBillingProvider(
        "anything", base_url="https://api.metronome.com", transport=RouterTransport(router),
        policy=FAST, clock=lambda: NOW,
    )  # fmt: skip
    try:
        [record] = await provider.find_customers(IdentifierKind.EMAIL, "billing@acme.io")
        snap = await provider.get_snapshot(record)
    finally:
        await provider.aclose()
    assert len(snap.invoices) == 12 and snap.upcoming_invoice is not None


# --- faults --------------------------------------------------------------------------------------


async def test_rate_limit_with_retry_after_is_retried(
    client: MetronomeBillingProvider, server: FakeProviderServer
) -> None:
    """A 429 with Retry-After is waited out and the lookup succeeds."""
    server.fail(429, retry_after="0.01", body=b'{"message": "Too many requests"}')
    assert [r.customer_id for r in await client.find_customers(
        IdentifierKind.METRONOME_CUSTOMER, ACME)] == [ACME]  # fmt: skip
    assert len(server.requests) == 2


async def test_rate_limit_forever_gives_rate_limited(
    client: MetronomeBillingProvider, server: FakeProviderServer
) -> None:
    """Endless 429s end in ProviderRateLimited after the retry budget."""
    server.fail(429, times=None, body=b'{"message": "Too many requests"}')
    with pytest.raises(ProviderRateLimited):
        await client.find_customers(IdentifierKind.ACCOUNT_ID, "acct_acme")
    assert len(server.requests) == FAST.max_attempts


async def test_server_error_then_success(
    client: MetronomeBillingProvider, server: FakeProviderServer
) -> None:
    """One 500 on a POST read is retried (reads are idempotent) and the snapshot completes."""
    record = await acme(client)
    server.fail(500, path="/v1/contracts/list")
    snap = await client.get_snapshot(record)
    assert len(snap.subscriptions) == 2
    assert [s.path for s in server.requests].count("/v1/contracts/list") == 2


async def test_server_error_forever_gives_unavailable(
    client: MetronomeBillingProvider, server: FakeProviderServer
) -> None:
    """A part of the snapshot that keeps failing makes Metronome unavailable as a whole."""
    record = await acme(client)
    server.fail(503, times=None, path="/v1/usage")
    with pytest.raises(ProviderUnavailable) as caught:
        await client.get_snapshot(record)
    assert not isinstance(caught.value, ProviderRateLimited)
    assert caught.value.provider == "metronome"


async def test_malformed_json_is_retried_then_reported(
    client: MetronomeBillingProvider, server: FakeProviderServer
) -> None:
    """A garbled body is retried; if it stays garbled the error says so."""
    server.add_fault(Fault("malformed"))
    assert len(await client.find_customers(IdentifierKind.ACCOUNT_ID, "acct_acme")) == 1
    server.add_fault(Fault("malformed", times=None))
    with pytest.raises(ProviderBadResponse):
        await client.find_customers(IdentifierKind.ACCOUNT_ID, "acct_acme")


async def test_hang_times_out_as_unavailable(
    client: MetronomeBillingProvider, server: FakeProviderServer
) -> None:
    """A server that never answers ends in "timed out" within the deadline."""
    server.add_fault(Fault("hang", times=None))
    with pytest.raises(ProviderUnavailable, match="timed out"):
        await client.find_customers(IdentifierKind.METRONOME_CUSTOMER, ACME)


async def test_wrong_key_is_an_auth_error_and_not_retried(server: FakeProviderServer) -> None:
    """A rejected token is reported as an authentication failure after one request."""
    provider = MetronomeBillingProvider("wrong", base_url=server.url, policy=FAST)
    try:
        with pytest.raises(ProviderAuthError):
            await provider.find_customers(IdentifierKind.ACCOUNT_ID, "acct_acme")
    finally:
        await provider.aclose()
    assert len(server.requests) == 1


async def test_conflict_is_never_retried(
    client: MetronomeBillingProvider, server: FakeProviderServer
) -> None:
    """A 409 (reused uniqueness or idempotency key) is final, with Metronome's message."""
    record = await acme(client)
    server.fail(409, times=None, path="/v1/contracts/list",
                body=b'{"message": "This uniqueness key has already been used"}')  # fmt: skip
    with pytest.raises(ProviderRequestError, match="uniqueness key") as caught:
        await client.get_snapshot(record)
    assert caught.value.status == 409
    assert [s.path for s in server.requests].count("/v1/contracts/list") == 1


# --- the sandbox server's own edges --------------------------------------------------------------


async def test_server_speaks_metronome_errors() -> None:
    """The sandbox answers bad auth, unknown objects and bad input with Metronome's errors."""
    router = MetronomeSandboxServer(build_fixture_world(), api_key=API_KEY)
    auth = {"authorization": f"Bearer {API_KEY}"}

    async def status(
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        headers: Mapping[str, str] = auth,
    ) -> tuple[int, Any]:
        answer = await router.handle(WireRequest(
            method, path, tuple((query or {}).items()), dict(headers),
            json.dumps(body).encode() if body is not None else b""))  # fmt: skip
        return answer.status, json.loads(answer.body)

    assert await status("GET", f"/v1/customers/{ACME}", headers={}) == (
        401, {"message": "Unauthorized"})  # fmt: skip
    assert (await status("GET", f"/v1/customers/{uid('x')}"))[0] == 404
    assert (await status("GET", "/v1/customers/not-a-uuid"))[0] == 400
    assert (await status("GET", "/v1/nowhere"))[0] == 404
    assert (await status("GET", "/v1/customers", {"next_page": "garbage"}))[0] == 400
    assert (await status("GET", "/v1/customers", {"limit": "101"}))[0] == 400
    usage = {"starting_on": "2025-06-01T05:00:00Z", "ending_before": "2025-06-02T00:00:00Z",
             "window_size": "DAY"}  # fmt: skip
    code, body = await status("POST", "/v1/usage", body=usage)
    assert code == 400 and "midnight" in body["message"]
    code, body = await status("POST", "/v1/contracts/list", body={})
    assert code == 400 and set(body) == {"message"}


async def test_server_filters_and_aggregates() -> None:
    """Invoice status and period filters, and a whole-range usage aggregate, as Metronome does."""
    router = MetronomeSandboxServer(build_fixture_world())
    auth = {"authorization": "Bearer x"}
    drafts = await router.handle(WireRequest(
        "GET", f"/v1/customers/{ACME}/invoices", (("status", "DRAFT"),), auth))  # fmt: skip
    assert [inv["status"] for inv in json.loads(drafts.body)["data"]] == ["DRAFT"]
    body = {"starting_on": "2025-06-01T00:00:00Z", "ending_before": "2025-06-03T00:00:00Z",
            "window_size": "NONE", "customer_ids": [ACME]}  # fmt: skip
    answer = await router.handle(
        WireRequest("POST", "/v1/usage", (), auth, json.dumps(body).encode())
    )
    totals = {i["billable_metric_name"]: i["value"] for i in json.loads(answer.body)["data"]}
    assert totals == {"API requests": 120_030, "Storage GB": 12.5}


# --- against the sandbox world -------------------------------------------------------------------


@pytest.fixture(scope="module")
def world() -> SandboxWorld:
    """The real sandbox world, small."""
    return build_world(ordinary_accounts=20)


async def test_every_metronome_account_of_the_world_maps_cleanly(world: SandboxWorld) -> None:
    """Every sandbox Metronome account resolves by each identifier to a consistent snapshot."""
    accounts = [a for a in world.accounts if a.metronome_customer_id]
    assert accounts
    async with FakeProviderServer(MetronomeSandboxServer(world, api_key=API_KEY)) as fake:
        provider = MetronomeBillingProvider(
            API_KEY, base_url=fake.url, policy=FAST, clock=lambda: world.now
        )
        try:
            for account in accounts:
                assert account.metronome_customer_id is not None
                [record] = await provider.find_customers(
                    IdentifierKind.ACCOUNT_ID, account.account_id
                )
                assert (record.customer_id, record.account_id) == (
                    account.metronome_customer_id,
                    account.account_id,
                )
                assert record.email == account.email and record.name == account.name
                by_email = await provider.find_customers(IdentifierKind.EMAIL, account.email)
                by_id = await provider.find_customers(
                    IdentifierKind.METRONOME_CUSTOMER, account.metronome_customer_id
                )
                assert [r.customer_id for r in by_email + by_id] == [record.customer_id] * 2

                snap = await provider.get_snapshot(record)
                assert [s.status for s in snap.subscriptions] == [SubscriptionStatus.ACTIVE]
                assert snap.subscriptions[0].current_period_start is not None
                assert len(snap.invoices) >= 12
                for invoice in (*snap.invoices, *filter(None, [snap.upcoming_invoice])):
                    assert_reconciles(invoice)
                    assert not any(ln.id.endswith(":unreconciled") for ln in invoice.lines)
                metrics = {p.metric for p in snap.usage}
                assert metrics and len(snap.usage) == 35 * len(metrics)
                # The world's "now" is midnight: today has no usage yet.
                assert snap.usage[-1].day == (world.now - timedelta(days=1)).date()
                _check_story(account.story, snap)
        finally:
            await provider.aclose()


def _check_story(story: str | None, snap: ProviderSnapshot) -> None:
    """The planted Metronome stories show through the mapping."""
    latest, previous = snap.invoices[0], snap.invoices[1]
    if story == "new_addon":
        names = {ln.description for ln in latest.lines} - {ln.description for ln in previous.lines}
        assert names == {"Premium Support"}
    if story == "depleted_credits":
        [commit] = snap.balances
        assert commit.kind == "commit" and commit.remaining.is_zero()
        assert previous.credits_applied is not None
        assert latest.credits_applied is None or latest.credits_applied < previous.credits_applied
