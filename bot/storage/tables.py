"""Tables as typed SQLAlchemy models. The schema itself is created by the Alembic migrations in
`migrations/versions/`; a change here needs a new migration there.

Times are `UTCDateTime`: aware UTC in Python on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that only accepts aware datetimes and always reads back aware UTC.

    PostgreSQL stores `timestamptz`. SQLite has no time zones, so the value is stored as naive
    UTC text (which also sorts and compares correctly) and UTC is attached on the way back.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC; refuse naive datetimes, whose meaning would be a guess."""
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: storage needs an aware datetime")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Attach or convert to UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


#: JSON on SQLite, JSONB on PostgreSQL.
JSONType = JSON().with_variant(JSONB(), "postgresql")


#: Named constraints, so later migrations can drop or alter them (SQLite batch mode needs names).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base; `Base.metadata` is the migrations' autogenerate target."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType}  # noqa: RUF012


class ProcessedEvent(Base):
    """A Slack event or provider webhook ID already handled."""

    __tablename__ = "processed_events"

    # The composite primary key is the uniqueness the dedup relies on.
    source: Mapped[str] = mapped_column(String(32), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(index=True)


class AuditEventRow(Base):
    """An append-only audit event. The migrations add triggers that reject UPDATE and DELETE."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(255))
    detail: Mapped[dict[str, Any]]
    slack_request: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (Index("ix_audit_events_subject", "subject", "id"),)


class AccountLinkRow(Base):
    """A cached identifier → provider customer resolution."""

    __tablename__ = "account_links"

    identifier: Mapped[str] = mapped_column(String(255), primary_key=True)
    provider: Mapped[str] = mapped_column(String(32), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(255))
    account_id: Mapped[str | None] = mapped_column(String(255))
    updated_at: Mapped[datetime]


class OutboxRow(Base):
    """An outgoing Slack message (see `bot.domain.records.OutgoingMessage`)."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(255), unique=True)
    op: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str | None] = mapped_column(String(64))
    ref: Mapped[str | None] = mapped_column(String(255))
    thread_ref: Mapped[str | None] = mapped_column(String(255))
    render: Mapped[str | None] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]]
    digest_key: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int]
    next_attempt_at: Mapped[datetime]
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_outbox_due", "status", "next_attempt_at"),
        Index("ix_outbox_ref", "ref", "id"),
    )


class SlackMessageRow(Base):
    """Where the outbox posted the message named `ref`."""

    __tablename__ = "slack_messages"

    ref: Mapped[str] = mapped_column(String(255), primary_key=True)
    channel: Mapped[str] = mapped_column(String(64))
    ts: Mapped[str] = mapped_column(String(32))
    posted_at: Mapped[datetime]


