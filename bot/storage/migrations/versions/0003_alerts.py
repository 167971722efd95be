"""Anomaly alerts, their feedback and "not an anomaly" suppressions, scan runs with their work
items and claimed accounts, and received provider webhooks (issue 9).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create `alerts`, `alert_feedback`, `alert_suppressions`, `scan_runs`, `scan_items`,
    `scan_accounts` and `webhook_events`."""
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("period", sa.String(10), nullable=False),
        sa.Column("severity", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("provider", sa.String(16), nullable=True),
        sa.Column("currency", sa.String(8), nullable=False),
        sa.Column("impact", sa.String(40), nullable=False),
        sa.Column("fingerprint", sa.String(255), nullable=False),
        sa.Column("magnitude", sa.String(40), nullable=False),
        sa.Column("summary", sa.String(500), nullable=False),
        sa.Column("payload", _JSON, nullable=False),
        sa.Column("first_seen_at", _TIME, nullable=False),
        sa.Column("last_seen_at", _TIME, nullable=False),
        sa.Column("last_run_id", sa.Integer(), nullable=True),
        sa.Column("notified_severity", sa.String(8), nullable=True),
        sa.Column("notified_impact", sa.String(40), nullable=True),
        sa.Column("notified_at", _TIME, nullable=True),
        sa.Column("notify_count", sa.Integer(), nullable=False),
        sa.Column("status_by", sa.String(64), nullable=True),
        sa.Column("status_at", _TIME, nullable=True),
        sa.Column("snoozed_until", _TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_alerts"),
        sa.UniqueConstraint("account_id", "kind", "period", name="uq_alerts_account_id"),
    )
    op.create_index("ix_alerts_status", "alerts", ["status", "id"])
    op.create_index("ix_alerts_last_run_id", "alerts", ["last_run_id", "id"])

    op.create_table(
        "alert_feedback",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("alert_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alert_feedback"),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["alerts.id"], name="fk_alert_feedback_alert_id_alerts"
        ),
    )
    op.create_index("ix_alert_feedback_alert_id", "alert_feedback", ["alert_id"])

    op.create_table(
        "alert_suppressions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("fingerprint", sa.String(255), nullable=False),
        sa.Column("magnitude", sa.String(40), nullable=False),
        sa.Column("alert_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alert_suppressions"),
    )
    op.create_index("ix_alert_suppressions_account", "alert_suppressions", ["account_id"])

    op.create_table(
        "scan_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("coordinator", sa.String(64), nullable=False),
        sa.Column("today", sa.String(10), nullable=False),
        sa.Column("post", sa.Boolean(), nullable=False),
        sa.Column("started_at", _TIME, nullable=False),
        sa.Column("listed_at", _TIME, nullable=True),
        sa.Column("finished_at", _TIME, nullable=True),
        sa.Column("heartbeat_at", _TIME, nullable=False),
        sa.Column("list_failures", _JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_scan_runs"),
    )
    op.create_index("ix_scan_runs_status", "scan_runs", ["status"])

    op.create_table(
        "scan_items",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("customers", _JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("lease_until", _TIME, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("accounts", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("alerts", sa.Integer(), nullable=False),
        sa.Column("new_alerts", sa.Integer(), nullable=False),
        sa.Column("failed", _JSON, nullable=False),
        sa.Column("finished_at", _TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_scan_items"),
        sa.ForeignKeyConstraint(["run_id"], ["scan_runs.id"], name="fk_scan_items_run_id_scan_runs"),
    )
    op.create_index("ix_scan_items_claim", "scan_items", ["run_id", "status", "id"])

    op.create_table(
        "scan_accounts",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("account_key", sa.String(255), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "account_key", name="pk_scan_accounts"),
    )

    op.create_table(
        "webhook_events",
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("type", sa.String(128), nullable=False),
        sa.Column("payload", _JSON, nullable=False),
        sa.Column("received_at", _TIME, nullable=False),
        sa.Column("processed_at", _TIME, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("source", "event_id", name="pk_webhook_events"),
    )
    op.create_index("ix_webhook_events_pending", "webhook_events", ["processed_at", "received_at"])


def downgrade() -> None:
    """Drop everything `upgrade` created."""
    op.drop_index("ix_webhook_events_pending", table_name="webhook_events")
    op.drop_table("webhook_events")
    op.drop_table("scan_accounts")
    op.drop_index("ix_scan_items_claim", table_name="scan_items")
    op.drop_table("scan_items")
    op.drop_index("ix_scan_runs_status", table_name="scan_runs")
    op.drop_table("scan_runs")
    op.drop_index("ix_alert_suppressions_account", table_name="alert_suppressions")
    op.drop_table("alert_suppressions")
    op.drop_index("ix_alert_feedback_alert_id", table_name="alert_feedback")
    op.drop_table("alert_feedback")
    op.drop_index("ix_alerts_last_run_id", table_name="alerts")
    op.drop_index("ix_alerts_status", table_name="alerts")
    op.drop_table("alerts")
