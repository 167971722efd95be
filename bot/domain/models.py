"""The billing domain: frozen dataclasses every provider maps its objects into.

Conventions: money is `Money` (Decimal + currency); times are aware UTC `datetime`s; `provider`
is one of `PROVIDERS`; `raw` keeps the provider's JSON for explanations (never shown verbatim).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Literal

from bot.domain.money import Money

ProviderName = Literal["stripe", "orb", "metronome"]
PROVIDERS: tuple[ProviderName, ...] = ("stripe", "orb", "metronome")
PROVIDER_LABELS: Mapping[str, str] = {"stripe": "Stripe", "orb": "Orb", "metronome": "Metronome"}

Raw = Mapping[str, Any]


def _empty_raw() -> Raw:
    return {}


@dataclass(frozen=True, slots=True)
class CustomerRecord:
    """One provider's customer for an account."""

    provider: ProviderName
    customer_id: str
    account_id: str | None
    name: str | None = None
    email: str | None = None
    currency: str | None = None
    #: Positive = the customer owes; negative = credit owed to the customer (Stripe's convention).
    balance: Money | None = None
    delinquent: bool = False
    created_at: datetime | None = None
    dashboard_url: str | None = None
    raw: Raw = field(default_factory=_empty_raw, repr=False, compare=False)


class SubscriptionStatus(enum.StrEnum):
    """Our normalised subscription states."""

    ACTIVE = "active"
    TRIALING = "trialing"
    PAST_DUE = "past_due"
    UNPAID = "unpaid"
    CANCELED = "canceled"
    PAUSED = "paused"
    INCOMPLETE = "incomplete"
    UPCOMING = "upcoming"
    ENDED = "ended"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Subscription:
    """A subscription or contract (Metronome) and its plan."""

    provider: ProviderName
    id: str
    status: SubscriptionStatus
    plan_name: str | None
    plan_id: str | None = None
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    started_at: datetime | None = None
    ends_at: datetime | None = None
    cancel_at_period_end: bool = False
    #: Recurring price per period where the provider states one.
    recurring_amount: Money | None = None
    raw: Raw = field(default_factory=_empty_raw, repr=False, compare=False)


class LineKind(enum.StrEnum):
    """What an invoice line is, for explanations."""

    SUBSCRIPTION = "subscription"  # fixed recurring fee
    USAGE = "usage"  # metered usage
    PRORATION = "proration"
    ONE_OFF = "one_off"  # add-ons, manual items
    DISCOUNT = "discount"  # negative line for a coupon/discount
    CREDIT = "credit"  # credits/commits drawn down
    TAX = "tax"
    MINIMUM = "minimum"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    """One invoice line; `amount` is pre-tax and before invoice-level discounts."""

    id: str
    description: str
    amount: Money
    kind: LineKind = LineKind.OTHER
    quantity: Decimal | None = None
    unit_price: Decimal | None = None  # in major units of the invoice currency
    metric: str | None = None  # billable metric / meter name for usage lines
    price_id: str | None = None
    product_id: str | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    proration: bool = False
    discount_amount: Money | None = None  # discounts applied to this line (positive number)
    tax_amount: Money | None = None
    credits_applied: Money | None = None  # credits/commits drawn on this line (positive number)
    raw: Raw = field(default_factory=_empty_raw, repr=False, compare=False)


class InvoiceStatus(enum.StrEnum):
    """Our normalised invoice states."""

    DRAFT = "draft"
    OPEN = "open"  # issued / finalized, not paid
    PAID = "paid"
    PAST_DUE = "past_due"
    VOID = "void"
    UNCOLLECTIBLE = "uncollectible"


