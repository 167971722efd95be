"""Tables as typed SQLAlchemy models. The schema itself is created by the Alembic migrations in
`migrations/versions/`; a change here needs a new migration there.

Times are `UTCDateTime`: aware UTC in Python on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    MetaData,
    String,
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
