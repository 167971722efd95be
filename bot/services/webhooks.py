"""Provider webhooks turned into alerts (issue 9): verified deliveries are stored (deduplicated
on the provider's event ID) before the provider gets its 2xx; the alert is made and posted right
after, in the background; a reconciler processes whatever a crash left stored but unprocessed.

Events handled (everything else is stored as "ignored" and answered 2xx):

| provider | event types | alert |
|---|---|---|
| Stripe | `invoice.payment_failed`, `charge.failed`, `invoice.overdue` | `payment_failed` |
| Stripe | `charge.dispute.created` | `dispute_opened` (amount, reason, evidence due date) |
| Stripe | `billing.alert.triggered` | `provider_alert` (a usage threshold) |
| Orb | `invoice.payment_failed` | `payment_failed` |
| Orb | `subscription.usage_exceeded`, `subscription.cost_exceeded` | `provider_alert` |
| Orb | `customer.credit_balance_depleted`, `customer.credit_balance_dropped` | `provider_alert` |
| Metronome | `alerts.*`, `invoice.billing_provider_error` | `provider_alert` |

A payment that fails again on a later day (a dunning retry) updates the alert of its first
failure (found by the invoice or charge ID among the alert's objects) instead of opening a new
one, so webhooks and scans agree on the period: the first failure's day.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from bot.domain.anomalies import AlertKind, Anomaly, Driver, Severity
from bot.domain.identifiers import IdentifierKind
from bot.domain.models import CustomerRecord, ProviderName
from bot.domain.money import Money
from bot.domain.ports import BillingProvider, MessageDelivery, PaymentOwners
from bot.domain.records import Store, WebhookEvent
from bot.services.alerts import record_anomaly

log = logging.getLogger("bot.webhooks")

STRIPE_FAILED = {"invoice.payment_failed", "charge.failed", "invoice.overdue"}
ORB_THRESHOLDS = {
    "subscription.usage_exceeded",
    "subscription.cost_exceeded",
    "customer.credit_balance_depleted",
    "customer.credit_balance_dropped",
}
#: Amounts at or above this (major units) make a webhook alert high severity.
HIGH_AMOUNT = Decimal(1000)
#: A delivery older than this and still unprocessed is the reconciler's.
RECONCILE_AFTER = timedelta(seconds=30)
#: Tries at finding an event's account before its alert goes out under the provider's own ID.
RESOLVE_ATTEMPTS = 5


class _RetryLater(Exception):
    """The event's account could not be looked up now; process the event again later."""


def event_id_of(source: str, payload: Mapping[str, Any]) -> str | None:
    """The provider's event ID (all three put it in `id`)."""
    value = payload.get("id")
    return str(value) if isinstance(value, str | int) and str(value) else None


def event_type_of(payload: Mapping[str, Any]) -> str:
    """The event's type (`type` in all three)."""
    return str(payload.get("type") or "")


def handled(source: str, event_type: str) -> bool:
    """True when `event_type` of `source` becomes an alert."""
    if source == "stripe":
        return event_type in STRIPE_FAILED or event_type in {
            "charge.dispute.created",
            "billing.alert.triggered",
        }
    if source == "orb":
        return event_type == "invoice.payment_failed" or event_type in ORB_THRESHOLDS
    if source == "metronome":
        return event_type.startswith("alerts.") or event_type == "invoice.billing_provider_error"
    return False


# --- small readers ------------------------------------------------------------------------------


