"""VIEWERS (DESIGN §2, issue 8 (7)): someone outside it gets a short refusal and nothing else —
for slash commands, mentions, every button (whatever feature it belongs to) and modal
submissions, and in the shell — and each refusal is audited."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from bot.app import build_app
from bot.console.shell import LocalSession
from bot.settings import Settings
from handlers.approval_views import APPROVE_ACTION, REQUEST_FORM_CALLBACK
from handlers.views import SHARE_ACTION, command_value
from integrations.sandbox.slack import LocalSlack
from tests.support.approvals import APPROVERS, ApprovalsApp, approvals_app
from tests.support.providers import FakeProviders
from tests.support.slack import FORM, app_mention, block_actions_body, signed_headers

VIEWER = "U0VIEWER"
STRANGER = "U0STRANGER"
REFUSAL = "don't have access to billing data"


def _db(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/viewers.db"


def _viewers() -> str:
    return ",".join([VIEWER, *APPROVERS, "S0BILLING"])


async def _refusals(app: ApprovalsApp) -> list[dict[str, object]]:
    return [
        {"actor": e.actor, **e.detail, "slack_request": e.slack_request}
        for e in await app.trail("viewers")
        if e.action == "access.refused"
    ]


async def test_a_command_from_outside_viewers_gets_only_the_refusal(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """The slash command's own reply is the refusal; no provider is asked, no follow-up is
    posted; the refusal is audited with the Slack request. A viewer is answered."""
    async with approvals_app(local_slack, _db(tmp_path), fake_providers, viewers=_viewers()) as app:
        response = await app.running.command("acct_globex", user_id=STRANGER, key="s")
        await app.settle()

        assert REFUSAL in response.json()["text"]
        assert response.json()["response_type"] == "ephemeral"
        assert app.running.responses("s") == []
        assert fake_providers.stripe.requests == []
        [refusal] = await _refusals(app)
        assert refusal["actor"] == STRANGER and refusal["request"] == "command"
        assert refusal["slack_request"] and "acct_globex" not in str(refusal["what"])

        seen = await app.running.answer("acct_globex", user_id=VIEWER, key="v")
        assert "Globex" in json.dumps(seen)


async def test_a_refund_request_from_outside_viewers_changes_nothing(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """Not even a refund request gets past the refusal."""
    async with approvals_app(local_slack, _db(tmp_path), fake_providers, viewers=_viewers()) as app:
        response = await app.running.command("refund acct_globex 5 oops", user_id=STRANGER)
        await app.settle()
        assert REFUSAL in response.json()["text"]
        assert await app.stored() == []


async def test_a_mention_from_outside_viewers_gets_only_an_ephemeral_refusal(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """A mention is answered by one ephemeral refusal to its author; nothing in the thread."""
    async with approvals_app(local_slack, _db(tmp_path), fake_providers, viewers=_viewers()) as app:
        event = app_mention("<@UBOTTRIAGE> why was acct_globex charged twice?", user=STRANGER)
        response = await app.running.event(event, event_id="EvStranger1")
        assert response.status_code == 200
        await app.settle()

        [ephemeral] = local_slack.calls_to("chat.postEphemeral")
        assert ephemeral.args["user"] == STRANGER and REFUSAL in ephemeral.args["text"]
        assert local_slack.calls_to("chat.postMessage") == []
        assert fake_providers.stripe.requests == []
        [refusal] = await _refusals(app)
        assert refusal["request"] == "app_mention" and refusal["slack_request"] == "EvStranger1"


async def test_any_button_from_outside_viewers_gets_only_the_refusal(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """Share, Approve and a button of a feature the middleware knows nothing about are all
    refused the same way: one ephemeral refusal, no change, audited."""
    async with approvals_app(local_slack, _db(tmp_path), fake_providers, viewers=_viewers()) as app:
        request_id = await app.request("refund acct_globex 5 oops", user=VIEWER)
        before = app.message(request_id).blocks
        told = await app.click(APPROVE_ACTION, request_id, user=STRANGER)
        assert len(told) == 1 and REFUSAL in told[0]["text"]
        assert told[0]["replace_original"] is False
        assert app.message(request_id).blocks == before
        assert (await app.get(request_id)).approvals == ()

        for i, (action, value) in enumerate(
            [(SHARE_ACTION, command_value("acct_globex")), ("alerts_acknowledge", "AL-1")]
        ):
            key = f"b{i}"
            body = block_actions_body(
                action, value, user_id=STRANGER, channel_id="C0SUPPORT", is_ephemeral=True,
                response_url=local_slack.response_url(key),
            )  # fmt: skip
            response = await app.running.post_slack(body, signed_headers(body, content_type=FORM))
            assert response.status_code == 200
            await app.settle()
            [reply] = app.running.responses(key)
            assert REFUSAL in reply["text"] and reply.get("response_type") == "ephemeral"
        assert [r["what"] for r in await _refusals(app)] == [
            APPROVE_ACTION, SHARE_ACTION, "alerts_acknowledge"
        ]  # fmt: skip
        assert [m for m in local_slack.messages if m.channel == "C0SUPPORT"] == []


async def test_a_modal_submission_from_outside_viewers_is_refused(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """A form submitted by someone outside VIEWERS (say, removed since it opened) is answered
    with a refusal view; nothing is stored."""
    async with approvals_app(local_slack, _db(tmp_path), fake_providers, viewers=_viewers()) as app:
        metadata = json.dumps({"k": "refund", "a": "acct_globex", "o": "command"})
        values = {"amount": {"amount_input": "5"}, "reason": {"reason_input": "oops"}}
        response = await app.submit(REQUEST_FORM_CALLBACK, values, user=STRANGER, metadata=metadata)
        answer = response.json()
        assert answer["response_action"] == "update"
        assert REFUSAL in json.dumps(answer["view"])
        await app.settle()
        assert await app.stored() == []


async def test_viewers_may_be_a_user_group(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """A member of a group listed in VIEWERS is answered; Share shares what they may see."""
    local_slack.usergroups["S0BILLING"] = ["U0GROUPIE"]
    async with approvals_app(local_slack, _db(tmp_path), fake_providers, viewers=_viewers()) as app:
        seen = await app.running.answer("acct_globex", user_id="U0GROUPIE", key="g")
        assert "Globex" in json.dumps(seen)
        body = block_actions_body(
            SHARE_ACTION, command_value("acct_globex"), user_id="U0GROUPIE",
            channel_id="C0SUPPORT", is_ephemeral=True,
            response_url=local_slack.response_url("share", channel="C0SUPPORT"),
        )  # fmt: skip
        await app.running.post_slack(body, signed_headers(body, content_type=FORM))
        await app.settle()
        [shared] = app.running.responses("share")
        assert shared["response_type"] == "in_channel" and "Globex" in json.dumps(shared)
        assert await _refusals(app) == []


async def test_the_shells_as_is_covered_too(tmp_path: Path) -> None:
    """`billing-triage ask … --as` a non-viewer prints only the refusal and exits 1."""
    settings = Settings.load(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/shell.db", viewers="U0VIEWER"
    )
    build = functools.partial(build_app, providers={})
    async with LocalSession(settings, user_id=STRANGER, build=build) as session:
        outcome = await session.command("help")
        assert REFUSAL in outcome.output and outcome.exit_code == 1
        session.user_id = "U0VIEWER"
        allowed = await session.command("help")
        assert "Billing Triage" in allowed.output and allowed.exit_code == 0
