"""Refund and credit requests are cases (DESIGN §11): each request is recorded with its reason
and amount when it is made, its outcome when it is decided, and the report counts them."""

from __future__ import annotations

from pathlib import Path

from bot.domain.approvals import RequestState
from bot.services.report import build_report
from handlers.approval_views import APPROVE_ACTION, DENY_ACTION
from integrations.sandbox.slack import LocalSlack
from tests.support.approvals import APPROVERS, approvals_app
from tests.support.providers import FakeProviders

ALICE, BOB, _ = APPROVERS


async def test_requests_and_their_outcomes_are_in_the_report(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """One refund approved, one denied, one credit pending: requested 3, approved 1, denied 1,
    the approved amount, and a time to decision."""
    async with approvals_app(
        local_slack, f"sqlite+aiosqlite:///{tmp_path}/cases.db", fake_providers
    ) as app:
        approved = await app.request("refund acct_globex 30 duplicate charge")
        denied = await app.request("refund acct_globex 15 duplicate charge")
        await app.request("credit acct_northwind 40 outage on Nov 3")
        await app.click(APPROVE_ACTION, approved, user=ALICE)
        await app.wait_state(approved, RequestState.EXECUTED)
        await app.click(DENY_ACTION, denied, user=BOB)
        [opened] = local_slack.calls_to("views.open")
        await app.submit(
            "approval_deny_reason",
            {"deny_reason": {"deny_reason_input": "already credited"}},
            user=BOB,
            metadata=opened.args["view"]["private_metadata"],
        )
        await app.settle()
        report = await build_report(app.running.deps.database, days=7)
    assert report.to_json()["requests"] == {
        "requested": 3,
        "approved": 1,
        "denied": 1,
        "amount_approved": "30.00",
    }
    duplicate = next(r for r in report.reasons if r.reason == "duplicate charge")
    assert (duplicate.requested, duplicate.approved, duplicate.denied) == (2, 1, 1)
    assert report.median_hours is not None
