"""Refund and credit requests (DESIGN §4): the request, its states and the transitions between
them, the dual-approval rule, who may click what, and the checks a request must pass before it
is stored. Pure: the service layer (`bot.services.approvals`) runs these rules against storage
and the providers; storage applies each transition as one conditional UPDATE.

States::

    pending ──approve (enough approvers)──▶ approved ──claim──▶ executing ──▶ executed
       │                                                           │  ▲
       ├──deny──▶ denied                                           ▼  │ retry (an approver)
       └──TTL──▶ expired                                          failed

`executing` is held by one executor at a time (a lease renewed while the provider call runs); a
request left `approved` or `executing` by a crash is finished by the reconciler, which calls the
provider again with the same idempotency key, `bt:{request_id}:{kind}`, so the provider returns
the refund it already made instead of making a second.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from bot.domain.models import CustomerRecord, Payment, PaymentStatus, ProviderName, idempotency_key
from bot.domain.money import Money, exponent

RequestKind = Literal["refund", "credit"]
KINDS: tuple[RequestKind, ...] = ("refund", "credit")

#: `REQ-` and 8 characters of RFC 4648 base32 (40 random bits): easy to read out, hard to guess.
REQUEST_ID_PREFIX = "REQ-"
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
REQUEST_ID_LENGTH = 8
#: The actor the audit log names for what the app does on its own (expiry, the reconciler).
SYSTEM_ACTOR = "billing-triage"
MAX_REASON = 500
#: Provider calls with an unknown outcome before a request is failed for a human to look at.
MAX_ATTEMPTS = 10


def new_request_id() -> str:
    """A fresh request ID, e.g. `REQ-7F3KQ9ZD`."""
    return REQUEST_ID_PREFIX + "".join(secrets.choice(_BASE32) for _ in range(REQUEST_ID_LENGTH))


def request_key(request_id: str, kind: RequestKind) -> str:
    """The idempotency key of a request's one provider write: `bt:{request_id}:{kind}`.

    Derived from the request alone, never from the amount or the payment: two partial refunds
    of the same amount on one payment are two requests and two keys; one request retried by a
    click, a replica or the reconciler is one key, so one refund."""
    return idempotency_key(request_id, kind)


def audit_subject(request_id: str) -> str:
    """The audit log's subject for one request."""
    return f"request:{request_id}"


class RequestState(enum.StrEnum):
    """Where a request is in its life."""

    PENDING = "pending"
    APPROVED = "approved"
    EXECUTING = "executing"
    EXECUTED = "executed"
    FAILED = "failed"
    DENIED = "denied"
    EXPIRED = "expired"

    @property
    def final(self) -> bool:
        """True for states no click can change any more."""
        return self in (RequestState.EXECUTED, RequestState.DENIED, RequestState.EXPIRED)


#: Every allowed transition; storage refuses anything else.
TRANSITIONS: Mapping[RequestState, frozenset[RequestState]] = {
    RequestState.PENDING: frozenset(
        {RequestState.APPROVED, RequestState.DENIED, RequestState.EXPIRED}
    ),
    RequestState.APPROVED: frozenset({RequestState.EXECUTING}),
    RequestState.EXECUTING: frozenset({RequestState.EXECUTED, RequestState.FAILED}),
    RequestState.FAILED: frozenset({RequestState.EXECUTING}),
    RequestState.EXECUTED: frozenset(),
    RequestState.DENIED: frozenset(),
    RequestState.EXPIRED: frozenset(),
}
#: States that hold a share of a payment: what they ask for is not refundable by another request.
HOLDING = (RequestState.PENDING, RequestState.APPROVED, RequestState.EXECUTING)


def can_transition(source: RequestState, target: RequestState) -> bool:
    """True when `source → target` is one of `TRANSITIONS`."""
    return target in TRANSITIONS[source]


@dataclass(frozen=True, slots=True)
class Approval:
    """One approver's approval of a request (an approver counts once however often they click)."""

    approver: str
    at: datetime


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """A refund or credit request as stored.

    `account_key` is our account ID, or the provider customer ID for an account without one.
    `customer_id`/`provider` name where the money moves (a Stripe customer for refunds; the
    account's billing provider for credits). `context` is what finance sees next to the request
    (recent invoices, prior refunds, open disputes, the payment), captured when it was made."""

    id: str
    kind: RequestKind
    state: RequestState
    account_key: str
    account_label: str
    provider: ProviderName
    customer_id: str
    amount: Money
    reason: str
    requester: str
    created_at: datetime
    expires_at: datetime
    required_approvals: int
    channel: str
    payment_id: str | None = None
    customer_currency: str | None = None
    account_id: str | None = None
    approval_count: int = 0
    approved_at: datetime | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    decision_reason: str | None = None
    provider_object_id: str | None = None
    provider_status: str | None = None
    failure: str | None = None
    attempts: int = 0
    claimed_by: str | None = None
    claimed_until: datetime | None = None
    version: int = 0
    updated_at: datetime | None = None
    context: Mapping[str, Any] = field(default_factory=dict, compare=False)
    approvals: tuple[Approval, ...] = ()

    @property
    def idempotency_key(self) -> str:
        """The key every provider call for this request carries."""
        return request_key(self.id, self.kind)

    @property
    def ref(self) -> str:
        """The outbox `ref` of the approval message in the finance channel."""
        return f"request:{self.id}"

    @property
    def subject(self) -> str:
        """The audit log's subject for this request."""
        return audit_subject(self.id)

    def customer(self) -> CustomerRecord:
        """The provider customer the write goes to, as the write port takes it."""
        return CustomerRecord(
            provider=self.provider,
            customer_id=self.customer_id,
            account_id=self.account_id,
            currency=self.customer_currency,
        )

    def expired_at(self, now: datetime) -> bool:
        """True when the request is pending and its time ran out."""
        return self.state is RequestState.PENDING and now >= self.expires_at

    def approved_by(self, user: str) -> bool:
        """True when `user` approved this request."""
        return any(a.approver == user for a in self.approvals)