class LeaseRow(Base):
    """A named lease held by one replica until `expires_at`."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime]


class CaseRow(Base):
    """A case: one piece of triage (DESIGN §11). IDs, kinds and amounts; no customer text."""

    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    created_at: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    account_id: Mapped[str | None] = mapped_column(String(255))
    ticket_id: Mapped[str | None] = mapped_column(String(32))
    invoice_id: Mapped[str | None] = mapped_column(String(255))
    request_id: Mapped[str | None] = mapped_column(String(64))
    request_kind: Mapped[str | None] = mapped_column(String(16))
    request_reason: Mapped[str | None] = mapped_column(String(200))
    request_status: Mapped[str | None] = mapped_column(String(16))
    request_amount_minor: Mapped[int | None] = mapped_column(BigInteger)
    request_currency: Mapped[str | None] = mapped_column(String(8))
    decided_at: Mapped[datetime | None]
    alert_id: Mapped[str | None] = mapped_column(String(128))
    alert_kind: Mapped[str | None] = mapped_column(String(32))
    alert_feedback: Mapped[str | None] = mapped_column(String(32))
    dedupe_key: Mapped[str | None] = mapped_column(String(255), unique=True)

    __table_args__ = (
        Index("ix_cases_created_at", "created_at"),
        Index("ix_cases_kind_created_at", "kind", "created_at"),
        Index("ix_cases_request_id", "request_id"),
        Index("ix_cases_alert_id", "alert_id"),
    )


class CaseCauseRow(Base):
    """One cause of a case; time and account are copied from the case so that the report's
    aggregates read one table through its indexes."""

    __tablename__ = "case_causes"

    case_id: Mapped[int] = mapped_column(
        ForeignKey("cases.id", ondelete="CASCADE"), primary_key=True
    )
    cause: Mapped[str] = mapped_column(String(64), primary_key=True)
    currency: Mapped[str] = mapped_column(String(8), primary_key=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    account_id: Mapped[str | None] = mapped_column(String(255))
    #: What the case was about (an invoice, else the ticket, else the case): recurrence counts
    #: distinct subjects, so looking at one invoice twice is not a recurrence.
    subject: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]

    __table_args__ = (
        Index(
            "ix_case_causes_window", "created_at", "cause", "currency", "account_id",
            "amount_minor",
        ),
        Index("ix_case_causes_account", "account_id", "cause", "created_at", "subject"),
    )  # fmt: skip


class TicketNoteRow(Base):
    """A draft for a ticket and whether it was posted as an internal note (exactly once)."""

    __tablename__ = "ticket_notes"

    ticket_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    draft_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    body: Mapped[str] = mapped_column(Text)
    account_id: Mapped[str | None] = mapped_column(String(255))
    created_by: Mapped[str | None] = mapped_column(String(32))
    posted_by: Mapped[str | None] = mapped_column(String(32))
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_at: Mapped[datetime | None]
    posted_at: Mapped[datetime | None]
    comment_id: Mapped[int | None] = mapped_column(BigInteger)
    last_error: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (Index("ix_ticket_notes_state", "state", "updated_at"),)


class AlertRow(Base):
    """An anomaly alert, unique on (account, kind, period); see `bot.domain.records.AlertRecord`."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(32))
    period: Mapped[str] = mapped_column(String(10))
    severity: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    provider: Mapped[str | None] = mapped_column(String(16))
    currency: Mapped[str] = mapped_column(String(8))
    # Decimal amounts as strings: exact on both databases, compared in Python.
    impact: Mapped[str] = mapped_column(String(40))
    fingerprint: Mapped[str] = mapped_column(String(255))
    magnitude: Mapped[str] = mapped_column(String(40))
    summary: Mapped[str] = mapped_column(String(500))
    payload: Mapped[dict[str, Any]]
    first_seen_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    last_run_id: Mapped[int | None]
    notified_severity: Mapped[str | None] = mapped_column(String(8))
    #: "<amount> <currency>" (or a bare amount, stored before the currency was kept).
    notified_impact: Mapped[str | None] = mapped_column(String(40))
    notified_at: Mapped[datetime | None]
    notify_count: Mapped[int]
    status_by: Mapped[str | None] = mapped_column(String(64))
    status_at: Mapped[datetime | None]
    snoozed_until: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("account_id", "kind", "period", name="uq_alerts_account_id"),
        Index("ix_alerts_status", "status", "id"),
        Index("ix_alerts_last_run_id", "last_run_id", "id"),
    )


class AlertFeedbackRow(Base):
    """One button press on an alert (acknowledge, not_anomaly, snooze), kept for precision."""

    __tablename__ = "alert_feedback"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id"), index=True)
    action: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime]


class AlertSuppressionRow(Base):
    """A "Not an anomaly" pattern: (account, kind, fingerprint) stops alerting until it grows."""

    __tablename__ = "alert_suppressions"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(32))
    fingerprint: Mapped[str] = mapped_column(String(255))
    magnitude: Mapped[str] = mapped_column(String(40))
    alert_id: Mapped[int]
    user_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]

    __table_args__ = (Index("ix_alert_suppressions_account", "account_id"),)


