"""An in-memory Stripe for service-level tests of the approval flow: a `BillingProvider`, a
`PaymentReader` and a `BillingWriter` at once, as strict as Stripe where it matters (a refund
above what is left is refused; one idempotency key makes one refund; a key used with another
amount is a conflict), counting every write, and scriptable to fail."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from bot.domain.identifiers import IdentifierKind
from bot.domain.models import (
    CustomerRecord,
    Payment,
    PaymentStatus,
    ProviderName,
    ProviderSnapshot,
    WriteKind,
    WriteResult,
)
from bot.domain.money import Money
from bot.errors import (
    ProviderIdempotencyConflict,
    ProviderNotFound,
    ProviderOutcomeUnknown,
    ProviderRequestError,
)

T0 = datetime(2026, 11, 1, tzinfo=UTC)


@dataclass
class FakeStripe:
    """Customers, their payments and the refunds and credits made, keyed like Stripe."""

    name: ProviderName = "stripe"
    customers: dict[str, CustomerRecord] = field(default_factory=dict)
    payments: dict[str, Payment] = field(default_factory=dict)
    invoices: dict[str, str] = field(default_factory=dict)  # in_… -> the paying ch_…
    writes: dict[str, WriteResult] = field(default_factory=dict)  # by idempotency key
    bodies: dict[str, tuple[str, Decimal]] = field(default_factory=dict)
    #: Every write call received (idempotency key), replays included.
    calls: list[str] = field(default_factory=list)
    #: Script: the next N writes raise this instead (after doing the write when `after`).
    fail_next: list[tuple[Exception, bool]] = field(default_factory=list)
    find_fails: bool = False
    write_delay: float = 0.0

    def add_customer(
        self, cid: str, account: str | None, *, email: str | None = None, currency: str = "usd"
    ) -> CustomerRecord:
        """Add a customer."""
        record = CustomerRecord("stripe", cid, account, name=f"{account} Inc", email=email,
                                currency=currency)  # fmt: skip
        self.customers[cid] = record
        return record

    def add_payment(
        self, pid: str, cid: str, amount: str, *, currency: str = "usd", refunded: str = "0",
        days_ago: int = 1, disputed: bool = False, invoice: str | None = None,
    ) -> Payment:  # fmt: skip
        """Add a successful payment."""
        payment = Payment(
            "stripe", pid, cid, Money(Decimal(amount), currency), PaymentStatus.SUCCEEDED,
            T0 - timedelta(days=days_ago), amount_refunded=Money(Decimal(refunded), currency),
            disputed=disputed, invoice_id=invoice,
        )  # fmt: skip
        self.payments[pid] = payment
        if invoice:
            self.invoices[invoice] = pid
        return payment

    def refunds(self, payment_id: str | None = None) -> list[WriteResult]:
        """The refunds made (of `payment_id`)."""
        return [
            w
            for w in self.writes.values()
            if w.kind == "refund" and (payment_id is None or w.raw.get("charge") == payment_id)
        ]

    # -- BillingProvider ---------------------------------------------------------------------

    async def find_customers(self, kind: IdentifierKind, value: str) -> list[CustomerRecord]:
        """By email, account ID or customer ID."""
        if kind is IdentifierKind.EMAIL:
            return [c for c in self.customers.values() if c.email == value]
        if kind is IdentifierKind.ACCOUNT_ID:
            return [c for c in self.customers.values() if c.account_id == value]
        if kind is IdentifierKind.STRIPE_CUSTOMER:
            return [c for c in self.customers.values() if c.customer_id == value]
        return []

    def _current(self, payment: Payment) -> Payment:
        """`payment` with the refunds made since added to what it says was refunded."""
        made = sum((r.amount.amount for r in self.refunds(payment.id)), Decimal(0))
        before = payment.amount_refunded or Money.zero(payment.amount.currency)
        return replace(payment, amount_refunded=before + Money(made, before.currency))

    async def get_snapshot(self, customer: CustomerRecord) -> ProviderSnapshot:
        """The customer's payments, newest first."""
        mine = [
            self._current(p)
            for p in self.payments.values()
            if p.customer_id == customer.customer_id
        ]
        mine.sort(key=lambda p: p.created_at, reverse=True)
        return ProviderSnapshot("stripe", customer, payments=tuple(mine))

    async def aclose(self) -> None:
        """Nothing to close."""

    # -- PaymentReader -----------------------------------------------------------------------

    async def get_payment(self, payment_id: str) -> Payment:
        """The payment, or Stripe's 404."""
        if payment_id not in self.payments:
            raise ProviderNotFound("stripe", f"No such charge: '{payment_id}'", status=404)
        return self._current(self.payments[payment_id])

    async def payment_for_invoice(self, invoice_id: str) -> str | None:
        """The charge that paid the invoice."""
        if invoice_id not in self.invoices:
            raise ProviderNotFound("stripe", f"No such invoice: '{invoice_id}'", status=404)
        return self.invoices[invoice_id]

    # -- BillingWriter -----------------------------------------------------------------------

    async def _write(
        self, kind: WriteKind, key: str, request_id: str, target: str, amount: Money
    ) -> WriteResult:
        self.calls.append(key)
        if self.write_delay:
            await asyncio.sleep(self.write_delay)
        fault = self.fail_next.pop(0) if self.fail_next else None
        if fault is not None and not fault[1]:
            raise fault[0]
        if key in self.bodies and self.bodies[key] != (target, amount.amount):
            raise ProviderIdempotencyConflict("stripe", "Keys for idempotent requests can only "
                                              "be used with the same parameters")  # fmt: skip
        if key in self.writes:
            result = self.writes[key]
            result = WriteResult(result.provider, result.kind, result.object_id, result.amount,
                                 result.status, result.request_id, True, result.raw)  # fmt: skip
        else:
            if kind == "refund":
                left = self._current(self.payments[target]).refundable
                if amount > left:
                    raise ProviderRequestError(
                        "stripe", f"Refund amount ({amount}) is greater than unrefunded amount "
                        f"on charge ({left})", status=400,
                    )  # fmt: skip
            object_id = f"{'re' if kind == 'refund' else 'cbtxn'}_{len(self.writes) + 1:04d}"
            result = WriteResult("stripe", kind, object_id, amount, "succeeded", request_id,
                                 raw={"charge": target, "request_id": request_id})  # fmt: skip
            self.writes[key] = result
            self.bodies[key] = (target, amount.amount)
        if fault is not None:
            raise fault[0]
        return result

    async def refund_payment(
        self, *, customer: CustomerRecord, payment_id: str, amount: Money, request_id: str,
        idempotency_key: str, reason: str | None = None,
    ) -> WriteResult:  # fmt: skip
        """A refund of `payment_id`, once per key; refused for another customer's payment."""
        payment = self.payments.get(payment_id)
        if payment is None or payment.customer_id != customer.customer_id:
            raise ProviderRequestError("stripe", f"{payment_id} belongs to another customer")
        return await self._write("refund", idempotency_key, request_id, payment_id, amount)

    async def grant_credit(
        self, *, customer: CustomerRecord, amount: Money, request_id: str, idempotency_key: str,
        description: str,
    ) -> WriteResult:  # fmt: skip
        """A balance credit, once per key."""
        return await self._write(
            "credit", idempotency_key, request_id, customer.customer_id, amount
        )

    async def find_write(
        self, *, customer: CustomerRecord, kind: WriteKind, request_id: str,
        payment_id: str | None = None,
    ) -> WriteResult | None:  # fmt: skip
        """The object an earlier attempt made for `request_id`."""
        if self.find_fails:
            raise ProviderOutcomeUnknown("stripe", "Stripe is unavailable")
        for result in self.writes.values():
            if result.request_id == request_id and result.kind == kind:
                return WriteResult(result.provider, result.kind, result.object_id, result.amount,
                                   result.status, result.request_id, True, result.raw)  # fmt: skip
        return None


