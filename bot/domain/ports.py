"""Ports the domain declares and the adapters implement (typing.Protocol, no inheritance)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol, runtime_checkable

from bot.domain.anomalies import Anomaly
from bot.domain.identifiers import IdentifierKind
from bot.domain.models import (
    CustomerRecord,
    Payment,
    ProviderName,
    ProviderSnapshot,
    WriteResult,
)
from bot.domain.money import Money
from bot.domain.records import DigestRenderer, MessageRenderer
from bot.domain.tickets import (
    NoteWritten,
    Ticket,
    TicketComment,
    TicketOrganization,
    TicketUser,
)


class BillingProvider(Protocol):
    """Read access to one billing provider (Stripe, Orb, Metronome, or a sandbox one)."""

    name: ProviderName

    async def find_customers(self, kind: IdentifierKind, value: str) -> list[CustomerRecord]:
        """Customers matching an identifier of `kind`; [] when none match or the kind is not
        one this provider can search by. Raises `ProviderError` on provider faults."""
        ...

    async def get_snapshot(self, customer: CustomerRecord) -> ProviderSnapshot:
        """The customer's billing state: subscriptions, 12+ months of invoices with their lines,
        payments, refunds, disputes, balances and daily usage. Raises `ProviderError`."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class CustomerLister(Protocol):
    """A provider that can list every customer, a page at a time (the anomaly scan's input).

    Separate from `BillingProvider` so fakes that only look accounts up need not implement it."""

    name: ProviderName

    def customer_pages(self, *, page_size: int = 100) -> AsyncIterator[list[CustomerRecord]]:
        """Every customer, `page_size` at a time, streaming (one page in memory). Raises
        `ProviderError` on provider faults."""
        ...


@runtime_checkable
class ScanScoped(Protocol):
    """A provider that can read less per account for an anomaly scan than a lookup reads.

    Separate from `BillingProvider` (fakes that only look accounts up need not implement it);
    the scan uses the view when a provider offers one."""

    name: ProviderName

    def scan_view(self, *, invoices: int, payment_days: int) -> BillingProvider:
        """The same provider reading only the newest `invoices` invoices and `payment_days`
        days of payments per snapshot (usage as configured), sharing its HTTP client."""
        ...


@runtime_checkable
class PaymentOwners(Protocol):
    """A provider that can say whose payment a charge is (a Stripe dispute names only its
    charge)."""

    name: ProviderName

    async def customer_of_payment(self, payment_id: str) -> CustomerRecord | None:
        """The customer who made payment `payment_id`; None when unknown."""
        ...


class ChartRenderer(Protocol):
    """Draws an anomaly's series (usage days or invoices) as a PNG: the expected band, the
    actual values, the anomaly marked."""

    def render(self, anomaly: Anomaly) -> bytes | None:
        """PNG bytes, or None when the anomaly has no series to draw."""
        ...


class LLMClient(Protocol):
    """A chat model that turns a system and a user prompt into text. No tools, ever."""

    # ASYNC109: `timeout` is part of the port on purpose: the adapter hands it to the HTTP layer
    # per request, and callers still bound the whole call with `asyncio.timeout`.
    async def complete(
        self,
        *,
        system: str,
        user: str,
        max_tokens: int,
        timeout: float,  # noqa: ASYNC109
    ) -> str:
        """The model's reply text; raises `LLMUnavailable` on any failure."""
        ...


class MessageDelivery(Protocol):
    """The outbox worker as the rest of the app sees it (the Slack edge implements it).

    Services enqueue `OutgoingMessage`s with `uow.outbox.enqueue` in the transaction that makes
    the state change, then call `wake()`; feature modules register the renderers that turn an
    entry's payload into blocks at delivery time."""

    def register_renderer(self, name: str, render: MessageRenderer) -> None:
        """Build messages whose entry names `render=name`."""
        ...

    def register_digest(self, prefix: str, render: DigestRenderer, *, min_batch: int = 3) -> None:
        """Merge `min_batch` or more due entries whose `digest_key` starts with `prefix`."""
        ...

    async def health(self) -> dict[str, Any]:
        """Counts by status and the latest permanent failures, for /healthz."""
        ...

    def wake(self) -> None:
        """Something was enqueued: deliver soon instead of at the next poll."""
        ...

    async def drain(self, timeout: float = 10.0) -> bool:  # noqa: ASYNC109 - a bounded wait
        """Deliver everything due now; False if `timeout` passed first."""
        ...