@dataclass(frozen=True, slots=True)
class Invoice:
    """An invoice with its lines and invoice-level amounts."""

    provider: ProviderName
    id: str
    customer_id: str
    status: InvoiceStatus
    currency: str
    total: Money  # what the invoice totals after discounts, credits and tax
    subtotal: Money | None = None  # sum of lines before invoice-level discounts and tax
    tax: Money | None = None
    discount: Money | None = None  # total discounts (positive number)
    credits_applied: Money | None = None  # prepaid credits/commits applied (positive number)
    balance_applied: Money | None = None  # customer balance applied (positive = reduced what's due)
    amount_due: Money | None = None
    amount_paid: Money | None = None
    number: str | None = None
    created_at: datetime | None = None  # invoice date
    period_start: datetime | None = None
    period_end: datetime | None = None
    due_at: datetime | None = None
    paid_at: datetime | None = None
    billing_reason: str | None = None  # Stripe's billing_reason, or a provider equivalent
    subscription_id: str | None = None
    plan_name: str | None = None
    url: str | None = None
    memo: str | None = None
    attempt_count: int = 0
    lines: tuple[InvoiceLine, ...] = ()
    raw: Raw = field(default_factory=_empty_raw, repr=False, compare=False)


class PaymentStatus(enum.StrEnum):
    """Payment (charge / attempt) states."""

    SUCCEEDED = "succeeded"
    PENDING = "pending"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Payment:
    """A charge, payment intent or provider payment attempt."""

    provider: ProviderName
    id: str
    customer_id: str
    amount: Money
    status: PaymentStatus
    created_at: datetime
    amount_refunded: Money | None = None
    invoice_id: str | None = None
    payment_intent_id: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    disputed: bool = False
    description: str | None = None
    raw: Raw = field(default_factory=_empty_raw, repr=False, compare=False)

    @property
    def refundable(self) -> Money:
        """What can still be refunded: amount minus already refunded (0 unless succeeded)."""
        if self.status is not PaymentStatus.SUCCEEDED:
            return Money.zero(self.amount.currency)
        refunded = self.amount_refunded or Money.zero(self.amount.currency)
        return self.amount - refunded


