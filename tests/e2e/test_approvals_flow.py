"""Refund and credit requests end to end (DESIGN §4), over signed HTTP with the fake Slack and
the loopback sandbox providers: request → approval message → click → provider → message
updated, DM, audit; and every kind of click that must change nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.domain.approvals import RequestState
from handlers.approval_views import APPROVE_ACTION, DENY_ACTION, RETRY_ACTION
from integrations.sandbox.slack import LocalSlack, dm_channel_id
from tests.support.approvals import APPROVERS, FINANCE, REQUESTER, approvals_app
from tests.support.providers import FakeProviders

pytestmark = pytest.mark.usefixtures("clean_env")
ALICE, BOB, CAROL = APPROVERS


def _db(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/approvals.db"


async def test_a_refund_is_requested_approved_and_made_once(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """The requester is told the request ID; finance sees the account, amount, payment, reason,
    requester and context with Approve/Deny; one click refunds once at Stripe; the message then
    says who, when and Stripe's refund ID with no buttons, and the requester gets a DM."""
    async with approvals_app(local_slack, _db(tmp_path), fake_providers) as app:
        [latest, *_] = await app.payments("acct_globex")
        request_id = await app.request(f"refund acct_globex 25 {latest.id} duplicate charge")

        text = app.message_text(request_id)
        expected = ["Globex Corporation", "$25.00", latest.id, "duplicate charge"]
        expected += [f"<@{REQUESTER}>", "Recent invoices", "Prior refunds", "Open disputes"]
        for fragment in expected:
            assert fragment in text, fragment
        assert app.buttons(request_id) == [APPROVE_ACTION, DENY_ACTION]
        [approve] = [
            e for b in app.message(request_id).blocks or [] if b["type"] == "actions"
            for e in b["elements"] if e["action_id"] == APPROVE_ACTION
        ]  # fmt: skip
        assert approve["value"] == request_id  # the button carries the request ID only

        told = await app.click(APPROVE_ACTION, request_id, user=ALICE)

        assert told == []  # nothing ephemeral: the shared message says it
        request = await app.get(request_id)
        assert request.state is RequestState.EXECUTED
        refunds = await app.refunds_at_stripe(latest.id)
        assert [(r["id"], r["amount"], r["metadata"]["request_id"]) for r in refunds] == [
            (request.provider_object_id, 2500, request_id)
        ]
        assert app.buttons(request_id) == []
        final = app.message_text(request_id)
        assert f"<@{ALICE}>" in final and str(request.provider_object_id) in final
        assert "Refunded" in final
        dms = [m for m in local_slack.messages if m.channel == dm_channel_id(REQUESTER)]
        assert len(dms) == 1 and str(request.provider_object_id) in (dms[0].text or "")
        assert await app.actions(request_id) == [
            "request.created",
            "click.approve",
            "request.transition",  # pending → approved
            "request.transition",  # approved → executing
            "provider.call",
            "provider.result",
            "request.transition",  # executing → executed
        ]
        trail = await app.trail(f"request:{request_id}")
        assert all(e.slack_request for e in trail if e.actor != "billing-triage")
        assert trail[1].actor == ALICE and trail[1].detail["outcome"] == "accepted"


