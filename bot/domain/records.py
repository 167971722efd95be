"""What the application stores, and the storage ports: the unit of work and its repositories.

Pure: the dataclasses and `typing.Protocol`s here import no SQL module. `bot/storage/` implements
them with SQLAlchemy; tests may implement them with in-memory fakes.

Usage (the service layer commits; anything not committed is rolled back on exit)::

    async with uow_factory() as uow:
        if await uow.events.mark_processed("slack", event_id):
            await uow.audit.append(event)
            await uow.commit()
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Literal, Protocol, Self

from bot.domain.approvals import ApprovalRequest, RequestState


def _empty_detail() -> Mapping[str, Any]:
    return {}


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One append-only audit record: who did what to which subject, from which Slack request.

    `id` is None until stored. `detail` is JSON-serialisable data (Decimal and datetime values
    are stored as strings). `at` is an aware datetime (stored and read back as UTC).
    """

    id: int | None
    at: datetime
    actor: str
    action: str
    subject: str
    detail: Mapping[str, Any] = field(default_factory=_empty_detail)
    slack_request: str | None = None


@dataclass(frozen=True, slots=True)
class AccountLink:
    """A cached answer to "which customer of `provider` does `identifier` name?"."""

    identifier: str
    account_id: str | None
    provider: str
    customer_id: str
    updated_at: datetime


#: What an outbox entry asks of Slack: post a message in a channel, update a message posted
#: earlier (found by its `ref`), or post a direct message to a user.
DeliveryOp = Literal["post", "update", "dm"]


def _empty_payload() -> Mapping[str, Any]:
    return {}


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A Slack message to deliver durably, enqueued in the same transaction as the state change
    it announces (an approval request, a decision, an alert), delivered by the outbox worker.

    - `key`: unique per delivery; enqueuing the same key twice stores it once.
    - `ref`: names the message for later updates (`post` stores its `ts` under `ref`; `update`
      edits the message posted under `ref`). Entries with the same `ref` go out in order.
    - `render` + `payload`: a renderer registered by the Slack edge builds the text and blocks at
      delivery time from current state (so a late post already shows a later decision); without
      `render`, `payload` holds `text` and `blocks` as they are.
    - `digest_key`: entries sharing it that are due together may be merged into one message by the
      digest renderer registered for its prefix (alert bursts).
    - `channel`: the channel for `post`; the user ID for `dm`; unused for `update`.
    """

    key: str
    op: DeliveryOp
    channel: str | None = None
    ref: str | None = None
    thread_ref: str | None = None
    render: str | None = None
    payload: Mapping[str, Any] = field(default_factory=_empty_payload)
    digest_key: str | None = None


@dataclass(frozen=True, slots=True)
class RenderedMessage:
    """What a renderer builds for an outgoing message: fallback text, Block Kit blocks, and
    files (PNG charts: filename, title, content) shown in the message's thread."""

    text: str
    blocks: Sequence[Mapping[str, Any]] = ()
    files: Sequence[tuple[str, str, bytes]] = ()
    #: A reply in a thread that is also sent to the channel (Slack's `reply_broadcast`).
    broadcast: bool = False


#: Builds a message from an entry's payload at delivery time (may raise `SkipMessage`).
MessageRenderer = Callable[[Mapping[str, Any]], Awaitable[RenderedMessage]]
#: Builds one message from the payloads of a burst of entries sharing a digest key.
DigestRenderer = Callable[[Sequence[Mapping[str, Any]]], Awaitable[RenderedMessage]]


