"""Cases (every piece of triage, for the recurring-issue report) and Zendesk notes (issue 12).

- `cases`: one row per status/explain/draft/ticket/refund/credit/alert handled: IDs, kinds,
  amounts; the only free text is a request's short reason.
- `case_causes`: a case's top causes (finding kinds) with their amounts in minor units; time and
  account copied from the case so the report's aggregates read one table through its indexes.
- `ticket_notes`: drafts that may be posted to a ticket as an internal note, and the state
  machine (`pending → posting → posted | unknown`) that posts each exactly once.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create `cases`, `case_causes` and `ticket_notes`."""
    op.create_table(
        "cases",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("account_id", sa.String(255), nullable=True),
        sa.Column("ticket_id", sa.String(32), nullable=True),
        sa.Column("invoice_id", sa.String(255), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("request_kind", sa.String(16), nullable=True),
        sa.Column("request_reason", sa.String(200), nullable=True),
        sa.Column("request_status", sa.String(16), nullable=True),
        sa.Column("request_amount_minor", sa.BigInteger(), nullable=True),
        sa.Column("request_currency", sa.String(8), nullable=True),
        sa.Column("decided_at", _TIME, nullable=True),
        sa.Column("alert_id", sa.String(128), nullable=True),
        sa.Column("alert_kind", sa.String(32), nullable=True),
        sa.Column("alert_feedback", sa.String(32), nullable=True),
        sa.Column("dedupe_key", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_cases"),
        sa.UniqueConstraint("dedupe_key", name="uq_cases_dedupe_key"),
    )
    op.create_index("ix_cases_created_at", "cases", ["created_at"])
    op.create_index("ix_cases_kind_created_at", "cases", ["kind", "created_at"])
    op.create_index("ix_cases_request_id", "cases", ["request_id"])
    op.create_index("ix_cases_alert_id", "cases", ["alert_id"])

    op.create_table(
        "case_causes",
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("cause", sa.String(64), nullable=False),
        sa.Column("currency", sa.String(8), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.String(255), nullable=True),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name="fk_case_causes_case_id_cases", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("case_id", "cause", "currency", name="pk_case_causes"),
    )
    op.create_index(
        "ix_case_causes_window",
        "case_causes",
        ["created_at", "cause", "currency", "account_id", "amount_minor"],
    )
    op.create_index(
        "ix_case_causes_account", "case_causes", ["account_id", "cause", "created_at", "subject"]
    )

    op.create_table(
        "ticket_notes",
        sa.Column("ticket_id", sa.BigInteger(), nullable=False),
        sa.Column("draft_id", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("account_id", sa.String(255), nullable=True),
        sa.Column("created_by", sa.String(32), nullable=True),
        sa.Column("posted_by", sa.String(32), nullable=True),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claimed_at", _TIME, nullable=True),
        sa.Column("posted_at", _TIME, nullable=True),
        sa.Column("comment_id", sa.BigInteger(), nullable=True),
        sa.Column("last_error", sa.String(255), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("ticket_id", "draft_id", name="pk_ticket_notes"),
    )
    op.create_index("ix_ticket_notes_state", "ticket_notes", ["state", "updated_at"])


def downgrade() -> None:
    """Drop everything `upgrade` created."""
    op.drop_index("ix_ticket_notes_state", table_name="ticket_notes")
    op.drop_table("ticket_notes")
    op.drop_index("ix_case_causes_account", table_name="case_causes")
    op.drop_index("ix_case_causes_window", table_name="case_causes")
    op.drop_table("case_causes")
    op.drop_index("ix_cases_alert_id", table_name="cases")
    op.drop_index("ix_cases_request_id", table_name="cases")
    op.drop_index("ix_cases_kind_created_at", table_name="cases")
    op.drop_index("ix_cases_created_at", table_name="cases")
    op.drop_table("cases")
