"""Refund and credit requests (DESIGN §4): create and validate, approve, deny, execute,
reconcile, expire, and the history.

Money moves exactly once because:

1. every state change is one conditional UPDATE in its own committed unit of work, and only the
   caller whose UPDATE changed the row goes on (`pending → approved` by the last approver needed,
   `approved → executing` by one executor);
2. the provider is called outside any database transaction, after `executing` is committed,
   with the idempotency key `bt:{request_id}:{kind}` — from the request alone;
3. an outcome we did not see (timeout, 5xx, a crash before the commit) leaves the request
   `executing`; the reconciler (at start and every minute) looks for the provider's object by the
   request ID (`find_write`) and otherwise sends the same request with the same key, so the
   provider answers with the refund it already made instead of making a second.

The audit log gets every step in the same transaction as the step itself, and the Slack messages
that announce a step go into the outbox in that transaction too (DESIGN "outbox").
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from bot.domain.approvals import (
    HOLDING,
    MAX_ATTEMPTS,
    MAX_REASON,
    SYSTEM_ACTOR,
    ApprovalRequest,
    ApprovalRules,
    Refusal,
    RequestKind,
    RequestState,
    audit_subject,
    clean_reason,
    click_refusal,
    identity_conflict,
    new_request_id,
    payment_kind,
    refundable_left,
)
from bot.domain.identifiers import AccountIdentifier, IdentifierKind
from bot.domain.models import (
    PROVIDER_LABELS,
    BillingSnapshot,
    CustomerRecord,
    Payment,
    PaymentStatus,
    ProviderName,
    WriteResult,
)
from bot.domain.money import AmountInput, Money
from bot.domain.ports import BillingProvider, BillingWriter, PaymentReader
from bot.domain.records import AuditEvent, OutgoingMessage, Store, UnitOfWork
from bot.errors import (
    AccessDenied,
    ProviderError,
    ProviderIdempotencyConflict,
    ProviderNotFound,
    ProviderOutcomeUnknown,
    ProviderUnavailable,
    RequestRefused,
    UserError,
)
from bot.services.access import AccessService
from bot.services.cases import request_case, request_decided_at
from bot.services.lookup import LookupService, Resolution

log = logging.getLogger("bot.approvals")

#: Renderers the Slack edge registers for the approval message and the requester's DM.
APPROVAL_RENDERER = "approval"
APPROVAL_DM_RENDERER = "approval_dm"
#: Recent payments offered in the refund modal's picker.
PAYMENT_CHOICES = 10
CONTEXT_ITEMS = 3
#: Credits go to the account's billing provider; when no invoice says which, in this order.
CREDIT_PROVIDER_ORDER: tuple[ProviderName, ...] = ("orb", "metronome", "stripe")


def label(provider: str) -> str:
    """`Stripe`, `Orb`, `Metronome`."""
    return PROVIDER_LABELS.get(provider, provider)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did something and from which Slack request (trigger or event ID), for the audit."""

    user_id: str
    slack_request: str | None = None


@dataclass(frozen=True, slots=True)
class RequestDraft:
    """A refund or credit as the requester asked for it (command, modal or the draft's button),
    not yet checked. `origin` is recorded in the audit log."""

    kind: RequestKind
    account: AccountIdentifier
    amount: AmountInput | None
    reason: str | None
    payment_id: str | None = None
    origin: str = "command"


@dataclass(frozen=True, slots=True)
class PaymentChoice:
    """A payment the refund modal offers, with what is still left to refund on it."""

    payment_id: str
    created_at: datetime
    amount: Money
    left: Money
    invoice_id: str | None = None


@dataclass(frozen=True, slots=True)
class RequestForm:
    """What the request modal shows for an account: who it is, where the money would move,
    in which currency, and (refunds) the payments to pick from."""

    kind: RequestKind
    account_label: str
    account_key: str
    provider: ProviderName
    currency: str
    payments: tuple[PaymentChoice, ...] = ()


@dataclass(frozen=True, slots=True)
class ClickResult:
    """What a click on Approve, Deny or Retry did: nothing (`refusal` says why) or a change."""

    request: ApprovalRequest | None
    refusal: Refusal | None = None

    @property
    def accepted(self) -> bool:
        """True when the click changed the request."""
        return self.refusal is None


@dataclass(frozen=True, slots=True)
class History:
    """Requests and, for each, its audit trail (oldest first)."""

    requests: tuple[ApprovalRequest, ...]
    trails: Mapping[str, tuple[AuditEvent, ...]] = field(default_factory=dict)


