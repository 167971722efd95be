"""The approval message, the DM and the modals stay within Slack's Block Kit limits in every state,
with the longest reasons and names a request can hold, and escape what requesters type."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from bot.domain.approvals import Approval, ApprovalRequest, RequestState
from bot.domain.money import Money
from bot.services.approvals import PaymentChoice, RequestForm
from handlers.approval_views import (
    APPROVE_ACTION,
    DENY_ACTION,
    RETRY_ACTION,
    Prefill,
    approval_dm,
    approval_message,
    deny_modal,
    request_modal,
)
from integrations.sandbox.slack import validate_blocks, validate_view

NOW = datetime(2026, 12, 1, tzinfo=UTC)
LONG = "<script>&" + "x" * 491


def _request(state: RequestState) -> ApprovalRequest:
    invoices = [{"id": f"in_{i}", "number": "N" * 40, "date": NOW.isoformat(), "total": "10.00",
                 "currency": "usd", "status": "paid"} for i in range(3)]  # fmt: skip
    return ApprovalRequest(
        id="REQ-ABCDEFGH", kind="refund", state=state, account_key="acct_" + "k" * 250,
        account_label="L" * 255, provider="stripe", customer_id="cus_" + "c" * 200,
        amount=Money(Decimal("1500.00")), reason=LONG, requester="U0REQ", created_at=NOW,
        expires_at=NOW + timedelta(hours=48), required_approvals=2, channel="C0FIN",
        payment_id="ch_" + "p" * 200, account_id="acct_x", approval_count=1,
        approved_at=NOW, decided_by="U0FIN2", decided_at=NOW, decision_reason=LONG,
        provider_object_id="re_1", provider_status="succeeded", failure=LONG,
        context={"payment": {"amount": "3000", "refunded": "0", "left": "3000",
                             "currency": "usd", "created_at": NOW.isoformat()},
                 "invoices": invoices, "refunds": [], "disputes": [],
                 "account": {"email": "a@b.example"}},
        approvals=(Approval("U0FIN1", NOW), Approval("U0FIN2", NOW)),
    )  # fmt: skip


@pytest.mark.parametrize("state", list(RequestState))
def test_every_state_renders_valid_block_kit_with_the_right_buttons(state: RequestState) -> None:
    """Valid blocks in every state; Approve/Deny only while pending, Retry only when failed;
    what the requester typed is escaped."""
    request = _request(state)
    text, blocks = approval_message(request)
    assert validate_blocks(blocks) == []
    actions = [e["action_id"] for b in blocks if b["type"] == "actions" for e in b["elements"]]
    expected = {
        RequestState.PENDING: [APPROVE_ACTION, DENY_ACTION],
        RequestState.FAILED: [RETRY_ACTION],
    }.get(state, [])
    assert actions == expected
    assert "<script>" not in str(blocks) and "&lt;script&gt;" in str(blocks)
    assert "REQ-ABCDEFGH" in text
    dm_text, dm_blocks = approval_dm(request)
    assert validate_blocks(dm_blocks) == [] and "REQ-ABCDEFGH" in dm_text


def test_the_modals_are_valid_views() -> None:
    """The request form with ten payments, and the deny modal, pass Slack's view checks."""
    payments = tuple(
        PaymentChoice(
            "ch_" + "p" * 60 + str(i), NOW, Money(Decimal("12345.67")), Money(Decimal("12000.00"))
        )
        for i in range(10)
    )
    form = RequestForm("refund", "L" * 255, "acct_x", "stripe", "usd", payments)
    for prefill in (Prefill(), Prefill(payments[3].payment_id, "25", LONG), Prefill("ch_other")):
        assert validate_view(request_modal(form, prefill, "{}", error=LONG)) == []
    credit = RequestForm("credit", "Acme", "acct_x", "orb", "usd")
    assert validate_view(request_modal(credit, Prefill(), "{}")) == []
    assert validate_view(deny_modal(_request(RequestState.PENDING))) == []