class ScanRunRow(Base):
    """One anomaly scan over every account (its pages of accounts are `ScanItemRow`s)."""

    __tablename__ = "scan_runs"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    status: Mapped[str] = mapped_column(String(16))
    coordinator: Mapped[str] = mapped_column(String(64))
    today: Mapped[str] = mapped_column(String(10))
    post: Mapped[bool]
    started_at: Mapped[datetime]
    listed_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime]
    list_failures: Mapped[dict[str, Any]]

    __table_args__ = (Index("ix_scan_runs_status", "status"),)


class ScanItemRow(Base):
    """A page of one provider's customers to scan: a work item any replica may claim."""

    __tablename__ = "scan_items"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("scan_runs.id"))
    provider: Mapped[str] = mapped_column(String(16))
    seq: Mapped[int]
    customers: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16))
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]
    attempts: Mapped[int]
    accounts: Mapped[int]
    skipped: Mapped[int]
    alerts: Mapped[int]
    new_alerts: Mapped[int]
    failed: Mapped[dict[str, Any]]
    finished_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_scan_items_claim", "run_id", "status", "id"),)


class ScanAccountRow(Base):
    """An account claimed by one work item of a run, so an account in several providers is
    scanned once."""

    __tablename__ = "scan_accounts"

    run_id: Mapped[int] = mapped_column(primary_key=True)
    account_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    item_id: Mapped[int]


class WebhookEventRow(Base):
    """A verified provider webhook, stored before it is answered and processed after."""

    __tablename__ = "webhook_events"

    source: Mapped[str] = mapped_column(String(32), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(128))
    payload: Mapped[dict[str, Any]]
    received_at: Mapped[datetime]
    processed_at: Mapped[datetime | None]
    attempts: Mapped[int]
    outcome: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index("ix_webhook_events_pending", "processed_at", "received_at"),)


class ApprovalRequestRow(Base):
    """A refund or credit request (`bot.domain.approvals.ApprovalRequest`). Money is integer
    minor units and an ISO currency, exact on both databases. `state` changes only through the
    conditional UPDATEs of `bot.storage.approvals`."""

    __tablename__ = "approval_requests"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    account_key: Mapped[str] = mapped_column(String(255))
    account_id: Mapped[str | None] = mapped_column(String(255))
    account_label: Mapped[str] = mapped_column(String(255))
    provider: Mapped[str] = mapped_column(String(32))
    customer_id: Mapped[str] = mapped_column(String(255))
    customer_currency: Mapped[str | None] = mapped_column(String(8))
    payment_id: Mapped[str | None] = mapped_column(String(255))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(String(1000))
    requester: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(64))
    required_approvals: Mapped[int]
    approval_count: Mapped[int]
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    approved_at: Mapped[datetime | None]
    decided_by: Mapped[str | None] = mapped_column(String(64))
    decided_at: Mapped[datetime | None]
    decision_reason: Mapped[str | None] = mapped_column(String(1000))
    provider_object_id: Mapped[str | None] = mapped_column(String(255))
    provider_status: Mapped[str | None] = mapped_column(String(64))
    failure: Mapped[str | None] = mapped_column(String(1000))
    attempts: Mapped[int]
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None]
    version: Mapped[int]
    context: Mapped[dict[str, Any]]

    __table_args__ = (
        Index("ix_approval_requests_state", "state", "expires_at"),
        Index("ix_approval_requests_account", "account_key", "created_at"),
        Index("ix_approval_requests_payment", "payment_id", "state"),
    )


class RequestApprovalRow(Base):
    """One approver's approval of a request; the primary key makes a second click by the same
    approver count once."""

    __tablename__ = "request_approvals"

    request_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("approval_requests.id", ondelete="CASCADE"), primary_key=True
    )
    approver: Mapped[str] = mapped_column(String(64), primary_key=True)
    at: Mapped[datetime]