class Counter(Protocol):
    """What the service counts with (`bot.metrics.Metrics`)."""

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add to a counter."""
        ...


@dataclass(frozen=True, slots=True)
class _Done:
    result: WriteResult
    how: Literal["created", "replayed", "found"]


@dataclass(frozen=True, slots=True)
class _Failed:
    message: str


@dataclass(frozen=True, slots=True)
class _Unknown:
    message: str


_Outcome = _Done | _Failed | _Unknown


def _money_json(money: Money) -> dict[str, str]:
    return {"amount": money.decimal_str(), "currency": money.currency}


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class ApprovalService:
    """The approval flow. One per process; safe to call from many tasks at once."""

    def __init__(
        self,
        *,
        store: Store,
        lookup: LookupService,
        providers: Mapping[str, BillingProvider],
        access: AccessService,
        rules: ApprovalRules,
        channel: str | None,
        holder: str,
        lease: float = 30.0,
        wake: Callable[[], None] | None = None,
        metrics: Counter | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.lookup = lookup
        self.writers: dict[str, BillingWriter] = {
            name: p for name, p in providers.items() if isinstance(p, BillingWriter)
        }
        stripe = providers.get("stripe")
        self.payments: PaymentReader | None = stripe if isinstance(stripe, PaymentReader) else None
        self.access = access
        self.rules = rules
        self.channel = channel
        self.holder = holder
        #: Seconds an executor holds a request without renewing (renewed every third of it).
        self.lease = lease
        self._wake = wake
        self._metrics = metrics
        #: "Now" for every decision and stored time; tests move it.
        self.clock = clock

    # -- small helpers ------------------------------------------------------------------------

    def _count(self, name: str, **labels: str) -> None:
        if self._metrics is not None:
            self._metrics.inc(name, 1.0, **labels)

    def _woke(self) -> None:
        if self._wake is not None:
            self._wake()

    async def _audit(
        self,
        uow: UnitOfWork,
        actor: Actor | None,
        action: str,
        subject: str,
        detail: Mapping[str, Any] | None = None,
        *,
        now: datetime | None = None,
    ) -> None:
        await uow.audit.append(
            AuditEvent(
                id=None,
                at=now or self.clock(),
                actor=actor.user_id if actor else SYSTEM_ACTOR,
                action=action,
                subject=subject,
                detail=dict(detail or {}),
                slack_request=actor.slack_request if actor else None,
            )
        )

    async def _audit_alone(
        self, actor: Actor | None, action: str, subject: str, detail: Mapping[str, Any]
    ) -> None:
        """An audit event in a unit of work of its own (refusals change nothing else)."""
        async with self.store.uow() as uow:
            await self._audit(uow, actor, action, subject, detail)
            await uow.commit()

    async def _transitioned(
        self,
        uow: UnitOfWork,
        request: ApprovalRequest,
        source: RequestState,
        actor: Actor | None,
        *,
        now: datetime,
        **detail: Any,
    ) -> None:
        await uow.cases.update_request(
            request.id, status=request.state.value, decided_at=request_decided_at(request, now)
        )
        await self._audit(
            uow,
            actor,
            "request.transition",
            request.subject,
            {"from": source.value, "to": request.state.value, "version": request.version, **detail},
            now=now,
        )

    async def _announce(
        self, uow: UnitOfWork, request: ApprovalRequest, *, now: datetime, dm: bool = False
    ) -> None:
        """Update the approval message (and DM the requester) from the state just committed."""
        payload = {"request_id": request.id}
        await uow.outbox.enqueue(
            OutgoingMessage(
                key=f"{request.ref}:v{request.version}",
                op="update",
                ref=request.ref,
                render=APPROVAL_RENDERER,
                payload=payload,
            ),
            now=now,
        )
        if dm:
            await uow.outbox.enqueue(
                OutgoingMessage(
                    key=f"{request.ref}:dm:v{request.version}",
                    op="dm",
                    channel=request.requester,
                    render=APPROVAL_DM_RENDERER,
                    payload=payload,
                ),
                now=now,
            )

    async def get(self, request_id: str) -> ApprovalRequest | None:
        """The request, with its approvals."""
        async with self.store.uow() as uow:
            return await uow.requests.get(request_id)

    # -- creating a request ---------------------------------------------------------------------

    async def create(self, draft: RequestDraft, *, actor: Actor) -> ApprovalRequest:
        """Validate `draft`, store it as a pending request and post it to the finance channel.

        Every refusal raises a `UserError` (or the `ProviderError` that prevented the checks)
        saying what was wrong, is audited, and stores nothing."""
        try:
            request = await self._create(draft, actor)
        except (UserError, ProviderError) as exc:
            await self.record_refusal(
                draft.kind, draft.account, actor, exc, origin=draft.origin,
                amount=draft.amount.text if draft.amount else None, payment=draft.payment_id,
            )  # fmt: skip
            raise
        self._count("billing_triage_approval_requests_total", kind=draft.kind, outcome="created")
        return request

    async def record_refusal(
        self,
        kind: RequestKind,
        account: AccountIdentifier | str,
        actor: Actor,
        exc: UserError | ProviderError,
        *,
        origin: str,
        amount: str | None = None,
        payment: str | None = None,
    ) -> None:
        """Audit a request that was refused before anything was stored (`account` as typed,
        or what the command said when even that could not be read)."""
        why = str(getattr(exc, "why", None) or exc.code)
        self._count("billing_triage_approval_requests_total", kind=kind, outcome=why)
        value = account.value if isinstance(account, AccountIdentifier) else account
        await self._audit_alone(
            actor,
            "request.refused",
            f"account:{value}"[:255],
            {
                "kind": kind,
                "why": why,
                "message": exc.message,
                "amount": amount,
                "payment": payment,
                "origin": origin,
            },
        )

    async def _checked_resolution(
        self, ident: AccountIdentifier, actor: Actor
    ) -> tuple[Resolution, BillingSnapshot]:
        """The account and its billing state, refused when who it is is in doubt."""
        if not self.channel:
            raise RequestRefused(
                "not_configured",
                "Refund and credit requests are not set up: FINANCE_CHANNEL is not configured. "
                "Ask whoever runs Billing Triage to set it.",
            )
        if not await self.access.can_request(actor.user_id):
            raise AccessDenied(
                "You are not allowed to request refunds or credits (REQUESTERS). Ask finance or "
                "whoever runs Billing Triage to add you."
            )
        resolution = await self.lookup.resolve(ident)
        conflict = identity_conflict(resolution.account_id, list(resolution.customers.values()))
        if conflict is not None:
            rows = ", ".join(
                f"{label(c.provider)} `{c.customer_id}` "
                + (f"(account `{c.account_id}`)" if c.account_id else "(no account ID)")
                for c in conflict.customers
            )
            use = ", ".join(f"`{i}`" for i in conflict.ids_to_use())
            raise RequestRefused(
                "identity_conflict",
                f"`{ident.value}` matched customers that the providers don't agree are one "
                f"account: {rows}. Money never moves on a guess: ask again with one of {use}.",
            )
        if resolution.failures and ident.primary is IdentifierKind.EMAIL:
            down = ", ".join(f"{label(p)} ({r})" for p, r in resolution.failures.items())
            raise RequestRefused(
                "identity_unchecked",
                f"{down} did not answer, so `{ident.value}` could not be checked for other "
                "accounts with that email. Ask again with the account ID or `cus_…` ID.",
            )
        snapshot = await self.lookup.snapshot_for(resolution)
        return resolution, snapshot

    async def _create(self, draft: RequestDraft, actor: Actor) -> ApprovalRequest:
        reason = clean_reason(draft.reason)
        if reason is None:
            raise RequestRefused(
                "reason_missing",
                "Give a reason: finance sees it and the audit log keeps it, e.g. "
                "`/billing refund ACCOUNT 25 duplicate charge`.",
            )
        if len(reason) > MAX_REASON:
            raise RequestRefused(
                "reason_too_long",
                f"The reason is {len(reason)} characters; keep it under {MAX_REASON}.",
            )
        if draft.amount is None:
            raise RequestRefused(
                "amount_missing", "Give an amount, e.g. `25` or `$1,250.50`, in the currency paid."
            )
        resolution, snapshot = await self._checked_resolution(draft.account, actor)
        if draft.kind == "refund":
            return await self._create_refund(draft, reason, resolution, snapshot, actor)
        return await self._create_credit(draft, reason, resolution, snapshot, actor)

    def _stripe_customer(self, resolution: Resolution) -> CustomerRecord:
        stripe = resolution.customers.get("stripe")
        if stripe is None:
            raise RequestRefused(
                "no_stripe_customer",
                "Refunds go back through the Stripe payment, and this account has no Stripe "
                "customer. Ask for a credit instead: `/billing credit ACCOUNT AMOUNT REASON…`.",
            )
        if self.payments is None or "stripe" not in self.writers:
            raise RequestRefused(
                "refunds_unavailable", "Refunds need Stripe, which is not enabled here."
            )
        return stripe

    async def _payment(self, payment_id: str) -> Payment:
        """The payment `payment_id` names (an invoice's paying charge for `in_…`)."""
        assert self.payments is not None
        kind = payment_kind(payment_id)
        if kind is None:
            raise RequestRefused(
                "payment_unsupported",
                f"`{payment_id}` can't be refunded from here; give the charge (`ch_…`), payment "
                "intent (`pi_…`) or invoice (`in_…`) ID.",
            )
        if kind == "invoice":
            try:
                paid_by = await self.payments.payment_for_invoice(payment_id)
            except ProviderNotFound:
                raise RequestRefused(
                    "payment_not_found", f"Stripe has no invoice `{payment_id}`."
                ) from None
            if paid_by is None:
                raise RequestRefused(
                    "invoice_unpaid", f"Invoice `{payment_id}` has no payment to refund."
                )
            payment_id = paid_by
        try:
            return await self.payments.get_payment(payment_id)
        except ProviderNotFound:
            raise RequestRefused(
                "payment_not_found", f"Stripe has no payment `{payment_id}`."
            ) from None

    def _default_payment(self, snapshot: BillingSnapshot) -> str:
        stripe = snapshot.get("stripe")
        payments = stripe.payments if stripe is not None else ()
        for payment in payments:
            if payment.status is PaymentStatus.SUCCEEDED and payment.refundable.amount > 0:
                return payment.id
        raise RequestRefused(
            "no_refundable_payment",
            "This account has no recent payment with anything left to refund. Give the "
            "payment: `/billing refund ACCOUNT AMOUNT ch_… REASON…`.",
        )

    async def _create_refund(
        self,
        draft: RequestDraft,
        reason: str,
        resolution: Resolution,
        snapshot: BillingSnapshot,
        actor: Actor,
    ) -> ApprovalRequest:
        assert draft.amount is not None
        customer = self._stripe_customer(resolution)
        asked = draft.payment_id or self._default_payment(snapshot)
        payment = await self._payment(asked)
        if payment.customer_id != customer.customer_id:
            raise RequestRefused(
                "payment_of_another_customer",
                f"`{asked}` is not a payment of {self._title(resolution)}: it was paid by "
                "another Stripe customer. A refund only goes back to the account that paid.",
            )
        if payment.status is not PaymentStatus.SUCCEEDED:
            raise RequestRefused(
                "payment_not_succeeded",
                f"`{payment.id}` is {payment.status.value}; only a successful payment can be "
                "refunded.",
            )
        if payment.disputed:
            raise RequestRefused(
                "payment_disputed",
                f"`{payment.id}` is disputed; answer the dispute in Stripe instead of refunding "
                "(a refund on top of a lost dispute pays the customer twice).",
            )
        amount = draft.amount.in_currency(payment.amount.currency)
        now = self.clock()
        request = self._new_request(
            draft, reason, resolution, snapshot, actor, now, provider="stripe",
            customer=customer, amount=amount, payment=payment,
        )  # fmt: skip
        async with self.store.uow() as uow:
            await uow.requests.hold_payment(payment.id)
            held = await uow.requests.holding(payment.id)
            left = refundable_left(payment, [r.amount for r in held])
            if amount > left:
                raise RequestRefused(
                    "amount_above_refundable",
                    self._above_refundable(amount, payment, held, left),
                )
            request = _with_context(request, {"payment": _payment_context(payment, left)})
            return await self._store_new(uow, request, actor, now, draft.origin)

    def _above_refundable(
        self, amount: Money, payment: Payment, held: Sequence[ApprovalRequest], left: Money
    ) -> str:
        refunded = payment.amount_refunded or Money.zero(payment.amount.currency)
        text = (
            f"{amount} is more than is left to refund on `{payment.id}`: paid {payment.amount}, "
            f"already refunded {refunded}"
        )
        if held:
            ids = ", ".join(r.id for r in held[:5])
            total = held[0].amount
            for other in held[1:]:
                total = total + other.amount
            text += f", held by requests not finished yet {total} ({ids})"
        return text + f". At most {left} can be requested now."

    def _credit_target(
        self, resolution: Resolution, snapshot: BillingSnapshot
    ) -> tuple[CustomerRecord, str]:
        """Where a credit goes (the provider that bills the account) and in which currency."""
        candidates = {p: c for p, c in resolution.customers.items() if p in self.writers}
        if not candidates:
            raise RequestRefused(
                "credits_unavailable",
                "None of the providers that bill this account can take a credit from here.",
            )
        billing: str = next(
            (i.provider for i in snapshot.invoices if i.provider in candidates),
            next(p for p in CREDIT_PROVIDER_ORDER if p in candidates),
        )
        customer = candidates[billing]
        currency = customer.currency
        if currency is None:
            latest = next((i for i in snapshot.invoices if i.provider == billing), None)
            currency = latest.currency if latest is not None else None
        if currency is None and billing == "metronome":
            currency = "usd"  # Metronome credits are in its default credit type, USD
        if currency is None:
            raise RequestRefused(
                "currency_unknown",
                f"{label(billing)} has no currency for this account yet, so a credit can't be "
                "sized; ask once it has been invoiced.",
            )
        return customer, currency.lower()

    async def _create_credit(
        self,
        draft: RequestDraft,
        reason: str,
        resolution: Resolution,
        snapshot: BillingSnapshot,
        actor: Actor,
    ) -> ApprovalRequest:
        assert draft.amount is not None
        customer, currency = self._credit_target(resolution, snapshot)
        amount = draft.amount.in_currency(currency)
        now = self.clock()
        request = self._new_request(
            draft, reason, resolution, snapshot, actor, now, provider=customer.provider,
            customer=customer, amount=amount, payment=None,
        )  # fmt: skip
        async with self.store.uow() as uow:
            return await self._store_new(uow, request, actor, now, draft.origin)

    def _title(self, resolution: Resolution) -> str:
        ref = resolution.ref()
        return ref.display_name or ref.account_id or "this account"

    def _new_request(
        self,
        draft: RequestDraft,
        reason: str,
        resolution: Resolution,
        snapshot: BillingSnapshot,
        actor: Actor,
        now: datetime,
        *,
        provider: ProviderName,
        customer: CustomerRecord,
        amount: Money,
        payment: Payment | None,
    ) -> ApprovalRequest:
        assert self.channel is not None
        ref = resolution.ref()
        return ApprovalRequest(
            id=new_request_id(),
            kind=draft.kind,
            state=RequestState.PENDING,
            account_key=resolution.account_id or customer.customer_id,
            account_label=(ref.display_name or ref.account_id or customer.customer_id)[:255],
            provider=provider,
            customer_id=customer.customer_id,
            amount=amount,
            reason=reason,
            requester=actor.user_id,
            created_at=now,
            expires_at=now + self.rules.ttl,
            required_approvals=self.rules.required_approvals(amount),
            channel=self.channel,
            payment_id=payment.id if payment is not None else None,
            customer_currency=customer.currency,
            account_id=resolution.account_id,
            context=_snapshot_context(snapshot, provider, draft.origin),
        )

    async def _store_new(
        self,
        uow: UnitOfWork,
        request: ApprovalRequest,
        actor: Actor,
        now: datetime,
        origin: str,
    ) -> ApprovalRequest:
        await uow.requests.add(request)
        # The request's case (DESIGN §11) is stored with it: one exists iff the other does.
        await uow.cases.record(request_case(request, origin=origin))
        await self._audit(
            uow,
            actor,
            "request.created",
            request.subject,
            {
                "kind": request.kind,
                "account": request.account_key,
                "provider": request.provider,
                "customer": request.customer_id,
                "payment": request.payment_id,
                **_money_json(request.amount),
                "reason": request.reason,
                "required_approvals": request.required_approvals,
                "expires_at": request.expires_at.isoformat(),
                "idempotency_key": request.idempotency_key,
                "origin": origin,
            },
            now=now,
        )
        await uow.outbox.enqueue(
            OutgoingMessage(
                key=f"{request.ref}:post",
                op="post",
                channel=request.channel,
                ref=request.ref,
                render=APPROVAL_RENDERER,
                payload={"request_id": request.id},
            ),
            now=now,
        )
        await uow.commit()
        self._woke()
        log.info(
            "request created",
            extra={"request_id": request.id, "kind": request.kind, "provider": request.provider},
        )
        return request

    # -- the modal's data -----------------------------------------------------------------------

    async def form(
        self, kind: RequestKind, ident: AccountIdentifier, *, actor: Actor
    ) -> RequestForm:
        """What the request modal offers for the account (refused like `create` would be)."""
        resolution, snapshot = await self._checked_resolution(ident, actor)
        if kind == "credit":
            customer, currency = self._credit_target(resolution, snapshot)
            return RequestForm(
                kind=kind,
                account_label=self._title(resolution),
                account_key=resolution.account_id or customer.customer_id,
                provider=customer.provider,
                currency=currency,
            )
        customer = self._stripe_customer(resolution)
        stripe = snapshot.get("stripe")
        payments = [
            p
            for p in (stripe.payments if stripe is not None else ())
            if p.status is PaymentStatus.SUCCEEDED and p.refundable.amount > 0
        ][:PAYMENT_CHOICES]
        choices: list[PaymentChoice] = []
        async with self.store.uow() as uow:
            for payment in payments:
                held = await uow.requests.holding(payment.id)
                left = refundable_left(payment, [r.amount for r in held])
                if left.amount > 0:
                    choices.append(
                        PaymentChoice(
                            payment.id, payment.created_at, payment.amount, left, payment.invoice_id
                        )
                    )
        currency = choices[0].amount.currency if choices else (customer.currency or "usd")
        return RequestForm(
            kind=kind,
            account_label=self._title(resolution),
            account_key=resolution.account_id or customer.customer_id,
            provider="stripe",
            currency=currency,
            payments=tuple(choices),
        )

    # -- clicks -----------------------------------------------------------------------------------

    async def _refused(
        self,
        request_id: str,
        actor: Actor,
        action: str,
        refusal: Refusal,
        request: ApprovalRequest | None,
    ) -> ClickResult:
        self._count("billing_triage_approval_clicks_total", action=action, outcome=refusal.value)
        await self._audit_alone(
            actor,
            f"click.{action}",
            audit_subject(request_id),
            {
                "outcome": "refused",
                "refusal": refusal.value,
                "state": request.state.value if request else None,
            },
        )
        return ClickResult(request, refusal)

    async def _authorised(
        self, request_id: str, actor: Actor, action: Literal["approve", "deny", "retry"]
    ) -> ClickResult | ApprovalRequest:
        """The request when `actor` may `action` it now; else the refusal (audited). A click on
        a request whose time ran out expires it on the spot (fail closed)."""
        request = await self.get(request_id)
        if request is None:
            return await self._refused(request_id, actor, action, Refusal.NOT_FOUND, None)
        is_approver = await self.access.can_approve(actor.user_id)
        now = self.clock()
        refusal = click_refusal(
            request, actor.user_id, is_approver=is_approver, now=now, action=action
        )
        if refusal is Refusal.EXPIRED and request.state is RequestState.PENDING:
            await self._expire_one(request.id)
            request = await self.get(request_id) or request
        if refusal is not None:
            return await self._refused(request_id, actor, action, refusal, request)
        return request

    async def approve(self, request_id: str, *, actor: Actor) -> ClickResult:
        """An approver's click on Approve: counted once per approver; the last approval needed
        makes the request `approved` and this caller executes it."""
        checked = await self._authorised(request_id, actor, "approve")
        if isinstance(checked, ClickResult):
            return checked
        now = self.clock()
        async with self.store.uow() as uow:
            if not await uow.requests.add_approval(request_id, actor.user_id, at=now):
                await uow.rollback()
                latest = await self.get(request_id)
                return await self._refused(
                    request_id, actor, "approve", Refusal.ALREADY_APPROVED_BY_YOU, latest
                )
            state = await uow.requests.approve(request_id, approver=actor.user_id, now=now)
            if state is None:
                await uow.rollback()
                latest = await self.get(request_id)
                refusal = (
                    Refusal.EXPIRED
                    if latest is not None
                    and (latest.state is RequestState.EXPIRED or latest.expired_at(now))
                    else Refusal.ALREADY_DECIDED
                )
                return await self._refused(request_id, actor, "approve", refusal, latest)
            after = await uow.requests.get(request_id)
            assert after is not None
            await self._audit(
                uow,
                actor,
                "click.approve",
                after.subject,
                {
                    "outcome": "accepted",
                    "approvals": after.approval_count,
                    "required": after.required_approvals,
                },
                now=now,
            )
            if state is RequestState.APPROVED:
                await self._transitioned(uow, after, RequestState.PENDING, actor, now=now)
            else:
                # The first of two approvals: the message shows it (and who may still approve).
                await self._announce(uow, after, now=now)
            await uow.commit()
        self._woke()
        self._count("billing_triage_approval_clicks_total", action="approve", outcome="accepted")
        if state is RequestState.APPROVED:
            await self.execute(request_id, source=RequestState.APPROVED, actor=actor)
        return ClickResult(await self.get(request_id) or after)

    async def check_deny(self, request_id: str, *, actor: Actor) -> ClickResult:
        """A click on Deny (before the reason is asked): may `actor` deny it? Refusals are
        audited; an accepted click is audited when the reason is submitted."""
        checked = await self._authorised(request_id, actor, "deny")
        if isinstance(checked, ClickResult):
            return checked
        return ClickResult(checked)

    async def deny(self, request_id: str, *, actor: Actor, reason: str | None) -> ClickResult:
        """The Deny modal's submission: authorised again (it may come much later), final."""
        checked = await self._authorised(request_id, actor, "deny")
        if isinstance(checked, ClickResult):
            return checked
        why = clean_reason(reason)
        if why is None:
            raise RequestRefused("deny_reason_missing", "Say why the request is denied.")
        now = self.clock()
        async with self.store.uow() as uow:
            if not await uow.requests.deny(
                request_id, by=actor.user_id, reason=why[:MAX_REASON], now=now
            ):
                await uow.rollback()
                latest = await self.get(request_id)
                refusal = (
                    Refusal.EXPIRED
                    if latest is not None and latest.state is RequestState.EXPIRED
                    else Refusal.ALREADY_DECIDED
                )
                return await self._refused(request_id, actor, "deny", refusal, latest)
            after = await uow.requests.get(request_id)
            assert after is not None
            await self._audit(
                uow, actor, "click.deny", after.subject, {"outcome": "accepted", "reason": why},
                now=now,
            )  # fmt: skip
            await self._transitioned(uow, after, RequestState.PENDING, actor, now=now, reason=why)
            await self._announce(uow, after, now=now, dm=True)
            await uow.commit()
        self._woke()
        self._count("billing_triage_approval_clicks_total", action="deny", outcome="accepted")
        return ClickResult(after)

    async def retry(self, request_id: str, *, actor: Actor) -> ClickResult:
        """An approver's Retry on a failed request: executed again with the same key (the
        provider's object is looked for first, so nothing is made twice)."""
        checked = await self._authorised(request_id, actor, "retry")
        if isinstance(checked, ClickResult):
            return checked
        ran = await self.execute(request_id, source=RequestState.FAILED, actor=actor, click="retry")
        if not ran:  # someone else's retry got there first
            latest = await self.get(request_id)
            return await self._refused(request_id, actor, "retry", Refusal.NOT_FAILED, latest)
        self._count("billing_triage_approval_clicks_total", action="retry", outcome="accepted")
        return ClickResult(await self.get(request_id))

    # -- execution ----------------------------------------------------------------------------

    async def execute(
        self,
        request_id: str,
        *,
        source: RequestState,
        actor: Actor | None = None,
        click: str | None = None,
    ) -> bool:
        """Claim the request (`source` → `executing`, or take over an abandoned `executing`),
        call the provider outside any transaction, and record what it said. False when someone
        else holds it or it is not in `source`. `click` names the accepted click that asked
        for it, audited with the claim."""
        now = self.clock()
        until = now + timedelta(seconds=self.lease)
        async with self.store.uow() as uow:
            if source is RequestState.EXECUTING:
                won = await uow.requests.reclaim(
                    request_id, holder=self.holder, now=now, until=until
                )
            else:
                won = await uow.requests.claim(
                    request_id, source=source, holder=self.holder, now=now, until=until
                )
            if not won:
                return False
            request = await uow.requests.get(request_id)
            assert request is not None
            if click is not None:
                await self._audit(
                    uow, actor, f"click.{click}", request.subject, {"outcome": "accepted"}, now=now
                )
            if source is RequestState.EXECUTING:
                await self._audit(
                    uow,
                    actor,
                    "request.takeover",
                    request.subject,
                    {"holder": self.holder, "attempt": request.attempts},
                    now=now,
                )
            else:
                await self._transitioned(uow, request, source, actor, now=now, holder=self.holder)
            await self._audit(
                uow,
                actor,
                "provider.call",
                request.subject,
                {
                    "provider": request.provider,
                    "write": request.kind,
                    "attempt": request.attempts,
                    "idempotency_key": request.idempotency_key,
                    "payment": request.payment_id,
                    "customer": request.customer_id,
                    **_money_json(request.amount),
                    "looks_first": request.attempts > 1,
                },
                now=now,
            )
            await uow.commit()
        heartbeat = asyncio.create_task(self._heartbeat(request_id), name=f"lease:{request_id}")
        try:
            outcome = await self._call(request)
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
        await self._record(request, outcome, actor)
        return True

    async def _heartbeat(self, request_id: str) -> None:
        """Keep the lease while the provider call runs, so nobody takes the request over."""
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                async with self.store.uow() as uow:
                    until = self.clock() + timedelta(seconds=self.lease)
                    await uow.requests.renew(request_id, holder=self.holder, until=until)
                    await uow.commit()
            except Exception:  # a missed renewal only lets the reconciler look earlier
                log.warning("could not renew an execution lease", exc_info=True)

    async def _call(self, request: ApprovalRequest) -> _Outcome:
        """One provider write for `request` with its own key; never raises."""
        writer = self.writers.get(request.provider)
        if writer is None:
            return _Failed(f"{label(request.provider)} is not enabled here, so nothing was sent.")
        customer = request.customer()
        if request.attempts > 1:
            # An earlier attempt may have succeeded unseen, and its key may have expired at the
            # provider (Stripe keeps keys 24 h): look for the object itself first. When we
            # can't look, we don't send either: the next run looks again.
            try:
                found = await writer.find_write(
                    customer=customer,
                    kind=request.kind,
                    request_id=request.id,
                    payment_id=request.payment_id,
                )
            except ProviderError as exc:
                return _Unknown(
                    f"{label(request.provider)}: could not look for an earlier attempt "
                    f"({exc.message})"
                )
            except Exception:
                ref = secrets.token_hex(3)
                log.exception("looking for a write failed ref=%s", ref, extra={"ref": ref})
                return _Unknown(f"an unexpected error looking for an earlier attempt (ref {ref})")
            if found is not None:
                return _Done(found, "found")
        try:
            if request.kind == "refund":
                assert request.payment_id is not None
                result = await writer.refund_payment(
                    customer=customer,
                    payment_id=request.payment_id,
                    amount=request.amount,
                    request_id=request.id,
                    idempotency_key=request.idempotency_key,
                    reason=request.reason,
                )
            else:
                result = await writer.grant_credit(
                    customer=customer,
                    amount=request.amount,
                    request_id=request.id,
                    idempotency_key=request.idempotency_key,
                    description=f"{request.id}: {request.reason}"[:250],
                )
        except ProviderOutcomeUnknown as exc:
            return _Unknown(f"{label(request.provider)}: {exc.message}")
        except ProviderIdempotencyConflict as exc:
            return _Failed(f"{label(request.provider)}: {exc.message}")
        except ProviderUnavailable as exc:
            # Certainly not done (never connected, rate limited throughout, or the reads before
            # the write failed): a passing fault, not finance's business. The reconciler tries
            # again with the same key, like an unknown outcome, until MAX_ATTEMPTS.
            return _Unknown(f"{label(exc.provider)}: {exc.message}")
        except ProviderError as exc:  # refused by the provider: nothing happened
            return _Failed(f"{label(exc.provider)}: {exc.message}")
        except ValueError as exc:  # our own argument checks, before anything was sent
            log.error("write refused before sending", extra={"request_id": request.id})
            return _Failed(f"Billing Triage refused to send it: {exc}")
        except Exception:  # we don't know how far it got: the reconciler finds out
            ref = secrets.token_hex(3)
            log.exception("provider write failed unexpectedly ref=%s", ref, extra={"ref": ref})
            return _Unknown(f"an unexpected error (ref {ref})")
        return _Done(result, "replayed" if result.replayed else "created")

    async def _record(
        self, request: ApprovalRequest, outcome: _Outcome, actor: Actor | None
    ) -> None:
        """Commit what the provider said: executed, failed, or still executing (unknown)."""
        if isinstance(outcome, _Unknown) and request.attempts >= MAX_ATTEMPTS:
            outcome = _Failed(
                f"No answer after {request.attempts} attempts (last: {outcome.message}). Check "
                f"{label(request.provider)} for an object with metadata request_id={request.id} "
                "before retrying; a retry looks for it first."
            )
        now = self.clock()
        async with self.store.uow() as uow:
            if isinstance(outcome, _Done):
                result = outcome.result
                won = await uow.requests.executed(
                    request.id, object_id=result.object_id, status=result.status, now=now
                )
                detail: dict[str, Any] = {
                    "outcome": outcome.how,
                    "object_id": result.object_id,
                    "status": result.status,
                    **_money_json(result.amount),
                }
                if result.amount != request.amount:
                    log.error("provider amount differs", extra={"request_id": request.id})
                    detail["differs_from_request"] = True
            elif isinstance(outcome, _Failed):
                won = await uow.requests.fail(request.id, message=outcome.message, now=now)
                detail = {"outcome": "rejected", "message": outcome.message}
            else:
                won = await uow.requests.release(
                    request.id, holder=self.holder, now=now, problem=outcome.message
                )
                detail = {"outcome": "unknown", "message": outcome.message}
            if not won:
                # Another executor recorded an outcome first (same key: the same object).
                await uow.rollback()
                log.info("outcome already recorded", extra={"request_id": request.id})
                return
            after = await uow.requests.get(request.id)
            assert after is not None
            await self._audit(
                uow,
                None,
                "provider.result",
                after.subject,
                {"provider": after.provider, "attempt": after.attempts, **detail},
                now=now,
            )
            if not isinstance(outcome, _Unknown):
                await self._transitioned(uow, after, RequestState.EXECUTING, actor, now=now)
            await self._announce(uow, after, now=now, dm=not isinstance(outcome, _Unknown))
            await uow.commit()
        self._woke()
        self._count(
            "billing_triage_provider_writes_total",
            provider=request.provider,
            outcome=str(detail["outcome"]),
        )

    # -- the periodic job -----------------------------------------------------------------------

    async def _expire_one(self, request_id: str) -> bool:
        now = self.clock()
        async with self.store.uow() as uow:
            if not await uow.requests.expire(request_id, now=now):
                return False
            after = await uow.requests.get(request_id)
            assert after is not None
            await self._transitioned(uow, after, RequestState.PENDING, None, now=now)
            await self._announce(uow, after, now=now, dm=True)
            await uow.commit()
        self._woke()
        self._count("billing_triage_approval_expired_total")
        return True

    async def expire_due(self) -> int:
        """Expire (fail closed) every pending request whose time ran out; how many."""
        async with self.store.uow() as uow:
            due = await uow.requests.expiring(now=self.clock())
        expired = 0
        for request_id in due:
            expired += await self._expire_one(request_id)
        return expired

    async def reconcile(self) -> int:
        """Finish requests a crash or an unseen outcome left `approved` or `executing`: same
        key, provider object looked for first. How many were attempted."""
        now = self.clock()
        grace = timedelta(seconds=min(self.lease, 10.0))
        async with self.store.uow() as uow:
            stale = await uow.requests.unfinished(now=now, approved_before=now - grace)
        attempted = 0
        for request in stale:
            try:
                attempted += await self.execute(request.id, source=request.state)
            except Exception:  # one request's trouble must not stop the others
                log.exception("reconciling a request failed", extra={"request_id": request.id})
        return attempted

    async def tick(self) -> None:
        """The periodic job: expiry, then the reconciler."""
        await self.expire_due()
        await self.reconcile()

    # -- reading ----------------------------------------------------------------------------------

    async def history(
        self, *, request_id: str | None = None, account: AccountIdentifier | None = None
    ) -> History:
        """One request with its trail, or an account's requests with theirs."""
        async with self.store.uow() as uow:
            if request_id is not None:
                found = await uow.requests.get(request_id)
                requests = [found] if found is not None else []
            else:
                assert account is not None
                keys = await self._account_keys(account)
                requests = await uow.requests.for_account(keys)
            trails = {r.id: tuple(await uow.audit.list(r.subject, limit=200)) for r in requests}
        return History(tuple(requests), trails)

    async def _account_keys(self, account: AccountIdentifier) -> list[str]:
        try:
            resolution = await self.lookup.resolve(account)
        except (UserError, ProviderError):  # not found or ambiguous: requests may still match
            return [account.value]
        keys = [resolution.account_id or ""] + [
            c.customer_id for c in resolution.customers.values()
        ]
        return [k for k in keys if k] or [account.value]

    async def open_for(self, snapshot: BillingSnapshot) -> list[ApprovalRequest]:
        """The account's requests not finished yet (pending, approved, executing, failed)."""
        keys = [snapshot.account.account_id or "", *snapshot.account.customer_ids.values()]
        async with self.store.uow() as uow:
            return await uow.requests.for_account(
                [k for k in keys if k], states=[*HOLDING, RequestState.FAILED], limit=10
            )


def _with_context(request: ApprovalRequest, extra: Mapping[str, Any]) -> ApprovalRequest:
    return replace(request, context={**request.context, **extra})


def _payment_context(payment: Payment, left: Money) -> dict[str, Any]:
    refunded = payment.amount_refunded or Money.zero(payment.amount.currency)
    return {
        "id": payment.id,
        "created_at": _when(payment.created_at),
        "amount": payment.amount.decimal_str(),
        "refunded": refunded.decimal_str(),
        "left": left.decimal_str(),
        "currency": payment.amount.currency,
        "invoice_id": payment.invoice_id,
    }


def _snapshot_context(
    snapshot: BillingSnapshot, provider: ProviderName, origin: str
) -> dict[str, Any]:
    """What finance sees next to the request: recent invoices, prior refunds, open disputes."""
    refunds = [r for p in snapshot.providers for r in p.refunds]
    refunds.sort(key=lambda r: r.created_at, reverse=True)
    disputes = [d for p in snapshot.providers for d in p.disputes if d.is_open]
    account = snapshot.account
    return {
        "origin": origin,
        "provider": provider,
        "account": {
            "account_id": account.account_id,
            "name": account.display_name,
            "email": account.email,
            "customers": dict(account.customer_ids),
        },
        "invoices": [
            {
                "id": inv.id,
                "number": inv.number,
                "provider": inv.provider,
                "date": _when(inv.created_at),
                "total": inv.total.decimal_str(),
                "currency": inv.total.currency,
                "status": inv.status.value,
            }
            for inv in snapshot.invoices[:CONTEXT_ITEMS]
        ],
        "refunds": [
            {
                "id": r.id,
                "date": _when(r.created_at),
                "amount": r.amount.decimal_str(),
                "currency": r.amount.currency,
                "status": r.status,
                "payment_id": r.payment_id,
            }
            for r in refunds[:CONTEXT_ITEMS]
        ],
        "disputes": [
            {
                "id": d.id,
                "amount": d.amount.decimal_str(),
                "currency": d.amount.currency,
                "reason": d.reason,
                "status": d.status,
                "evidence_due_by": _when(d.evidence_due_by),
            }
            for d in disputes[:CONTEXT_ITEMS]
        ],
        "unavailable": [f.provider for f in snapshot.failures],
    }