class SkipMessage(Exception):
    """Raised by a renderer when its message is no longer wanted (the entry counts as sent)."""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A stored outgoing message and its delivery state."""

    id: int
    message: OutgoingMessage
    status: Literal["pending", "sent", "failed"]
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    last_error: str | None = None
    sent_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PostedMessage:
    """Where the outbox posted the message named `ref`."""

    ref: str
    channel: str
    ts: str


class Outbox(Protocol):
    """Durable outgoing Slack messages (the Slack edge's worker delivers them)."""

    async def enqueue(self, message: OutgoingMessage, *, now: datetime) -> bool:
        """Store `message` for delivery; False when its `key` was enqueued before."""
        ...

    async def claim_due(
        self, *, now: datetime, holder: str, lease: float, limit: int
    ) -> list[OutboxEntry]:
        """Claim up to `limit` pending entries due by `now` for `lease` seconds, oldest first,
        skipping entries whose `ref` has an older entry still pending (per-ref order). Entries
        another holder claimed and still holds are skipped."""
        ...

    async def claim_digest(
        self, digest_key: str, *, now: datetime, holder: str, lease: float, limit: int = 50
    ) -> list[OutboxEntry]:
        """Claim the due entries sharing `digest_key` that nobody else holds (plus those this
        holder already claimed), oldest first."""
        ...

    async def has_failed_post(self, ref: str) -> bool:
        """True when the post that would have created the message `ref` failed for good."""
        ...

    async def mark_sent(self, entry_ids: Sequence[int], *, now: datetime) -> None:
        """Record delivery."""
        ...

    async def retry_later(self, entry_id: int, *, at: datetime, error: str) -> None:
        """Release the claim and try again at `at`."""
        ...

    async def mark_failed(self, entry_id: int, *, now: datetime, error: str) -> None:
        """Give up on an entry (a permanent Slack error)."""
        ...

    async def remember_post(self, posted: PostedMessage, *, now: datetime) -> None:
        """Store where the message `ref` was posted."""
        ...

    async def posted(self, ref: str) -> PostedMessage | None:
        """Where the message `ref` was posted, if it was."""
        ...

    async def stats(self) -> Mapping[str, int]:
        """Entry counts by status (`pending`, `sent`, `failed`)."""
        ...

    async def failures(self, limit: int = 5) -> list[OutboxEntry]:
        """The latest failed entries."""
        ...


class Leases(Protocol):
    """Named, expiring leases: one replica at a time holds `name` (a scan, the reconciler)."""

    async def acquire(self, name: str, *, holder: str, now: datetime, ttl: float) -> bool:
        """Take or renew `name` for `ttl` seconds; True when `holder` has it now. Atomic: of many
        concurrent callers exactly one wins; an expired lease is taken over."""
        ...

    async def release(self, name: str, *, holder: str) -> None:
        """Give `name` up (only if `holder` holds it)."""
        ...


class ProcessedEvents(Protocol):
    """Slack event and webhook IDs already handled, for deduplication."""

    async def mark_processed(self, source: str, event_id: str) -> bool:
        """Record `(source, event_id)`; True the first time, False for a duplicate. Atomic under
        concurrency: of many simultaneous calls exactly one gets True (once committed)."""
        ...

    async def prune(self, older_than: datetime) -> int:
        """Forget IDs received before `older_than`; returns how many were removed."""
        ...


class AuditLog(Protocol):
    """The append-only audit trail: there is no way to change or remove an event."""

    async def append(self, event: AuditEvent) -> int:
        """Store `event` (its `id` is ignored) and return the new event's id."""
        ...

    async def list(self, subject: str | None = None, limit: int = 100) -> list[AuditEvent]:
        """The latest `limit` events (about `subject` if given), oldest first."""
        ...

    async def since(
        self, at: datetime | None = None, *, after_id: int = 0, limit: int = 1000
    ) -> Sequence[AuditEvent]:
        """Up to `limit` events recorded at or after `at` with an id above `after_id`, oldest
        first (page with the last id seen), for exports."""
        ...


class AccountLinks(Protocol):
    """Cache of identifier → provider customer resolutions."""

    async def get(self, identifier: str) -> list[AccountLink]:
        """The cached links for `identifier`, one per provider, ordered by provider."""
        ...

    async def put(self, links: Sequence[AccountLink]) -> None:
        """Insert or replace links, keyed on `(identifier, provider)`."""
        ...

    async def invalidate(self, identifier: str) -> None:
        """Forget every cached link for `identifier`."""
        ...


class UnitOfWork(Protocol):
    """One transaction over the repositories: rolled back on exit unless `commit()` was called."""

    @property
    def events(self) -> ProcessedEvents:
        """Processed event IDs."""
        ...

    @property
    def audit(self) -> AuditLog:
        """The audit log."""
        ...

    @property
    def links(self) -> AccountLinks:
        """The account links cache."""
        ...

    @property
    def outbox(self) -> Outbox:
        """Outgoing Slack messages."""
        ...

    @property
    def leases(self) -> Leases:
        """Named leases for jobs that one replica runs at a time."""
        ...

    @property
    def cases(self) -> Cases:
        """The case log (DESIGN §11)."""
        ...

    @property
    def ticket_notes(self) -> TicketNotes:
        """Internal notes drafted for tickets and their posting state (DESIGN §10.2)."""
        ...

    @property
    def requests(self) -> ApprovalRequests:
        """Refund and credit requests and their approvals."""
        ...

    @property
    def alerts(self) -> Alerts:
        """Anomaly alerts, feedback and suppressions."""
        ...

    @property
    def scans(self) -> Scans:
        """Scan runs and their work items."""
        ...

    @property
    def webhooks(self) -> Webhooks:
        """Received provider webhooks."""
        ...

    async def commit(self) -> None:
        """Make everything done in this unit of work durable."""
        ...

    async def rollback(self) -> None:
        """Discard everything done since the last commit."""
        ...

    async def __aenter__(self) -> Self:
        """Begin the unit of work."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Roll back whatever was not committed and release the connection."""
        ...


#: Makes a fresh unit of work; one per use case, never shared between tasks.
UnitOfWorkFactory = Callable[[], UnitOfWork]


class Store(Protocol):
    """The database as the application sees it: units of work, a health check, shutdown."""

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        ...

    def uow(self) -> UnitOfWork:
        """A fresh unit of work (one per use case, never shared between tasks)."""
        ...

    # The timeout is part of the contract (/healthz must answer quickly), hence the parameter.
    async def ping(self, timeout: float = 2.0) -> bool:  # noqa: ASYNC109
        """True when the database answers within `timeout` seconds; never raises."""
        ...

    async def dispose(self) -> None:
        """Close every pooled connection."""
        ...


# --- cases (DESIGN §11) and Zendesk notes (§10.2) ------------------------------------------------

#: Where a case came from.
CaseSource = Literal["command", "mention", "ticket", "alert", "button"]
#: What the bot did.
CaseKind = Literal["status", "explain", "draft", "ticket", "refund", "credit", "alert"]


@dataclass(frozen=True, slots=True)
class CaseCause:
    """One root cause of a case: a finding kind (or an alert kind) and the money involved
    (absolute, in major units of `currency`)."""

    cause: str
    amount: Decimal
    currency: str


@dataclass(frozen=True, slots=True)
class CaseRecord:
    """One piece of triage: which account, when, from where, about which ticket or invoice, its
    top causes with their amounts, and any refund/credit request or alert it is about.

    Holds IDs, kinds and amounts only; the one free text is a request's short `reason`.
    `dedupe_key`: recording the same key twice stores one case (Slack retries, repeated looks).
    """

    at: datetime
    source: str
    kind: str
    account_id: str | None
    causes: tuple[CaseCause, ...] = ()
    ticket_id: str | None = None
    invoice_id: str | None = None
    request_id: str | None = None
    request_kind: str | None = None
    request_reason: str | None = None
    request_status: str | None = None
    request_amount: Decimal | None = None
    request_currency: str | None = None
    decided_at: datetime | None = None
    alert_id: str | None = None
    alert_kind: str | None = None
    alert_feedback: str | None = None
    dedupe_key: str | None = None


@dataclass(frozen=True, slots=True)
class CauseTally:
    """Cases of one cause (in one currency) in a window."""

    cause: str
    currency: str
    cases: int
    accounts: int
    amount: Decimal


@dataclass(frozen=True, slots=True)
class RecurringTally:
    """The same cause on the same account, on `cases` distinct invoices or tickets."""

    account_id: str
    cause: str
    cases: int
    examples: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RequestCase:
    """A refund or credit request as its case recorded it."""

    request_id: str
    kind: str
    reason: str | None
    status: str | None
    amount: Decimal | None
    currency: str | None
    created_at: datetime
    decided_at: datetime | None


@dataclass(frozen=True, slots=True)
class AlertTally:
    """Alerts of one kind: how many, and how many were judged useful / judged at all."""

    kind: str
    alerts: int
    useful: int
    judged: int


class Cases(Protocol):
    """The case log and the aggregates the recurring-issue report is computed from."""

    async def record(self, case: CaseRecord) -> int | None:
        """Store `case`; its ID, or None when its `dedupe_key` was stored before."""
        ...

    async def update_request(
        self, request_id: str, *, status: str, decided_at: datetime | None = None,
        amount: Decimal | None = None,
    ) -> int:  # fmt: skip
        """Record a request's outcome on its case; the number of cases updated."""
        ...

    async def update_alert(self, alert_id: str, *, feedback: str) -> int:
        """Record the feedback on an alert's case; the number of cases updated."""
        ...

    async def count(self, since: datetime, until: datetime) -> int:
        """Cases recorded in `[since, until)`."""
        ...

    async def causes(self, since: datetime, until: datetime) -> list[CauseTally]:
        """Cases, accounts and money per cause and currency in `[since, until)`."""
        ...

    async def recurring(
        self, since: datetime, until: datetime, *, min_cases: int = 2, limit: int = 50
    ) -> list[RecurringTally]:
        """(account, cause) pairs seen on `min_cases`+ distinct invoices or tickets, most first."""
        ...

    async def top_accounts(
        self, cause: str, since: datetime, until: datetime, *, limit: int = 3
    ) -> list[str]:
        """The accounts with the most cases of `cause` in the window."""
        ...

    async def requests(self, since: datetime, until: datetime) -> list[RequestCase]:
        """Refund and credit requests recorded in the window."""
        ...

    async def alerts(self, since: datetime, until: datetime) -> list[AlertTally]:
        """Alerts per kind in the window, with their feedback."""
        ...


#: States of an internal note: `pending` (drafted, not posted), `posting` (one replica is
#: sending it), `posted`, `unknown` (sent, outcome not known: reconciled by reading the ticket).
NoteState = Literal["pending", "posting", "posted", "unknown"]


@dataclass(frozen=True, slots=True)
class TicketNote:
    """A draft that may be posted to a ticket as an internal note, exactly once."""

    ticket_id: int
    draft_id: str
    state: str
    body: str
    created_at: datetime
    updated_at: datetime
    account_id: str | None = None
    created_by: str | None = None
    posted_by: str | None = None
    claimed_by: str | None = None
    claimed_at: datetime | None = None
    posted_at: datetime | None = None
    comment_id: int | None = None
    last_error: str | None = None


class TicketNotes(Protocol):
    """The notes' state machine; every transition is one conditional UPDATE."""

    async def create(self, note: TicketNote) -> bool:
        """Store a `pending` note; False when (ticket, draft) exists already."""
        ...

    async def get(self, ticket_id: int, draft_id: str) -> TicketNote | None:
        """The note, if it exists."""
        ...

    async def claim(
        self, ticket_id: int, draft_id: str, *, holder: str, user: str, now: datetime
    ) -> bool:
        """`pending → posting` for `holder`; True for exactly one of any number of callers."""
        ...

    async def mark_posted(
        self, ticket_id: int, draft_id: str, *, comment_id: int | None, now: datetime
    ) -> bool:
        """`posting | unknown → posted`."""
        ...

    async def mark_unknown(
        self, ticket_id: int, draft_id: str, *, holder: str | None, error: str, now: datetime,
        stale_before: datetime | None = None,
    ) -> bool:  # fmt: skip
        """`posting → unknown` (by its holder, or anyone once claimed before `stale_before`)."""
        ...

    async def release(
        self, ticket_id: int, draft_id: str, *, from_state: str, error: str, now: datetime,
        holder: str | None = None, claimed_before: datetime | None = None,
    ) -> bool:  # fmt: skip
        """`from_state → pending`: the note certainly did not reach the ticket."""
        ...

    async def unsettled(self, *, limit: int = 50) -> list[TicketNote]:
        """Notes `unknown` or `posting`, oldest first (for the reconciler)."""
        ...


# --- anomaly alerts, scans and webhooks (issue 9) ---------------------------------------------

#: Where an alert stands: open until someone acts; snoozed until `snoozed_until`.
AlertStatus = Literal["open", "acknowledged", "not_anomaly", "snoozed"]
#: A button press on an alert.
FeedbackAction = Literal["acknowledge", "not_anomaly", "snooze"]


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """A stored anomaly alert, unique on (account, kind, period). `payload` is the anomaly as
    `bot.services.alerts.anomaly_to_payload` stores it (everything the message shows, so it can
    be re-rendered after a click); `notified_*` is what on-call was last told."""

    id: int
    account_id: str
    kind: str
    period: date
    severity: str
    status: AlertStatus
    source: str
    provider: str | None
    currency: str
    impact: Decimal
    fingerprint: str
    magnitude: Decimal
    summary: str
    payload: Mapping[str, Any]
    first_seen_at: datetime
    last_seen_at: datetime
    last_run_id: int | None = None
    notified_severity: str | None = None
    notified_impact: Decimal | None = None
    #: The currency of `notified_impact` (None when stored before it was recorded: the alert's).
    notified_currency: str | None = None
    notified_at: datetime | None = None
    notify_count: int = 0
    status_by: str | None = None
    status_at: datetime | None = None
    snoozed_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class AlertDraft:
    """The values of an alert as a scan or a webhook found it (before it is stored)."""

    account_id: str
    kind: str
    period: date
    severity: str
    source: str
    provider: str | None
    currency: str
    impact: Decimal
    fingerprint: str
    magnitude: Decimal
    summary: str
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class SuppressionRecord:
    """A stored "Not an anomaly" pattern."""

    account_id: str
    kind: str
    fingerprint: str
    magnitude: Decimal
    created_at: datetime
    alert_id: int
    user_id: str


@dataclass(frozen=True, slots=True)
class FeedbackCount:
    """Alerts of one kind by what on-call said about them."""

    kind: str
    alerts: int
    acknowledged: int
    not_anomaly: int
    snoozed: int


class Alerts(Protocol):
    """Stored alerts, the feedback on them, and the suppressions "Not an anomaly" creates."""

    async def get(self, alert_id: int) -> AlertRecord | None:
        """The alert with `alert_id`."""
        ...

    async def find(self, account_id: str, kind: str, period: date) -> AlertRecord | None:
        """The alert deduplicated on (account, kind, period)."""
        ...

    async def insert(self, draft: AlertDraft, *, now: datetime, run_id: int | None) -> int | None:
        """Store a new open alert; None when (account, kind, period) exists already (atomic)."""
        ...

    async def seen_again(
        self, alert_id: int, draft: AlertDraft, *, now: datetime, run_id: int | None,
        status: AlertStatus | None = None,
    ) -> None:  # fmt: skip
        """Refresh a known alert with what was found now (and optionally reopen it)."""
        ...

    async def mark_notified(
        self, alert_id: int, *, severity: str, impact: Decimal, now: datetime,
        currency: str | None = None,
    ) -> None:  # fmt: skip
        """Record that on-call was told about the alert at this severity and impact (in
        `currency`)."""
        ...

    async def set_status(
        self, alert_id: int, status: AlertStatus, *, user_id: str, now: datetime,
        snoozed_until: datetime | None = None,
    ) -> bool:  # fmt: skip
        """Change the status (who and when); False when the alert does not exist."""
        ...

    async def add_feedback(
        self, alert_id: int, action: FeedbackAction, *, user_id: str, now: datetime
    ) -> None:
        """Record a button press."""
        ...

    async def add_suppression(self, suppression: SuppressionRecord) -> None:
        """Store a "Not an anomaly" pattern."""
        ...

    async def suppressions(self, account_ids: Sequence[str]) -> list[SuppressionRecord]:
        """The suppressions of these accounts."""
        ...

    async def listing(
        self, *, statuses: Sequence[str] | None, limit: int, now: datetime
    ) -> list[AlertRecord]:
        """Alerts with one of `statuses` (all when None), newest period first; snoozed alerts
        whose snooze ran out count as open."""
        ...

    async def for_run(self, run_id: int, *, after_id: int, limit: int) -> list[AlertRecord]:
        """Alerts a scan run saw, by ID, `limit` at a time after `after_id` (streaming)."""
        ...

    async def feedback_counts(self) -> list[FeedbackCount]:
        """Per kind: alerts, and how many each final answer got (for precision)."""
        ...

    async def sharing_message(self, alert_id: int) -> list[int]:
        """The alerts posted in the same Slack message as `alert_id` (a digest), by ID."""
        ...


#: Where a scan run stands.
ScanStatus = Literal["running", "done", "abandoned"]


@dataclass(frozen=True, slots=True)
class ScanItem:
    """A claimed page of one provider's customers (`customers`: their stored JSON)."""

    id: int
    run_id: int
    provider: str
    seq: int
    customers: Sequence[Mapping[str, Any]]
    attempts: int
    today: date
    post: bool


@dataclass(frozen=True, slots=True)
class ScanRunState:
    """A scan run with its items' totals."""

    id: int
    status: ScanStatus
    coordinator: str
    today: date
    post: bool
    started_at: datetime
    listed_at: datetime | None
    finished_at: datetime | None
    items: int
    items_done: int
    accounts: int
    skipped: int
    alerts: int
    new_alerts: int
    failed: tuple[str, ...]
    list_failures: Mapping[str, str]


class Scans(Protocol):
    """Scan runs and their work items (pages of accounts) that every replica may claim."""

    async def start_run(self, *, coordinator: str, today: date, post: bool, now: datetime) -> int:
        """Create a running scan run; its ID."""
        ...

    async def abandon_stale(self, *, now: datetime, stale_after: float) -> int:
        """Close running runs whose coordinator stopped beating `stale_after` seconds ago (it
        died); their unfinished items are cancelled. How many."""
        ...

    async def heartbeat(self, run_id: int, *, now: datetime) -> None:
        """The coordinator is alive."""
        ...

    async def add_item(
        self, run_id: int, *, provider: str, seq: int, customers: Sequence[Mapping[str, Any]]
    ) -> int:
        """Queue a page of customers; its item ID."""
        ...

    async def finish_listing(
        self, run_id: int, *, now: datetime, failures: Mapping[str, str]
    ) -> None:
        """Every page is queued (`failures`: providers whose listing failed, and why)."""
        ...

    async def pending_items(self, run_id: int) -> int:
        """Items of the run nobody has claimed yet (the listing waits while enough are)."""
        ...

    async def claim_item(
        self, *, holder: str, now: datetime, lease: float, run_id: int | None = None
    ) -> ScanItem | None:
        """Claim the oldest pending item of a running run (or one whose lease expired: its
        holder died) for `lease` seconds. Replicas never claim the same item at once."""
        ...

    async def renew_item(self, item_id: int, *, holder: str, now: datetime, lease: float) -> bool:
        """Extend the lease; False when `holder` lost the item."""
        ...

    async def complete_item(
        self, item_id: int, *, holder: str, now: datetime, accounts: int, skipped: int,
        alerts: int, new_alerts: int, failed: Sequence[str],
    ) -> bool:  # fmt: skip
        """Record the item's outcome; False when `holder` no longer held it."""
        ...

    async def claim_accounts(
        self, run_id: int, account_keys: Sequence[str], *, item_id: int
    ) -> set[str]:
        """Take the free keys of `account_keys` for `item_id` at once (one account, one scan:
        the other pages skip them); the keys `item_id` holds, taken now or by an earlier
        attempt at the same item (whose holder died)."""
        ...

    async def state(self, run_id: int) -> ScanRunState | None:
        """The run and its totals."""
        ...

    async def finish_if_complete(self, run_id: int, *, now: datetime) -> bool:
        """Mark the run done when it is listed and no item is left; True when the run is over
        (done, or abandoned because its coordinator was taken for dead)."""
        ...

    async def prune(self, *, older_than: datetime) -> int:
        """Forget finished runs (with their items and accounts) started before `older_than`."""
        ...


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """A stored, verified provider webhook."""

    source: str
    event_id: str
    type: str
    payload: Mapping[str, Any]
    received_at: datetime
    processed_at: datetime | None
    attempts: int


class Webhooks(Protocol):
    """Received provider webhooks: deduplicated on (source, event ID), processed after the
    answer, and reprocessed by a reconciler when a crash interrupted that."""

    async def store(
        self, source: str, event_id: str, *, type: str, payload: Mapping[str, Any], now: datetime
    ) -> bool:
        """Store a verified event; False for a duplicate (atomic under concurrency)."""
        ...

    async def get(self, source: str, event_id: str) -> WebhookEvent | None:
        """One stored event."""
        ...

    async def begin(self, source: str, event_id: str) -> bool:
        """Count a processing attempt; False when it was processed already."""
        ...

    async def mark_processed(
        self, source: str, event_id: str, *, now: datetime, outcome: str
    ) -> bool:
        """Record the outcome once; False when another worker did it first."""
        ...

    async def unprocessed(self, *, received_before: datetime, limit: int) -> list[WebhookEvent]:
        """Events received before the cutoff and never processed, oldest first."""
        ...

    async def prune(self, *, older_than: datetime) -> int:
        """Forget processed events received before `older_than`."""


class ApprovalRequests(Protocol):
    """Refund and credit requests (`bot.domain.approvals`). Every state change is one
    conditional UPDATE whose row count says whether this caller made it: of any number of
    concurrent callers, exactly one gets True (once committed)."""

    async def add(self, request: ApprovalRequest) -> None:
        """Store a new request (its approvals are not stored from here)."""
        ...

    async def get(self, request_id: str) -> ApprovalRequest | None:
        """The request with its approvals, oldest first; None for an unknown ID."""
        ...

    async def hold_payment(self, payment_id: str) -> None:
        """Serialise new requests on `payment_id` until this unit of work ends (a PostgreSQL
        transaction lock; SQLite's single writer already does), so two requests made at once
        cannot both take what is left of one payment."""
        ...

    async def holding(self, payment_id: str) -> list[ApprovalRequest]:
        """Unfinished requests (`HOLDING` states) on `payment_id`."""
        ...

    async def for_account(
        self,
        account_keys: Sequence[str],
        *,
        states: Sequence[RequestState] | None = None,
        limit: int = 20,
    ) -> list[ApprovalRequest]:
        """The newest requests whose account key is one of `account_keys`, newest first."""
        ...

    async def add_approval(self, request_id: str, approver: str, *, at: datetime) -> bool:
        """Record `approver`'s approval; False when they had approved it already."""
        ...

    async def approve(
        self, request_id: str, *, approver: str, now: datetime
    ) -> RequestState | None:
        """Count one approval of a pending, unexpired request: `approved` once it has enough,
        else still `pending`. None when the request was not pending (or had expired)."""
        ...

    async def claim(
        self,
        request_id: str,
        *,
        source: RequestState,
        holder: str,
        now: datetime,
        until: datetime,
    ) -> bool:
        """`source` (approved, or failed for a retry) → `executing`, held by `holder` until
        `until`; counts one attempt."""
        ...

    async def reclaim(
        self, request_id: str, *, holder: str, now: datetime, until: datetime
    ) -> bool:
        """Take over an `executing` request whose holder's lease ran out; counts one attempt."""
        ...

    async def renew(self, request_id: str, *, holder: str, until: datetime) -> bool:
        """Extend `holder`'s lease on an `executing` request."""
        ...

    async def release(
        self, request_id: str, *, holder: str, now: datetime, problem: str | None = None
    ) -> bool:
        """End `holder`'s lease now, leaving the request `executing` for the reconciler;
        `problem` says why the outcome is unknown (shown on the message)."""
        ...

    async def executed(
        self, request_id: str, *, object_id: str, status: str, now: datetime
    ) -> bool:
        """`executing` → `executed` with the provider's object ID and status."""
        ...

    async def fail(self, request_id: str, *, message: str, now: datetime) -> bool:
        """`executing` → `failed` with the provider's own message."""
        ...

    async def deny(self, request_id: str, *, by: str, reason: str, now: datetime) -> bool:
        """`pending` → `denied`, by whom and why."""
        ...

    async def expire(self, request_id: str, *, now: datetime) -> bool:
        """`pending` → `expired`, when its time ran out by `now`."""
        ...

    async def expiring(self, *, now: datetime, limit: int = 100) -> list[str]:
        """IDs of pending requests whose time ran out by `now`."""
        ...

    async def unfinished(
        self, *, now: datetime, approved_before: datetime, limit: int = 100
    ) -> list[ApprovalRequest]:
        """Requests to finish: `approved` before `approved_before` (nobody went on), or
        `executing` with an expired lease."""
        ...

    async def recent(self, *, limit: int = 50) -> list[ApprovalRequest]:
        """The newest requests, newest first."""
        ...