def stocked() -> FakeStripe:
    """Two USD accounts with payments, one JPY account, one shared email, a disputed charge."""
    stripe = FakeStripe()
    stripe.add_customer("cus_a", "acct_a", email="a@example.com")
    stripe.add_customer("cus_b", "acct_b", email="b@example.com")
    stripe.add_customer("cus_y", "acct_yen", email="yen@example.com", currency="jpy")
    stripe.add_customer("cus_s1", "acct_s1", email="shared@example.com")
    stripe.add_customer("cus_s2", "acct_s2", email="shared@example.com")
    stripe.add_payment("ch_a1", "cus_a", "100.00", invoice="in_a1")
    stripe.add_payment("ch_a2", "cus_a", "40.00", refunded="15.00", days_ago=5)
    stripe.add_payment("ch_b1", "cus_b", "60.00")
    stripe.add_payment("ch_bd", "cus_b", "80.00", disputed=True, days_ago=3)
    stripe.add_payment("ch_y1", "cus_y", "5000", currency="jpy")
    # Large and newest (the default payment): many requests fit before it is all held.
    stripe.add_payment("ch_abig", "cus_a", "1000000.00", days_ago=0)
    stripe.add_payment("ch_bbig", "cus_b", "1000000.00", days_ago=0)
    return stripe