@dataclass(frozen=True, slots=True)
class Refund:
    """A money-back refund (Stripe)."""

    provider: ProviderName
    id: str
    amount: Money
    status: str
    created_at: datetime
    payment_id: str | None = None
    reason: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    raw: Raw = field(default_factory=_empty_raw, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Dispute:
    """A card dispute / chargeback."""

    provider: ProviderName
    id: str
    amount: Money
    status: str
    reason: str
    created_at: datetime
    payment_id: str | None = None
    evidence_due_by: datetime | None = None
    raw: Raw = field(default_factory=_empty_raw, repr=False, compare=False)

    @property
    def is_open(self) -> bool:
        """True while the dispute still needs a response or is under review."""
        return self.status in {
            "needs_response",
            "under_review",
            "warning_needs_response",
            "warning_under_review",
        }


@dataclass(frozen=True, slots=True)
class CreditBalance:
    """Prepaid credits / commits / customer balance available to the account."""

    provider: ProviderName
    kind: Literal["credits", "commit", "customer_balance"]
    remaining: Money
    granted: Money | None = None
    name: str | None = None
    expires_at: datetime | None = None
    raw: Raw = field(default_factory=_empty_raw, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class UsagePoint:
    """Usage or cost on one day for one metric (`metric` None = total cost)."""

    provider: ProviderName
    day: date
    metric: str | None
    quantity: Decimal | None = None
    cost: Money | None = None


@dataclass(frozen=True, slots=True)
class ProviderSnapshot:
    """Everything one provider knows about the account."""

    provider: ProviderName
    customer: CustomerRecord
    subscriptions: tuple[Subscription, ...] = ()
    invoices: tuple[Invoice, ...] = ()  # newest first
    upcoming_invoice: Invoice | None = None
    payments: tuple[Payment, ...] = ()  # newest first
    refunds: tuple[Refund, ...] = ()
    disputes: tuple[Dispute, ...] = ()
    balances: tuple[CreditBalance, ...] = ()
    usage: tuple[UsagePoint, ...] = ()  # oldest first


@dataclass(frozen=True, slots=True)
class ProviderFailure:
    """A provider that could not answer, named for the user."""

    provider: ProviderName
    reason: str  # short, safe: "unavailable", "timed out", "rate limited", "authentication failed"


#: Longest idempotency key every provider accepts (Orb's limit; Stripe takes 255).
MAX_IDEMPOTENCY_KEY = 64
WriteKind = Literal["refund", "credit"]


def idempotency_key(request_id: str, action: str) -> str:
    """The idempotency key of one money-moving action of a request: `bt:{request_id}:{action}`.

    The same request and action always give the same key, so every retry, replica and
    reconciler run sends the provider the same key. Raises ValueError when the key would be
    longer than `MAX_IDEMPOTENCY_KEY` characters or a part is empty (a programming error)."""
    if not request_id or not action or ":" in action:
        raise ValueError("request_id and action must be non-empty; action has no ':'")
    key = f"bt:{request_id}:{action}"
    check_idempotency_key(key, request_id)
    return key


def check_idempotency_key(key: str, request_id: str) -> None:
    """Raise ValueError unless `key` has the documented form `bt:{request_id}:{action}` and
    fits every provider (at most `MAX_IDEMPOTENCY_KEY` characters)."""
    if len(key) > MAX_IDEMPOTENCY_KEY:
        raise ValueError(
            f"idempotency key is {len(key)} characters; providers accept {MAX_IDEMPOTENCY_KEY}"
        )
    if request_id_of_key(key) != request_id:
        raise ValueError(f"idempotency key {key!r} is not of the form bt:{request_id}:<action>")


def request_id_of_key(key: str) -> str | None:
    """The request ID inside a key of the form `bt:{request_id}:{action}`, else None."""
    if not key.startswith("bt:"):
        return None
    head, sep, action = key[3:].rpartition(":")
    return head if sep and head and action else None


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a provider did for an approved refund or credit."""

    provider: ProviderName
    kind: WriteKind
    object_id: str  # re_… / cbtxn_… / Orb ledger entry ID / Metronome credit ID
    amount: Money  # what was refunded or credited, always positive
    status: str  # the provider's own status word ("succeeded", "pending", "committed", …)
    request_id: str  # our request ID as recorded on the provider object (metadata / uniqueness_key)
    replayed: bool = False  # the provider answered from its idempotency cache / it already existed
    raw: Raw = field(default_factory=_empty_raw, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class AccountRef:
    """An account resolved to our account ID and the provider customer IDs that belong to it."""

    account_id: str | None
    customer_ids: Mapping[str, str]  # provider -> customer ID
    display_name: str | None = None
    email: str | None = None


@dataclass(frozen=True, slots=True)
class BillingSnapshot:
    """The merged billing state of one account across every enabled provider."""

    account: AccountRef
    providers: tuple[ProviderSnapshot, ...]
    failures: tuple[ProviderFailure, ...] = ()
    fetched_at: datetime | None = None

    def get(self, provider: str) -> ProviderSnapshot | None:
        """The snapshot of one provider, if it answered."""
        return next((p for p in self.providers if p.provider == provider), None)

    @property
    def invoices(self) -> tuple[Invoice, ...]:
        """All invoices of all providers, newest first."""
        items = [inv for p in self.providers for inv in p.invoices]
        return tuple(sorted(items, key=_invoice_sort_key, reverse=True))

    @property
    def payments(self) -> tuple[Payment, ...]:
        """All payments, newest first."""
        items = [pay for p in self.providers for pay in p.payments]
        return tuple(sorted(items, key=lambda x: x.created_at, reverse=True))


def _invoice_sort_key(inv: Invoice) -> datetime:
    return inv.created_at or inv.period_end or datetime.min.replace(tzinfo=UTC)