def _obj(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _str(value: Any) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("id")
    return str(value) if isinstance(value, str | int) and str(value) else None


def _epoch(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _iso(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _stripe_money(minor: Any, currency: Any) -> Money | None:
    try:
        return Money.from_minor(int(minor), str(currency or "usd").lower())
    except (TypeError, ValueError, InvalidOperation):
        return None


def _decimal(value: Any) -> Decimal | None:
    try:
        return Decimal(str(value)) if value is not None and not isinstance(value, bool) else None
    except InvalidOperation:
        return None


def _severity(amount: Decimal) -> Severity:
    return Severity.HIGH if amount >= HIGH_AMOUNT else Severity.MEDIUM


@dataclass(frozen=True, slots=True)
class _Draft:
    """An alert a webhook describes, before its account is resolved."""

    customer_id: str | None
    account_id: str | None
    anomaly: Anomaly


def _anomaly(
    *, kind: AlertKind, severity: Severity, day: date, expected: Money, actual: Money,
    impact: Money, pct: Decimal | None, summary: str, why: str, drivers: Sequence[Driver],
    provider: ProviderName, refs: Sequence[str], fingerprint: str,
) -> Anomaly:  # fmt: skip
    return Anomaly(
        account_id="",
        kind=kind,
        severity=severity,
        period=day,
        expected=expected,
        actual=actual,
        impact=impact,
        impact_pct=pct,
        summary=summary,
        why=why,
        drivers=tuple(drivers),
        provider=provider,
        refs=tuple(r for r in refs if r),
        series=(),
        fingerprint=fingerprint,
        magnitude=impact.amount,
    )


def _day(moment: datetime) -> str:
    return f"{moment:%b} {moment.day}"


def stripe_draft(payload: Mapping[str, Any]) -> _Draft | None:
    """The alert a Stripe event describes (None: nothing to alert on)."""
    kind = event_type_of(payload)
    obj = _obj(_obj(payload.get("data")).get("object"))
    when = _epoch(payload.get("created")) or datetime.now(UTC)
    if kind in ("invoice.payment_failed", "invoice.overdue"):
        amount = _stripe_money(
            obj.get("amount_remaining", obj.get("amount_due")), obj.get("currency")
        )
        if amount is None or amount.amount <= 0:
            return None
        attempts = int(obj.get("attempt_count") or 1)
        number = obj.get("number") or obj.get("id")
        reason = (
            "went past due"
            if kind == "invoice.overdue"
            else f"payment failed ({attempts} attempt{'s' if attempts != 1 else ''})"
        )
        anomaly = _anomaly(
            kind=AlertKind.PAYMENT_FAILED,
            severity=Severity.HIGH if attempts >= 3 else _severity(amount.amount),
            day=when.date(), expected=amount, actual=Money.zero(amount.currency), impact=amount,
            pct=Decimal(100),
            summary=f"Invoice {number} for {amount.format()}: {reason} on {_day(when)}",
            why=f"Webhook: Stripe sent {kind} for invoice {number} (event {payload.get('id')}).",
            drivers=[Driver(label=f"invoice {number}", amount=amount, detail=reason)],
            provider="stripe", refs=[str(obj.get("id") or "")],
            fingerprint="payment_failed:invoice",
        )  # fmt: skip
        return _Draft(_str(obj.get("customer")), None, anomaly)
    if kind == "charge.failed":
        amount = _stripe_money(obj.get("amount"), obj.get("currency"))
        if amount is None or amount.amount <= 0:
            return None
        code = str(obj.get("failure_code") or "declined")
        message = str(obj.get("failure_message") or code)
        anomaly = _anomaly(
            kind=AlertKind.PAYMENT_FAILED, severity=_severity(amount.amount), day=when.date(),
            expected=amount, actual=Money.zero(amount.currency), impact=amount, pct=Decimal(100),
            summary=(f"Payment {obj.get('id')} of {amount.format()} failed on {_day(when)} "
                     f"({message})"),
            why=f"Webhook: Stripe sent charge.failed ({code}) (event {payload.get('id')}).",
            drivers=[Driver(label=f"{obj.get('id')} failed", amount=amount, detail=message)],
            provider="stripe",
            refs=[_str(obj.get("invoice")) or "", str(obj.get("id") or "")],
            fingerprint=f"payment_failed:{code}",
        )  # fmt: skip
        return _Draft(_str(obj.get("customer")), None, anomaly)
    if kind == "charge.dispute.created":
        amount = _stripe_money(obj.get("amount"), obj.get("currency"))
        if amount is None:
            return None
        created = _epoch(obj.get("created")) or when
        reason = str(obj.get("reason") or "general").replace("_", " ")
        due = _epoch(_obj(obj.get("evidence_details")).get("due_by"))
        due_text = f"; evidence due {_day(due)}" if due else ""
        status = str(obj.get("status") or "needs_response").replace("_", " ")
        urgent = due is not None and (due - datetime.now(UTC)) <= timedelta(days=3)
        anomaly = _anomaly(
            kind=AlertKind.DISPUTE_OPENED,
            severity=Severity.HIGH if urgent or amount.amount >= HIGH_AMOUNT else Severity.MEDIUM,
            day=created.date(), expected=Money.zero(amount.currency), actual=amount,
            impact=amount, pct=None,
            summary=(f"Dispute {obj.get('id')} opened {_day(created)} for {amount.format()} "
                     f"({reason}), {status}{due_text}"),
            why=f"Webhook: Stripe sent charge.dispute.created (event {payload.get('id')}).",
            drivers=[Driver(label=f"charge {_str(obj.get('charge'))}", amount=amount,
                            detail=f"{reason}{due_text.replace('; ', ', ')}")],
            provider="stripe", refs=[str(obj.get("id") or ""), _str(obj.get("charge")) or ""],
            fingerprint=f"dispute_opened:{obj.get('reason') or 'general'!s}",
        )  # fmt: skip
        return _Draft(_str(obj.get("customer")), None, anomaly)
    if kind == "billing.alert.triggered":
        customer = _str(obj.get("customer"))
        value = _decimal(obj.get("value")) or Decimal(0)
        title = str(_obj(obj.get("alert")).get("title") or "usage threshold")
        anomaly = _provider_alert(
            provider="stripe", day=when.date(), title=title, amount=Money(value, "usd"),
            detail=f"usage {value}", event_id=str(payload.get("id")), event_type=kind,
            refs=[_str(obj.get("alert")) or ""],
        )  # fmt: skip
        return _Draft(customer, None, anomaly)
    return None


def _provider_alert(
    *, provider: ProviderName, day: date, title: str, amount: Money, detail: str,
    event_id: str, event_type: str, refs: Sequence[str],
) -> Anomaly:  # fmt: skip
    label = {"stripe": "Stripe", "orb": "Orb", "metronome": "Metronome"}[provider]
    return _anomaly(
        kind=AlertKind.PROVIDER_ALERT, severity=Severity.MEDIUM, day=day,
        expected=Money.zero(amount.currency), actual=amount, impact=amount, pct=None,
        summary=f"{label} alert: {title} ({detail})",
        why=f"Webhook: {label} sent {event_type} (event {event_id}); the threshold is the one "
            f"configured in {label}.",
        drivers=[Driver(label=title, amount=amount if amount.amount else None, detail=detail)],
        provider=provider, refs=refs, fingerprint=f"provider_alert:{event_type}",
    )  # fmt: skip


def orb_draft(payload: Mapping[str, Any]) -> _Draft | None:
    """The alert an Orb event describes."""
    kind = event_type_of(payload)
    when = _iso(payload.get("created_at")) or datetime.now(UTC)
    if kind == "invoice.payment_failed":
        invoice = _obj(payload.get("invoice"))
        currency = str(invoice.get("currency") or "usd").lower()
        value = _decimal(invoice.get("amount_due")) or _decimal(invoice.get("total"))
        if value is None or value <= 0:
            return None
        amount = Money(value, currency)
        failed_at = _iso(invoice.get("payment_failed_at")) or when
        customer = _obj(invoice.get("customer"))
        number = invoice.get("invoice_number") or invoice.get("id")
        anomaly = _anomaly(
            kind=AlertKind.PAYMENT_FAILED, severity=_severity(value), day=failed_at.date(),
            expected=amount, actual=Money.zero(currency), impact=amount, pct=Decimal(100),
            summary=f"Invoice {number} for {amount.format()}: payment failed on {_day(failed_at)}",
            why=f"Webhook: Orb sent invoice.payment_failed (event {payload.get('id')}).",
            drivers=[Driver(label=f"invoice {number}", amount=amount, detail="payment failed")],
            provider="orb", refs=[str(invoice.get("id") or "")],
            fingerprint="payment_failed:invoice",
        )  # fmt: skip
        return _Draft(_str(customer.get("id")), customer.get("external_customer_id"), anomaly)
    if kind in ORB_THRESHOLDS:
        customer = _obj(payload.get("customer")) or _obj(
            _obj(payload.get("subscription")).get("customer")
        )
        props = _obj(payload.get("properties"))
        currency = str(customer.get("currency") or "usd").lower()
        value = (
            (_decimal(props.get("balance")) if "balance" in props else None)
            or _decimal(props.get("amount_threshold") or props.get("quantity_threshold"))
            or Decimal(0)
        )
        title = kind.split(".", 1)[1].replace("_", " ")
        detail = (
            ", ".join(
                f"{k.replace('_', ' ')} {v}"
                for k, v in props.items()
                if isinstance(v, str | int | float | Decimal)
            )[:200]
            or title
        )
        anomaly = _provider_alert(
            provider="orb", day=when.date(), title=title, amount=Money(value, currency),
            detail=detail, event_id=str(payload.get("id")), event_type=kind,
            refs=[_str(_obj(payload.get("subscription")).get("id")) or ""],
        )  # fmt: skip
        return _Draft(_str(customer.get("id")), customer.get("external_customer_id"), anomaly)
    return None


def metronome_draft(payload: Mapping[str, Any], *, received: datetime) -> _Draft | None:
    """The alert a Metronome event describes."""
    kind = event_type_of(payload)
    props = _obj(payload.get("properties"))
    customer = _str(props.get("customer_id"))
    when = _iso(props.get("timestamp")) or received
    if kind.startswith("alerts.") or kind == "invoice.billing_provider_error":
        value = _decimal(props.get("threshold")) or Decimal(0)
        title = str(props.get("alert_name") or kind.split(".", 1)[1].replace("_", " "))
        detail = ", ".join(
            f"{k.replace('_', ' ')} {v}"
            for k, v in props.items()
            if k not in ("customer_id",) and isinstance(v, str | int | float | Decimal)
        )[:200]
        anomaly = _provider_alert(
            provider="metronome", day=when.date(), title=title, amount=Money(value, "usd"),
            detail=detail or title, event_id=str(payload.get("id")), event_type=kind,
            refs=[_str(props.get("alert_id")) or _str(props.get("invoice_id")) or ""],
        )  # fmt: skip
        return _Draft(customer, None, anomaly)
    return None


# --- processing --------------------------------------------------------------------------------


class WebhookService:
    """Stores verified deliveries and turns them into alerts."""

    def __init__(
        self,
        *,
        store: Store,
        providers: Mapping[str, BillingProvider],
        channel: str | None,
        delivery: MessageDelivery | None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        resolve_timeout: float = 5.0,
    ) -> None:
        self.store = store
        self.providers = dict(providers)
        self.channel = channel
        self.delivery = delivery
        self.clock = clock
        self.resolve_timeout = resolve_timeout

    async def receive(self, source: str, payload: Mapping[str, Any]) -> WebhookEvent | None:
        """Store a verified delivery; the stored event to process now, or None for a duplicate
        (already stored: its first delivery is, or was, processed)."""
        event_id = event_id_of(source, payload)
        if event_id is None:
            raise ValueError("no event id")
        now = self.clock()
        async with self.store.uow() as uow:
            first = await uow.webhooks.store(
                source, event_id, type=event_type_of(payload), payload=payload, now=now
            )
            await uow.commit()
        if not first:
            return None
        return WebhookEvent(source, event_id, event_type_of(payload), payload, now, None, 0)

    async def process(self, event: WebhookEvent) -> str:
        """Make the event's alert (if it describes one) and tell on-call; the outcome."""
        async with self.store.uow() as uow:
            if not await uow.webhooks.begin(event.source, event.event_id):
                return "already processed"
            await uow.commit()
        outcome = "ignored"
        if handled(event.source, event.type):
            draft = self._draft(event)
            if draft is not None:
                try:
                    outcome = await self._record(
                        draft, last_try=event.attempts + 1 >= RESOLVE_ATTEMPTS
                    )
                except _RetryLater:
                    # Left unprocessed: the webhooks job tries again in a minute, so the alert
                    # is keyed by the account, not by whatever ID a failing lookup left us.
                    return "retry later"
            else:
                outcome = "nothing to alert"
        async with self.store.uow() as uow:
            await uow.webhooks.mark_processed(
                event.source, event.event_id, now=self.clock(), outcome=outcome
            )
            await uow.commit()
        return outcome

    async def reconcile(self, *, limit: int = 100) -> int:
        """Process stored events a crash left unprocessed; how many."""
        cutoff = self.clock() - RECONCILE_AFTER
        async with self.store.uow() as uow:
            events = await uow.webhooks.unprocessed(received_before=cutoff, limit=limit)
        done = 0
        for event in events:
            try:
                await self.process(event)
                done += 1
            except Exception:
                log.exception("reprocessing a webhook failed", extra={"event": event.event_id})
        return done

    def _draft(self, event: WebhookEvent) -> _Draft | None:
        try:
            if event.source == "stripe":
                return stripe_draft(event.payload)
            if event.source == "orb":
                return orb_draft(event.payload)
            if event.source == "metronome":
                return metronome_draft(event.payload, received=event.received_at)
        except (KeyError, TypeError, ValueError, InvalidOperation, AttributeError):
            log.warning("webhook payload unreadable", extra={"event": event.event_id})
        return None

    async def _account(self, provider: str, draft: _Draft, *, last_try: bool = True) -> str:
        """Our account ID for the event's customer (the customer ID where none is found). When
        the provider cannot be asked and this is not the `last_try`, raises `_RetryLater`."""
        if draft.account_id:
            return str(draft.account_id)
        client = self.providers.get(provider)
        customer_id = draft.customer_id
        record: CustomerRecord | None = None
        kinds = {
            "stripe": IdentifierKind.STRIPE_CUSTOMER,
            "orb": IdentifierKind.ORB_CUSTOMER,
            "metronome": IdentifierKind.METRONOME_CUSTOMER,
        }
        try:
            async with asyncio.timeout(self.resolve_timeout):
                if customer_id and client is not None:
                    found = await client.find_customers(kinds[provider], customer_id)
                    record = found[0] if found else None
                elif client is not None and isinstance(client, PaymentOwners):
                    charge = next(
                        (r for r in draft.anomaly.refs if r.startswith(("ch_", "py_"))), None
                    )
                    record = await client.customer_of_payment(charge) if charge else None
        except Exception:
            log.warning("could not resolve a webhook's account", exc_info=True)
            if not last_try:
                raise _RetryLater() from None
            # After RESOLVE_ATTEMPTS the alert goes out with the provider's ID, not at all.
        if record is not None and record.account_id:
            return record.account_id
        if record is not None:
            return record.customer_id
        return customer_id or next(iter(draft.anomaly.refs), "unknown")

    async def _record(self, draft: _Draft, *, last_try: bool = True) -> str:
        anomaly = draft.anomaly
        account = await self._account(anomaly.provider, draft, last_try=last_try)
        anomaly = replace(anomaly, account_id=account)
        now = self.clock()
        async with self.store.uow() as uow:
            if anomaly.kind is AlertKind.PAYMENT_FAILED:
                earlier = await uow.alerts.listing(statuses=None, limit=200, now=now)
                for alert in earlier:
                    if (
                        alert.account_id == account
                        and alert.kind == anomaly.kind.value
                        and alert.period < anomaly.period
                        and set(alert.payload.get("refs") or []) & set(anomaly.refs)
                    ):
                        anomaly = replace(anomaly, period=alert.period)
                        break
            recorded = await record_anomaly(
                uow, anomaly, source="webhook", now=now, channel=self.channel
            )
            await uow.commit()
        if recorded.notified and self.delivery is not None:
            self.delivery.wake()
        return "alert created" if recorded.new else "alert updated"