async def test_a_credit_goes_to_the_provider_that_bills_the_account(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """An Orb-billed account's credit becomes one Orb ledger increment carrying the request ID."""
    async with approvals_app(local_slack, _db(tmp_path), fake_providers) as app:
        request_id = await app.request("credit acct_northwind 40 outage on Nov 3")
        request = await app.get(request_id)
        assert request.provider == "orb" and request.kind == "credit"

        await app.click(APPROVE_ACTION, request_id, user=BOB)

        done = await app.get(request_id)
        assert done.state is RequestState.EXECUTED and done.provider_object_id
        ledger = fake_providers.orb.requests_to(r"/credits/ledger_entry$")
        assert len(ledger) == 1
        assert ledger[0].headers["idempotency-key"] == f"bt:{request_id}:credit"
        assert "Credited" in app.message_text(request_id)


async def test_twenty_concurrent_approvals_make_one_refund(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """Twenty approvers clicking Approve at once: exactly one refund at Stripe, one approval
    counted, nineteen told it was already approved — with the audit rows of all twenty."""
    approvers = [f"U0APPROVER{i:02d}" for i in range(20)]
    async with approvals_app(
        local_slack, _db(tmp_path), fake_providers, finance_approvers=",".join(approvers)
    ) as app:
        request_id = await app.request("refund acct_globex 30 duplicate charge")
        told = await asyncio.gather(
            *(app.click(APPROVE_ACTION, request_id, user=u, settle=False) for u in approvers)
        )
        await app.settle()
        request = await app.wait_state(request_id, RequestState.EXECUTED)

        assert len(await app.refunds_at_stripe(str(request.payment_id))) == 1
        assert request.approval_count == 1 and len(request.approvals) == 1
        replies = [r for t in app.running.slack.calls_to("response_url") for r in [t.args]]
        refused = [r for r in replies if "already approved" in str(r.get("text"))]
        assert len(refused) == 19
        clicks = [
            e for e in await app.trail(f"request:{request_id}") if e.action == "click.approve"
        ]
        assert sorted(e.detail["outcome"] for e in clicks) == ["accepted"] + ["refused"] * 19
        assert not [t for t in told if t and "Something went wrong" in str(t)]


async def test_two_partial_refunds_of_one_amount_are_two_refunds(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """The key comes from the request: two requests for the same amount on one payment are two
    refunds; approving the first again makes no third."""
    async with approvals_app(local_slack, _db(tmp_path), fake_providers) as app:
        [payment, *_] = await app.payments("acct_globex")
        first = await app.request(f"refund acct_globex 10 {payment.id} first half")
        second = await app.request(f"refund acct_globex 10 {payment.id} second half")
        await app.click(APPROVE_ACTION, first, user=ALICE)
        await app.click(APPROVE_ACTION, second, user=ALICE)
        told = await app.click(APPROVE_ACTION, first, user=BOB)

        refunds = await app.refunds_at_stripe(payment.id)
        assert sorted(r["metadata"]["request_id"] for r in refunds) == sorted([first, second])
        assert "already approved" in str(told[0]["text"])


async def test_the_requester_can_never_approve_their_own_request(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """An approver who asked for the refund is refused on their own request; nothing moves."""
    async with approvals_app(local_slack, _db(tmp_path), fake_providers) as app:
        request_id = await app.request("refund acct_globex 12 duplicate charge", user=ALICE)

        told = await app.click(APPROVE_ACTION, request_id, user=ALICE)
        told_deny = await app.click(DENY_ACTION, request_id, user=ALICE)

        assert "your own request" in told[0]["text"] and told[0]["replace_original"] is False
        assert "your own request" in told_deny[0]["text"]
        assert (await app.get(request_id)).state is RequestState.PENDING
        assert await app.refunds_at_stripe(str((await app.get(request_id)).payment_id)) == []
        clicks = [
            e for e in await app.trail(f"request:{request_id}") if e.action.startswith("click")
        ]
        assert [(e.action, e.detail["refusal"]) for e in clicks] == [
            ("click.approve", "self_approval"), ("click.deny", "self_approval")
        ]  # fmt: skip


async def test_a_stranger_is_refused_and_the_message_is_untouched(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """Someone not in FINANCE_APPROVERS gets an ephemeral refusal, audited; nothing changes."""
    async with approvals_app(local_slack, _db(tmp_path), fake_providers) as app:
        request_id = await app.request("refund acct_globex 12 duplicate charge")
        before = app.message(request_id).blocks

        told = await app.click(APPROVE_ACTION, request_id, user="U0STRANGER")

        assert "Only finance approvers" in told[0]["text"]
        assert told[0]["response_type"] == "ephemeral"
        assert app.message(request_id).blocks == before
        request = await app.get(request_id)
        assert request.state is RequestState.PENDING and request.approvals == ()
        [refusal] = [
            e for e in await app.trail(f"request:{request_id}") if e.action == "click.approve"
        ]
        assert (refusal.actor, refusal.detail["refusal"]) == ("U0STRANGER", "not_approver")


async def test_group_members_approve_until_removed_and_the_cache_expires(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """FINANCE_APPROVERS may name a user group: its members approve (the list is cached, one
    lookup for many clicks); someone removed from the group can no longer approve once the
    cache (≤ 60 s) has expired; a group Slack can't read fails closed."""
    local_slack.usergroups["S0FINANCE"] = ["U0GROUPED", "U0LEAVER"]
    async with approvals_app(
        local_slack, _db(tmp_path), fake_providers, finance_approvers="S0FINANCE"
    ) as app:
        access = app.running.deps.access
        now = [1000.0]
        access.clock = lambda: now[0]
        first = await app.request("refund acct_globex 5 duplicate charge")
        await app.click(APPROVE_ACTION, first, user="U0GROUPED")
        assert (await app.get(first)).state is RequestState.EXECUTED

        local_slack.usergroups["S0FINANCE"] = ["U0GROUPED"]  # U0LEAVER removed
        second = await app.request("refund acct_globex 6 duplicate charge")
        third = await app.request("refund acct_globex 7 duplicate charge")
        now[0] += 30  # still cached: the removal is not seen yet
        await app.click(APPROVE_ACTION, second, user="U0LEAVER")
        assert (await app.get(second)).state is RequestState.EXECUTED
        now[0] += 31  # 61 s after the lookup: the cache has expired
        told = await app.click(APPROVE_ACTION, third, user="U0LEAVER")
        assert "Only finance approvers" in told[0]["text"]
        assert (await app.get(third)).state is RequestState.PENDING
        assert len(local_slack.calls_to("usergroups.users.list")) == 2

        local_slack.fail_next("usergroups.users.list", error="ratelimited", retry_after=None,
                              times=5)  # fmt: skip
        now[0] += 61
        told = await app.click(APPROVE_ACTION, third, user="U0GROUPED")
        assert "Only finance approvers" in told[0]["text"]  # fail closed
        assert (await app.get(third)).state is RequestState.PENDING


@pytest.mark.parametrize(
    ("amount", "needed"),
    [("1000", 1), ("1000.01", 2)],
    ids=["exactly-at-the-threshold", "a-cent-above"],
)
async def test_dual_approval_above_the_threshold(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path, amount: str,
    needed: int,
) -> None:  # fmt: skip
    """At DUAL_APPROVAL_ABOVE one approver is enough; above it two different approvers are
    needed, the same approver twice counts once, and the message shows the first approval."""
    async with approvals_app(local_slack, _db(tmp_path), fake_providers) as app:
        request_id = await app.request(f"refund acct_globex {amount} duplicate charge")
        assert (await app.get(request_id)).required_approvals == needed

        await app.click(APPROVE_ACTION, request_id, user=ALICE)
        if needed == 1:
            assert (await app.get(request_id)).state is RequestState.EXECUTED
            return
        after_first = await app.get(request_id)
        assert after_first.state is RequestState.PENDING and after_first.approval_count == 1
        assert f"Approved by <@{ALICE}> (1 of 2)" in app.message_text(request_id)
        assert app.buttons(request_id) == [APPROVE_ACTION, DENY_ACTION]

        told = await app.click(APPROVE_ACTION, request_id, user=ALICE)
        assert "already approved" in told[0]["text"] and "second approver" in told[0]["text"]
        assert (await app.get(request_id)).approval_count == 1

        await app.click(APPROVE_ACTION, request_id, user=BOB)
        done = await app.get(request_id)
        assert done.state is RequestState.EXECUTED
        assert [a.approver for a in done.approvals] == [ALICE, BOB]
        assert len(await app.refunds_at_stripe(str(done.payment_id))) == 1
        assert f"<@{ALICE}> and <@{BOB}>" in app.message_text(request_id)


async def test_a_currency_threshold_of_its_own_applies_to_that_currency(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """DUAL_APPROVAL_ABOVE_BY_CURRENCY overrides the figure for its currency (USD here)."""
    async with approvals_app(
        local_slack, _db(tmp_path), fake_providers, dual_approval_above_by_currency="usd=50"
    ) as app:
        low = await app.request("refund acct_globex 50 duplicate charge")
        high = await app.request("refund acct_globex 50.01 duplicate charge")
        assert (await app.get(low)).required_approvals == 1
        assert (await app.get(high)).required_approvals == 2


async def test_deny_asks_why_and_is_final(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """Deny opens a modal asking why; an empty reason is refused in the modal; the reason is
    recorded, the message says who and why with no buttons, the requester is told, and later
    clicks get "denied by @x"."""
    async with approvals_app(local_slack, _db(tmp_path), fake_providers) as app:
        request_id = await app.request("refund acct_globex 15 duplicate charge")
        await app.click(DENY_ACTION, request_id, user=BOB)
        [opened] = local_slack.calls_to("views.open")
        view = opened.args["view"]
        assert (
            view["callback_id"] == "approval_deny_reason" and request_id in view["private_metadata"]
        )

        empty = await app.submit(
            "approval_deny_reason", {"deny_reason": {"deny_reason_input": "  "}}, user=BOB,
            metadata=view["private_metadata"],
        )  # fmt: skip
        assert empty.json()["response_action"] == "errors"
        assert (await app.get(request_id)).state is RequestState.PENDING

        done = await app.submit(
            "approval_deny_reason", {"deny_reason": {"deny_reason_input": "already credited"}},
            user=BOB, metadata=view["private_metadata"],
        )  # fmt: skip
        assert done.status_code == 200 and not done.content
        await app.settle()
        request = await app.get(request_id)
        assert request.state is RequestState.DENIED
        assert (request.decided_by, request.decision_reason) == (BOB, "already credited")
        assert app.buttons(request_id) == []
        assert "already credited" in app.message_text(request_id)
        dms = [m for m in local_slack.messages if m.channel == dm_channel_id(REQUESTER)]
        assert len(dms) == 1 and "denied" in (dms[0].text or "")
        told = await app.click(APPROVE_ACTION, request_id, user=ALICE)
        assert f"denied by <@{BOB}>" in told[0]["text"]
        assert await app.refunds_at_stripe(str(request.payment_id)) == []
        assert "click.deny" in await app.actions(request_id)


async def test_a_late_deny_after_an_approval_is_refused_in_the_modal(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """The Deny modal is authorised again on submission: approved meanwhile, it says so."""
    async with approvals_app(local_slack, _db(tmp_path), fake_providers) as app:
        request_id = await app.request("refund acct_globex 16 duplicate charge")
        await app.click(DENY_ACTION, request_id, user=BOB)
        [opened] = local_slack.calls_to("views.open")
        await app.click(APPROVE_ACTION, request_id, user=ALICE)

        late = await app.submit(
            "approval_deny_reason", {"deny_reason": {"deny_reason_input": "no"}}, user=BOB,
            metadata=opened.args["view"]["private_metadata"],
        )  # fmt: skip

        assert late.json()["response_action"] == "errors"
        assert "already approved" in str(late.json()["errors"])
        assert (await app.get(request_id)).state is RequestState.EXECUTED


async def test_a_pending_request_expires_closed_from_the_periodic_job(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """After REQUEST_TTL_HOURS the job expires it: the message says so with no buttons, the
    requester is told, and an approval click afterwards gets "expired" and moves nothing."""
    async with approvals_app(
        local_slack, _db(tmp_path), fake_providers, request_ttl_hours=1
    ) as app:
        service = app.running.deps.approvals
        assert service is not None
        # Made two hours ago with a one-hour TTL: its time ran out an hour ago.
        service.clock = lambda: datetime.now(UTC) - timedelta(hours=2)
        request_id = await app.request("refund acct_globex 17 duplicate charge")
        service.clock = lambda: datetime.now(UTC)

        await app.run_job()

        request = await app.get(request_id)
        assert request.state is RequestState.EXPIRED
        assert app.buttons(request_id) == [] and "Expired" in app.message_text(request_id)
        dms = [m for m in local_slack.messages if m.channel == dm_channel_id(REQUESTER)]
        assert len(dms) == 1 and "expired" in (dms[0].text or "")
        told = await app.click(APPROVE_ACTION, request_id, user=ALICE)
        assert "expired" in told[0]["text"]
        assert await app.refunds_at_stripe(str(request.payment_id)) == []
        transitions = [e.detail for e in await app.trail(f"request:{request_id}")
                       if e.action == "request.transition"]  # fmt: skip
        assert transitions[-1]["to"] == "expired"


async def test_a_click_after_the_deadline_expires_it_even_before_the_job(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """Fail closed: an Approve click past the expiry time expires the request on the spot."""
    async with approvals_app(local_slack, _db(tmp_path), fake_providers) as app:
        service = app.running.deps.approvals
        assert service is not None
        service.clock = lambda: datetime.now(UTC) - timedelta(hours=49)
        request_id = await app.request("refund acct_globex 18 duplicate charge")
        service.clock = lambda: datetime.now(UTC)

        told = await app.click(APPROVE_ACTION, request_id, user=ALICE)

        assert "expired" in told[0]["text"]
        assert (await app.get(request_id)).state is RequestState.EXPIRED


async def test_retry_on_a_request_that_did_not_fail_changes_nothing(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """A Retry click on a pending request (a forged button) is refused and audited."""
    async with approvals_app(local_slack, _db(tmp_path), fake_providers) as app:
        request_id = await app.request("refund acct_globex 19 duplicate charge")
        told = await app.click(RETRY_ACTION, request_id, user=ALICE)
        assert "nothing to retry" in told[0]["text"]
        assert (await app.get(request_id)).state is RequestState.PENDING


async def test_a_click_on_an_unknown_request_is_refused(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """A button value naming no request (or not a request ID at all) changes nothing."""
    async with approvals_app(local_slack, _db(tmp_path), fake_providers) as app:
        request_id = await app.request("refund acct_globex 20 duplicate charge")
        message = app.message(request_id)
        message.text = (message.text or "") + " REQ-AAAAAAAA"
        told = await app.click(APPROVE_ACTION, "REQ-AAAAAAAA", user=ALICE)
        assert "no request" in told[0]["text"]
        assert (await app.get(request_id)).state is RequestState.PENDING


async def test_history_shows_requests_decisions_and_the_trail(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """`/billing history ACCOUNT` lists the account's requests; `history REQUEST_ID` adds the
    audit trail; the status view shows the requests still pending."""
    async with approvals_app(local_slack, _db(tmp_path), fake_providers) as app:
        done = await app.request("refund acct_globex 21 duplicate charge")
        waiting = await app.request("credit acct_globex 9 goodwill")
        await app.click(APPROVE_ACTION, done, user=ALICE)

        by_account = await app.running.answer("history acct_globex", key="h1")
        by_id = await app.running.answer(f"history {done}", key="h2")
        status = await app.running.answer("acct_globex", key="s1")

    listing = str(by_account["blocks"])
    assert done in listing and waiting in listing and "executed" in listing and "pending" in listing
    trail = str(by_id["blocks"])
    for action in ("request.created", "click.approve", "provider.call", "provider.result"):
        assert action in trail
    pending = str(status["blocks"])
    assert "Pending requests" in pending and waiting in pending and done not in pending


async def test_share_in_channel_only_reruns_lookups(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """A Share button carrying a refund command (forged) is refused; nothing is requested."""
    from handlers.views import SHARE_ACTION, command_value
    from tests.support.slack import block_actions_body, signed_headers

    async with approvals_app(local_slack, _db(tmp_path), fake_providers) as app:
        body = block_actions_body(
            SHARE_ACTION,
            command_value("refund acct_globex 25 duplicate charge"),
            user_id=ALICE,
            channel_id="C0SUPPORT",
            is_ephemeral=True,
            response_url=local_slack.response_url("share"),
        )
        response = await app.running.post_slack(body, signed_headers(body))
        assert response.status_code == 200
        await app.settle()
        told = app.running.responses("share")
        assert "Only lookups can be shared" in str(told)
        assert await app.stored() == []
        assert not [m for m in local_slack.messages if m.channel == FINANCE]


def _texts(calls: list[Any]) -> str:
    return "\n".join(str(c) for c in calls)