# --- the dual-approval rule -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApprovalRules:
    """How many approvers a request needs and how long it waits.

    `DUAL_APPROVAL_ABOVE` is one figure in major units applied in the request's own currency,
    never converted: `1000` means USD 1,000 for a USD request and EUR 1,000 for a EUR one. A
    currency listed in `per_currency` (`DUAL_APPROVAL_ABOVE_BY_CURRENCY=jpy=150000`) uses its own
    figure instead. A request *above* the threshold needs two distinct approvers; exactly at it,
    one."""

    dual_above: Decimal = Decimal(1000)
    per_currency: Mapping[str, Decimal] = field(default_factory=dict)
    ttl: timedelta = timedelta(hours=48)

    def threshold(self, currency: str) -> Money:
        """The dual-approval threshold in `currency`."""
        cur = currency.lower()
        return Money(self.per_currency.get(cur, self.dual_above), cur)

    def required_approvals(self, amount: Money) -> int:
        """1, or 2 when `amount` is above the threshold of its currency."""
        return 2 if amount > self.threshold(amount.currency) else 1


# --- who may click ----------------------------------------------------------------------------


class Refusal(enum.StrEnum):
    """Why a click on Approve, Deny or Retry does nothing (each has its own message)."""

    NOT_APPROVER = "not_approver"
    SELF_APPROVAL = "self_approval"
    ALREADY_APPROVED_BY_YOU = "already_approved_by_you"
    ALREADY_DECIDED = "already_decided"
    EXPIRED = "expired"
    NOT_FAILED = "not_failed"
    NOT_FOUND = "not_found"


def click_refusal(
    request: ApprovalRequest,
    user: str,
    *,
    is_approver: bool,
    now: datetime,
    action: Literal["approve", "deny", "retry"],
) -> Refusal | None:
    """Why `user` may not `action` `request` now, or None when they may. The requester can never
    decide their own request, even when they are an approver."""
    if not is_approver:
        return Refusal.NOT_APPROVER
    if user == request.requester:
        return Refusal.SELF_APPROVAL
    if action == "retry":
        return None if request.state is RequestState.FAILED else Refusal.NOT_FAILED
    if request.state is RequestState.EXPIRED or request.expired_at(now):
        return Refusal.EXPIRED
    if request.state is not RequestState.PENDING:
        return Refusal.ALREADY_DECIDED
    if action == "approve" and request.approved_by(user):
        return Refusal.ALREADY_APPROVED_BY_YOU
    return None


# --- validation of a new request ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdentityConflict:
    """Customers that an identifier matched but that do not share one account ID."""

    account_id: str | None
    customers: tuple[CustomerRecord, ...]

    def ids_to_use(self) -> list[str]:
        """The identifiers that name exactly one customer: the account ID and each customer ID."""
        ids = [self.account_id] if self.account_id else []
        ids.extend(c.customer_id for c in self.customers)
        return ids


def identity_conflict(
    account_id: str | None, customers: Sequence[CustomerRecord]
) -> IdentityConflict | None:
    """A conflict when the providers disagree about who the account is: a customer matched (by
    email) without the account's ID, or several providers' customers joined only by an email
    with no account ID at all. Money never moves on a guess."""
    if account_id is not None:
        strays = [c for c in customers if c.account_id != account_id]
    else:
        strays = list(customers) if len(customers) > 1 else []
    if not strays:
        return None
    return IdentityConflict(account_id, tuple(customers))


def refundable_left(payment: Payment, held: Sequence[Money]) -> Money:
    """What a new refund request may still ask of `payment`: its amount, minus what the provider
    already refunded, minus what other unfinished requests on it hold (never below zero)."""
    if payment.status is not PaymentStatus.SUCCEEDED:
        return Money.zero(payment.amount.currency)
    left = payment.refundable
    for amount in held:
        left = left - amount
    return left if left.amount > 0 else Money.zero(left.currency)


def payment_kind(payment_id: str) -> Literal["charge", "payment_intent", "invoice"] | None:
    """What a PAYMENT_ID names: a Stripe charge, payment intent or invoice; None otherwise."""
    if payment_id.startswith("ch_"):
        return "charge"
    if payment_id.startswith("pi_"):
        return "payment_intent"
    if payment_id.startswith("in_"):
        return "invoice"
    return None


def minor_digits_ok(amount: Money) -> bool:
    """True when `amount` has no more decimals than its currency."""
    return -int(amount.amount.as_tuple().exponent) <= exponent(amount.currency)


def clean_reason(text: str | None) -> str | None:
    """The reason with surrounding and repeated whitespace removed; None when nothing is left."""
    if text is None:
        return None
    cleaned = " ".join(text.split())
    return cleaned or None