@runtime_checkable
class BillingWriter(Protocol):
    """Money-moving writes, called only by the approval flow after approval.

    Every call carries `idempotency_key` (`models.idempotency_key(request_id, action)`:
    `bt:{request_id}:{action}`, at most 64 characters; anything else is a ValueError) and records
    `request_id` on the provider object. Outcomes:

    - a `WriteResult` (`replayed=True` when the provider answered from its idempotency cache or
      the object already existed);
    - `ProviderOutcomeUnknown`: it may or may not have happened; retry later with the SAME key,
      or look for it with `find_write`;
    - `ProviderIdempotencyConflict`: the key was used with a different body (a bug);
    - `ProviderRequestError` / `ProviderNotFound`: the provider refused; the message is safe to
      show finance; nothing happened;
    - `ProviderUnavailable` / `ProviderRateLimited` / `ProviderAuthError`: the provider certainly
      did nothing (never connected, or refused every attempt before doing anything).
    """

    name: ProviderName

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
        """Refund `amount` of a Stripe charge (`ch_…`) or payment intent (`pi_…`) of `customer`.
        Only Stripe moves money back; Orb and Metronome raise `ProviderRequestError`."""
        ...

    async def grant_credit(
        self,
        *,
        customer: CustomerRecord,
        amount: Money,
        request_id: str,
        idempotency_key: str,
        description: str,
    ) -> WriteResult:
        """Credit `amount` to `customer`: a Stripe customer balance credit, an Orb credit ledger
        increment, or a Metronome customer credit."""
        ...

    async def find_write(
        self,
        *,
        customer: CustomerRecord,
        kind: Literal["refund", "credit"],
        request_id: str,
        payment_id: str | None = None,
    ) -> WriteResult | None:
        """The provider object an earlier attempt made for `request_id`, if any (looks for the
        effect; used by the reconciler when a key may have expired or the outcome was unknown)."""
        ...


@runtime_checkable
class PaymentReader(Protocol):
    """What the approval flow reads about one payment before a refund is requested (Stripe)."""

    name: ProviderName

    async def get_payment(self, payment_id: str) -> Payment:
        """The charge `ch_…` or payment intent `pi_…` with what was refunded so far; raises
        `ProviderNotFound` for an unknown ID."""
        ...

    async def payment_for_invoice(self, invoice_id: str) -> str | None:
        """The payment (`ch_…`/`pi_…`) that paid `invoice_id`, None when nothing paid it;
        raises `ProviderNotFound` for an unknown invoice."""
        ...


class GroupDirectory(Protocol):
    """Who is in a user group (Slack `S…` groups; the Slack edge implements it)."""

    async def members(self, group_id: str) -> frozenset[str]:
        """The user IDs in `group_id`; raises on any failure (callers fail closed)."""
        ...


class TicketSource(Protocol):
    """Read access to a ticketing system (Zendesk, or the sandbox's Zendesk), and the one write
    it allows: an internal note. Raises `TicketNotFound` for a missing ticket and `ProviderError`s
    (provider `zendesk`) for faults."""

    #: Hosts whose ticket links name this instance's tickets (`acme.zendesk.com`).
    hosts: tuple[str, ...]
    #: The field holding our account ID when `ZENDESK_ACCOUNT_FIELD` is not set (the sandbox's).
    account_field: str | None

    def agent_url(self, ticket_id: int) -> str:
        """The ticket's page in the agent UI."""
        ...

    async def ticket(self, ticket_id: int) -> Ticket:
        """The ticket."""
        ...

    async def comments(self, ticket_id: int) -> list[TicketComment]:
        """Every comment of the ticket, oldest first (all pages)."""
        ...

    async def user(self, user_id: int) -> TicketUser | None:
        """A user, or None when it does not exist (deleted)."""
        ...

    async def organization(self, organization_id: int) -> TicketOrganization | None:
        """An organization, or None when it does not exist."""
        ...

    async def search_tickets(self, query: str, *, limit: int = 25) -> list[Ticket]:
        """Tickets matching a Zendesk search query (`requester:jane@acme.com status<solved`)."""
        ...

    async def add_internal_note(self, ticket_id: int, body: str) -> NoteWritten:
        """Add `body` as a private comment and change nothing else. Never retried: raises
        `TicketNoteUnknown` when the outcome cannot be known (timeout, dropped connection, 5xx),
        and other `ProviderError`s when the note was certainly not added."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
