"""Refund and credit requests and their approvals (issue 8).

`approval_requests` holds each request and its state (changed only by conditional UPDATEs);
`request_approvals` one row per approver per request (its primary key makes a double click count
once). Money is integer minor units plus an ISO currency.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_TIME = sa.DateTime(timezone=True)
_STATES = "'pending','approved','executing','executed','failed','denied','expired'"


def upgrade() -> None:
    """Create `approval_requests` and `request_approvals`."""
    op.create_table(
        "approval_requests",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("account_key", sa.String(255), nullable=False),
        sa.Column("account_id", sa.String(255), nullable=True),
        sa.Column("account_label", sa.String(255), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("customer_id", sa.String(255), nullable=False),
        sa.Column("customer_currency", sa.String(8), nullable=True),
        sa.Column("payment_id", sa.String(255), nullable=True),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(8), nullable=False),
        sa.Column("reason", sa.String(1000), nullable=False),
        sa.Column("requester", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("required_approvals", sa.Integer(), nullable=False),
        sa.Column("approval_count", sa.Integer(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("expires_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("approved_at", _TIME, nullable=True),
        sa.Column("decided_by", sa.String(64), nullable=True),
        sa.Column("decided_at", _TIME, nullable=True),
        sa.Column("decision_reason", sa.String(1000), nullable=True),
        sa.Column("provider_object_id", sa.String(255), nullable=True),
        sa.Column("provider_status", sa.String(64), nullable=True),
        sa.Column("failure", sa.String(1000), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claimed_until", _TIME, nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("context", _JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_approval_requests"),
        sa.CheckConstraint(f"state IN ({_STATES})", name="ck_approval_requests_state"),
        sa.CheckConstraint("kind IN ('refund','credit')", name="ck_approval_requests_kind"),
        sa.CheckConstraint("amount_minor > 0", name="ck_approval_requests_amount_positive"),
        sa.CheckConstraint(
            "required_approvals BETWEEN 1 AND 2", name="ck_approval_requests_required"
        ),
    )
    op.create_index("ix_approval_requests_state", "approval_requests", ["state", "expires_at"])
    op.create_index(
        "ix_approval_requests_account", "approval_requests", ["account_key", "created_at"]
    )
    op.create_index("ix_approval_requests_payment", "approval_requests", ["payment_id", "state"])

    op.create_table(
        "request_approvals",
        sa.Column("request_id", sa.String(32), nullable=False),
        sa.Column("approver", sa.String(64), nullable=False),
        sa.Column("at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("request_id", "approver", name="pk_request_approvals"),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["approval_requests.id"],
            name="fk_request_approvals_request_id_approval_requests",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    """Drop everything `upgrade` created."""
    op.drop_table("request_approvals")
    op.drop_index("ix_approval_requests_payment", table_name="approval_requests")
    op.drop_index("ix_approval_requests_account", table_name="approval_requests")
    op.drop_index("ix_approval_requests_state", table_name="approval_requests")
    op.drop_table("approval_requests")
