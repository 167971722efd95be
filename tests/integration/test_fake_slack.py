"""The fake Slack Web API (integrations.sandbox.slack) over real HTTP on 127.0.0.1, driven by
slack_sdk's AsyncWebClient (as the bot does), httpx for response_url posts, and a small Bolt app
using the tests/support/slack helpers."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from integrations.sandbox.slack import LocalSlack, SlackCall, validate_blocks, validate_view
from tests.support.slack import (
    BOT_TOKEN,
    SIGNING_SECRET,
    app_mention,
    block_actions_body,
    event_body,
    signed_headers,
    slash_command_body,
    view_submission_body,
)


@pytest.fixture
def client(local_slack: LocalSlack) -> AsyncWebClient:
    """The bot's Web API client, aimed at the stand-in."""
    return AsyncWebClient(token=BOT_TOKEN, base_url=local_slack.base_url)


def _section(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}, **extra}


def _button(text: str = "Approve", **extra: Any) -> dict[str, Any]:
    return {"type": "button", "text": {"type": "plain_text", "text": text}, **extra}


def _actions(*elements: dict[str, Any]) -> dict[str, Any]:
    return {"type": "actions", "elements": list(elements)}


def _modal(**extra: Any) -> dict[str, Any]:
    view = {"type": "modal", "title": {"type": "plain_text", "text": "Deny request"}, "blocks": []}
    return {**view, **extra}


def _plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text}


async def _slack_error(call: Any) -> SlackApiError:
    with pytest.raises(SlackApiError) as caught:
        await call
    return caught.value


# -- identity and tokens ------------------------------------------------------------------------


async def test_auth_test_answers_the_bot_identity(client: AsyncWebClient) -> None:
    """Bolt's first call, auth.test, learns the bot user, bot and team IDs."""
    response = await client.auth_test()
    assert response["user_id"] == "UBOTTRIAGE"
    assert response["bot_id"] == "BBOTTRIAGE"
    assert response["team_id"] == "T0BILLING"
    assert response["url"].startswith("https://")


async def test_wrong_or_missing_token_is_refused(local_slack: LocalSlack) -> None:
    """A wrong bot token gets invalid_auth and a missing one not_authed, as on Slack."""
    wrong = AsyncWebClient(token="xoxb-wrong", base_url=local_slack.base_url)
    error = await _slack_error(wrong.chat_postMessage(channel="C1", text="hi"))
    assert error.response["error"] == "invalid_auth"
    anonymous = AsyncWebClient(base_url=local_slack.base_url)
    error = await _slack_error(anonymous.auth_test())
    assert error.response["error"] == "not_authed"
    assert local_slack.messages == []


async def test_token_in_a_form_body_is_accepted_and_never_recorded(local_slack: LocalSlack) -> None:
    """Callers that send `token` as a form field (older clients) work; the token is not logged."""
    blocks = json.dumps([_section("from a form")])
    async with httpx.AsyncClient() as http:
        response = await http.post(
            local_slack.base_url + "chat.postMessage",
            data={"token": BOT_TOKEN, "channel": "C1", "text": "t", "blocks": blocks},
        )
    assert response.json()["ok"] is True
    (call,) = local_slack.calls_to("chat.postMessage")
    assert "token" not in call.args
    assert call.args["blocks"] == [_section("from a form")]


# -- messages -----------------------------------------------------------------------------------


async def test_post_then_update_replaces_the_message(
    client: AsyncWebClient, local_slack: LocalSlack
) -> None:
    """An approval message is posted, then replaced in place by chat.update (no buttons left)."""
    first = await client.chat_postMessage(
        channel="C0FINANCE", text="Refund R-1", blocks=[_section("R-1"), _actions(_button())]
    )
    second = await client.chat_postMessage(channel="C0FINANCE", text="other", thread_ts=first["ts"])
    assert first["ts"] == "1700000000.000100"
    assert float(second["ts"]) > float(first["ts"])
    assert first["message"]["bot_id"] == "BBOTTRIAGE"
    assert second["message"]["thread_ts"] == first["ts"]

    updated = await client.chat_update(
        channel="C0FINANCE", ts=first["ts"], text="Approved", blocks=[_section("Approved by me")]
    )
    assert updated["ts"] == first["ts"]
    message = local_slack.find_message("C0FINANCE", first["ts"])
    assert message is not None
    assert message.text == "Approved"
    assert message.blocks == [_section("Approved by me")]
    assert [m.ts for m in local_slack.messages] == [first["ts"], second["ts"]]
    assert local_slack.messages[1].thread_ts == first["ts"]


async def test_update_keeps_what_it_does_not_send(
    client: AsyncWebClient, local_slack: LocalSlack
) -> None:
    """chat.update with only text keeps the blocks; `blocks=[]` removes them."""
    posted = await client.chat_postMessage(channel="C1", text="a", blocks=[_section("a")])
    await client.chat_update(channel="C1", ts=posted["ts"], text="b")
    message = local_slack.find_message("C1", posted["ts"])
    assert message is not None
    assert (message.text, message.blocks) == ("b", [_section("a")])
    await client.chat_update(channel="C1", ts=posted["ts"], text="c", blocks=[])
    assert message.blocks == []


async def test_update_needs_an_existing_message_of_the_bot(
    client: AsyncWebClient, local_slack: LocalSlack
) -> None:
    """Unknown and ephemeral messages are not found; other people's messages can't be edited."""
    error = await _slack_error(client.chat_update(channel="C1", ts="1699999999.000001", text="x"))
    assert error.response["error"] == "message_not_found"

    ephemeral = await client.chat_postEphemeral(channel="C1", user="U0SUPPORT", text="only you")
    assert local_slack.ephemerals[0].user == "U0SUPPORT"
    error = await _slack_error(
        client.chat_update(channel="C1", ts=ephemeral["message_ts"], text="x")
    )
    assert error.response["error"] == "message_not_found"

    theirs = local_slack.seed_message(channel="C1", text="hello", user="U0SUPPORT")
    error = await _slack_error(client.chat_update(channel="C1", ts=theirs.ts, text="x"))
    assert error.response["error"] == "cant_update_message"
    error = await _slack_error(client.chat_delete(channel="C1", ts=theirs.ts))
    assert error.response["error"] == "cant_delete_message"
    assert theirs.text == "hello"


async def test_delete_removes_the_message(client: AsyncWebClient, local_slack: LocalSlack) -> None:
    """chat.delete removes the bot's message; a second delete finds nothing."""
    posted = await client.chat_postMessage(channel="C1", text="bye")
    await client.chat_delete(channel="C1", ts=posted["ts"])
    assert local_slack.messages == []
    error = await _slack_error(client.chat_delete(channel="C1", ts=posted["ts"]))
    assert error.response["error"] == "message_not_found"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"channel": "C1", "text": "x" * 40_001}, "msg_too_long"),
        ({"channel": "C1"}, "no_text"),
        ({"channel": "C1", "text": ""}, "no_text"),
        ({"text": "hello"}, "channel_not_found"),
    ],
)
async def test_message_argument_errors(
    client: AsyncWebClient, kwargs: dict[str, Any], error: str
) -> None:
    """Too-long text, nothing to show, or no channel are refused the way Slack refuses them."""
    caught = await _slack_error(client.api_call("chat.postMessage", json=kwargs))
    assert caught.response["error"] == error


async def test_text_of_exactly_40000_characters_is_accepted(client: AsyncWebClient) -> None:
    """The 40,000-character limit is inclusive."""
    assert (await client.chat_postMessage(channel="C1", text="x" * 40_000))["ok"]


# -- Block Kit limits ---------------------------------------------------------------------------

BROKEN_BLOCKS: dict[str, tuple[list[dict[str, Any]], str]] = {
    "51 blocks": (
        [{"type": "divider"}] * 51,
        "no more than 50 items allowed [json-pointer:/blocks]",
    ),
    "section text 3001": ([_section("x" * 3001)], "/blocks/0/text/text"),
    "11 fields": (
        [{"type": "section", "fields": [_plain("f")] * 11}],
        "no more than 10 items allowed [json-pointer:/blocks/0/fields]",
    ),
    "field 2001": (
        [{"type": "section", "fields": [_plain("x" * 2001)]}],
        "must be less than 2001 characters [json-pointer:/blocks/0/fields/0/text]",
    ),
    "header 151": ([{"type": "header", "text": _plain("h" * 151)}], "/blocks/0/text/text"),
    "header mrkdwn": (
        [{"type": "header", "text": {"type": "mrkdwn", "text": "*h*"}}],
        "must be plain_text [json-pointer:/blocks/0/text/type]",
    ),
    "button text 76": ([_actions(_button("b" * 76))], "/blocks/0/elements/0/text/text"),
    "button value 2001": (
        [_actions(_button(value="v" * 2001))],
        "must be less than 2001 characters [json-pointer:/blocks/0/elements/0/value]",
    ),
    "button url 3001": (
        [_actions(_button(url="https://x.test/" + "u" * 2990))],
        "must be less than 3001 characters [json-pointer:/blocks/0/elements/0/url]",
    ),
    "26 actions": (
        [_actions(*[_button(action_id=f"a{i}") for i in range(26)])],
        "no more than 25 items allowed [json-pointer:/blocks/0/elements]",
    ),
    "11 context elements": (
        [{"type": "context", "elements": [_plain("c")] * 11}],
        "no more than 10 items allowed [json-pointer:/blocks/0/elements]",
    ),
    "block_id 256": ([_section("x", block_id="b" * 256)], "/blocks/0/block_id"),
    "action_id 256": ([_actions(_button(action_id="a" * 256))], "/blocks/0/elements/0/action_id"),
    "duplicate block_id": (
        [_section("x", block_id="same"), _section("y", block_id="same")],
        "duplicate block_id 'same' [json-pointer:/blocks/1/block_id]",
    ),
    "unknown block type": ([{"type": "banner"}], "unsupported type: banner"),
    "bad text type": (
        [{"type": "section", "text": {"type": "html", "text": "<b>x</b>"}}],
        "must be a valid enum value [json-pointer:/blocks/0/text/type]",
    ),
    "section without text": ([{"type": "section"}], "must provide either text or fields"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_BLOCKS))
async def test_each_block_kit_limit_is_enforced(
    client: AsyncWebClient, local_slack: LocalSlack, case: str
) -> None:
    """A message over a Block Kit limit is refused with invalid_blocks naming the spot."""
    blocks, expected = BROKEN_BLOCKS[case]
    error = await _slack_error(client.chat_postMessage(channel="C1", text="t", blocks=blocks))
    assert error.response["error"] == "invalid_blocks"
    assert any(expected in e for e in error.response["errors"]), error.response["errors"]
    assert all(m.startswith("[ERROR] ") for m in error.response["response_metadata"]["messages"])
    assert local_slack.messages == []
    assert local_slack.calls_to("chat.postMessage")[0].ok is False


async def test_blocks_at_the_limits_are_accepted(client: AsyncWebClient) -> None:
    """Exactly 50 blocks, 3000-character text, 10 fields of 2000, 25 buttons all pass."""
    blocks = [
        _section("x" * 3000),
        {"type": "section", "fields": [_plain("f" * 2000)] * 10},
        {"type": "header", "text": _plain("h" * 150)},
        _actions(*[_button("b" * 75, action_id=f"a{i}", value="v" * 2000) for i in range(25)]),
        {"type": "context", "elements": [_plain("c")] * 10},
        *[{"type": "divider", "block_id": f"d{i}"} for i in range(45)],
    ]
    assert len(blocks) == 50
    assert (await client.chat_postMessage(channel="C1", text="t", blocks=blocks))["ok"]


async def test_chat_update_validates_blocks_too(
    client: AsyncWebClient, local_slack: LocalSlack
) -> None:
    """An update over a limit is refused and leaves the message as it was."""
    posted = await client.chat_postMessage(channel="C1", text="t", blocks=[_section("ok")])
    error = await _slack_error(
        client.chat_update(channel="C1", ts=posted["ts"], text="t", blocks=[_section("x" * 3001)])
    )
    assert error.response["error"] == "invalid_blocks"
    message = local_slack.find_message("C1", posted["ts"])
    assert message is not None
    assert message.blocks == [_section("ok")]


def test_validators_can_be_used_without_a_server() -> None:
    """Builders' unit tests can check blocks and views directly."""
    assert validate_blocks([_section("fine")]) == []
    assert validate_blocks([{"type": "divider"}] * 51)
    assert validate_view(_modal()) == []
    assert validate_view(_modal(title=_plain("t" * 25)))


# -- views --------------------------------------------------------------------------------------


async def test_views_open_update_and_push(client: AsyncWebClient, local_slack: LocalSlack) -> None:
    """A modal opens with an ID, can be updated by that ID, and another can be pushed on top."""
    opened = await client.views_open(trigger_id="tr.1", view=_modal(callback_id="deny"))
    view_id = opened["view"]["id"]
    assert view_id.startswith("V")
    assert opened["view"]["callback_id"] == "deny"
    assert opened["view"]["state"] == {"values": {}}

    updated = await client.views_update(view_id=view_id, view=_modal(callback_id="deny2"))
    assert updated["view"]["id"] == view_id
    assert local_slack.views[view_id]["callback_id"] == "deny2"

    pushed = await client.views_push(trigger_id="tr.2", view=_modal())
    assert pushed["view"]["id"] != view_id

    error = await _slack_error(client.views_update(view_id="VNOPE", view=_modal()))
    assert error.response["error"] == "not_found"
    error = await _slack_error(client.api_call("views.open", json={"view": _modal()}))
    assert error.response["error"] == "invalid_trigger_id"


@pytest.mark.parametrize(
    ("view", "pointer"),
    [
        (_modal(title=_plain("t" * 25)), "/view/title/text"),
        (_modal(submit=_plain("s" * 25)), "/view/submit/text"),
        (_modal(close=_plain("c" * 25)), "/view/close/text"),
        (_modal(private_metadata="m" * 3001), "/view/private_metadata"),
        (_modal(callback_id="c" * 256), "/view/callback_id"),
        (_modal(blocks=[{"type": "divider"}] * 101), "/view/blocks"),
        (_modal(title=None), "/view/title"),
        (
            _modal(
                blocks=[
                    {
                        "type": "input",
                        "label": _plain("Reason"),
                        "element": {"type": "plain_text_input", "action_id": "r"},
                    }
                ]
            ),
            "/view/submit",
        ),
    ],
)
async def test_view_limits_are_enforced(
    client: AsyncWebClient, view: dict[str, Any], pointer: str
) -> None:
    """Titles and buttons over 24 characters, long metadata, too many blocks are refused."""
    error = await _slack_error(client.views_open(trigger_id="tr.1", view=view))
    assert error.response["error"] == "invalid_blocks"
    assert any(f"[json-pointer:{pointer}]" in e for e in error.response["errors"])


# -- faults -------------------------------------------------------------------------------------


async def test_scripted_rate_limit_answers_429_with_retry_after(
    client: AsyncWebClient, local_slack: LocalSlack
) -> None:
    """fail_next makes the next call a 429 with Retry-After; the call after it works again."""
    local_slack.fail_next("chat.postMessage", retry_after=7)
    error = await _slack_error(client.chat_postMessage(channel="C1", text="x"))
    assert error.response.status_code == 429
    assert error.response.headers["Retry-After"] == "7"
    assert error.response["error"] == "ratelimited"
    assert (await client.chat_postMessage(channel="C1", text="x"))["ok"]
    assert [c.ok for c in local_slack.calls_to("chat.postMessage")] == [False, True]
    assert len(local_slack.messages) == 1


async def test_rate_limit_retry_handler_retries_through_the_429(local_slack: LocalSlack) -> None:
    """With AsyncRateLimitErrorRetryHandler the bot's call succeeds after one 429."""
    client = AsyncWebClient(
        token=BOT_TOKEN,
        base_url=local_slack.base_url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)],
    )
    local_slack.fail_next("chat.postMessage", retry_after=0)
    response = await client.chat_postMessage(channel="C1", text="after a pause")
    assert response["ok"]
    assert [c.ok for c in local_slack.calls_to("chat.postMessage")] == [False, True]


async def test_scripted_errors_other_than_rate_limits_are_200_ok_false(
    client: AsyncWebClient, local_slack: LocalSlack
) -> None:
    """Other scripted errors come back as Slack does them (HTTP 200, ok false), `times` times."""
    local_slack.fail_next("usergroups.users.list", error="plan_upgrade_required", times=2)
    for _ in range(2):
        error = await _slack_error(client.usergroups_users_list(usergroup="S1"))
        assert error.response.status_code == 200
        assert error.response["error"] == "plan_upgrade_required"
    error = await _slack_error(client.usergroups_users_list(usergroup="S1"))
    assert error.response["error"] == "no_such_subteam"  # the script ran out; S1 is not a group
    local_slack.fail_next("chat.postMessage", error="internal_error", status=500)
    error = await _slack_error(client.chat_postMessage(channel="C1", text="x"))
    assert error.response.status_code == 500


# -- look-ups -----------------------------------------------------------------------------------


async def test_usergroup_members_and_unknown_groups() -> None:
    """usergroups.users.list answers the configured members; an unknown group is no_such_subteam."""
    async with LocalSlack(token=BOT_TOKEN, usergroups={"S0FINANCE": ["U0ALICE", "U0BOB"]}) as slack:
        client = AsyncWebClient(token=BOT_TOKEN, base_url=slack.base_url)
        response = await client.usergroups_users_list(usergroup="S0FINANCE")
        assert response["users"] == ["U0ALICE", "U0BOB"]
        slack.usergroups["S0FINANCE"].remove("U0BOB")
        response = await client.usergroups_users_list(usergroup="S0FINANCE")
        assert response["users"] == ["U0ALICE"]
        error = await _slack_error(client.usergroups_users_list(usergroup="S0NOPE"))
        assert error.response["error"] == "no_such_subteam"


async def test_users_info_known_overridden_and_unknown() -> None:
    """users.info returns configured users (fields merged in) and user_not_found for others."""
    users: dict[str, dict[str, Any]] = {
        "U0ALICE": {"real_name": "Alice"},
        "U0GONE": {"deleted": True},
    }
    async with LocalSlack(token=BOT_TOKEN, users=users) as slack:
        client = AsyncWebClient(token=BOT_TOKEN, base_url=slack.base_url)
        alice = (await client.users_info(user="U0ALICE"))["user"]
        assert (alice["id"], alice["real_name"], alice["deleted"]) == ("U0ALICE", "Alice", False)
        assert (await client.users_info(user="U0GONE"))["user"]["deleted"] is True
        assert (await client.users_info(user="UBOTTRIAGE"))["user"]["is_bot"] is True
        error = await _slack_error(client.users_info(user="U0STRANGER"))
        assert error.response["error"] == "user_not_found"


async def test_without_a_user_list_every_user_id_exists(client: AsyncWebClient) -> None:
    """With no `users` given (the shell), any U…/W… ID is a plain active member."""
    user = (await client.users_info(user="W0GRID"))["user"]
    assert (user["id"], user["deleted"], user["is_bot"]) == ("W0GRID", False, False)
    error = await _slack_error(client.users_info(user="not-an-id"))
    assert error.response["error"] == "user_not_found"


async def test_conversations_open_gives_a_dm_channel(
    client: AsyncWebClient, local_slack: LocalSlack
) -> None:
    """The requester's DM opens as a D… channel; posting there is recorded in that channel."""
    opened = await client.conversations_open(users="U0SUPPORT")
    channel = opened["channel"]["id"]
    assert channel == "DU0SUPPORT"
    again = await client.conversations_open(users=["U0SUPPORT"])
    assert again["channel"]["id"] == channel
    assert again["already_open"] is True
    await client.chat_postMessage(channel=channel, text="Your refund was approved")
    assert local_slack.messages[0].channel == channel
    direct = await client.chat_postMessage(channel="U0SUPPORT", text="to the user ID")
    assert direct["channel"] == channel
    error = await _slack_error(client.api_call("conversations.open", params={}))
    assert error.response["error"] == "users_list_not_supplied"


async def test_other_methods_just_answer_ok(client: AsyncWebClient) -> None:
    """Methods the stand-in does not model answer ok, so incidental calls never break a test."""
    assert (await client.reactions_add(channel="C1", name="eyes", timestamp="1.2"))["ok"]


# -- response_url -------------------------------------------------------------------------------


async def test_response_url_posts_are_recorded_and_limited_to_five(
    local_slack: LocalSlack,
) -> None:
    """Five posts to one response_url work; the sixth is refused (404 used_url)."""
    url = local_slack.response_url("cmd-1")
    async with httpx.AsyncClient() as http:
        statuses = []
        for i in range(6):
            response = await http.post(
                url, json={"text": f"reply {i}", "response_type": "ephemeral"}
            )
            statuses.append(response.status_code)
        assert response.json() == {"ok": False, "error": "used_url"}
        other = await http.post(local_slack.response_url("cmd-2"), json={"text": "fresh"})
    assert statuses == [200, 200, 200, 200, 200, 404]
    assert other.status_code == 200
    calls = local_slack.responses_to("cmd-1")
    assert [c.args["text"] for c in calls] == [f"reply {i}" for i in range(6)]
    assert [c.ok for c in calls] == [True] * 5 + [False]


async def test_response_url_validates_blocks(local_slack: LocalSlack) -> None:
    """A response with broken blocks gets HTTP 400 and Slack's invalid_blocks body."""
    async with httpx.AsyncClient() as http:
        response = await http.post(
            local_slack.response_url("k"),
            json={"text": "t", "blocks": [{"type": "header", "text": _plain("h" * 151)}]},
        )
        empty = await http.post(local_slack.response_url("k"), json={"response_type": "ephemeral"})
        delete = await http.post(local_slack.response_url("k"), json={"delete_original": True})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_blocks"
    assert empty.status_code == 400
    assert empty.json()["error"] == "no_text"
    assert delete.status_code == 200


async def test_response_url_tied_to_a_message_acts_on_it(
    client: AsyncWebClient, local_slack: LocalSlack
) -> None:
    """Tied to a channel and message, in_channel posts, replace_original edits, delete deletes."""
    posted = await client.chat_postMessage(channel="C0FINANCE", text="R-1 pending")
    url = local_slack.response_url("click", channel="C0FINANCE", message_ts=posted["ts"])
    async with httpx.AsyncClient() as http:
        await http.post(url, json={"text": "only you", "replace_original": False})
        await http.post(url, json={"text": "R-1 approved", "replace_original": True})
        original = local_slack.find_message("C0FINANCE", posted["ts"])
        assert original is not None
        assert original.text == "R-1 approved"
        await http.post(url, json={"text": "shared", "response_type": "in_channel"})
        assert [m.text for m in local_slack.messages] == ["R-1 approved", "shared"]
        await http.post(url, json={"delete_original": True})
    assert [m.text for m in local_slack.messages] == ["shared"]


async def test_bolt_style_respond_reaches_the_response_url(local_slack: LocalSlack) -> None:
    """slack_sdk's webhook client (behind Bolt's respond()) posts replies the stand-in records."""
    webhook = AsyncWebhookClient(local_slack.response_url("r1"))
    response = await webhook.send(
        text="Shared", response_type="in_channel", replace_original=False, blocks=[_section("x")]
    )
    assert response.status_code == 200
    (call,) = local_slack.responses_to("r1")
    assert call.args["response_type"] == "in_channel"
    assert call.args["blocks"] == [_section("x")]


# -- waiting and observing ----------------------------------------------------------------------


async def test_wait_for_returns_once_the_call_arrives(
    client: AsyncWebClient, local_slack: LocalSlack
) -> None:
    """A test can wait for work a listener does after ack()."""

    async def later() -> None:
        await asyncio.sleep(0.05)
        await client.chat_postMessage(channel="C1", text="done")

    task = asyncio.create_task(later())
    calls = await local_slack.wait_for("chat.postMessage", timeout=5)
    await task
    assert calls[0].args["text"] == "done"


async def test_wait_for_times_out_naming_what_happened(
    client: AsyncWebClient, local_slack: LocalSlack
) -> None:
    """When the call never comes, the failure lists the calls that did."""
    await client.auth_test()
    with pytest.raises(TimeoutError, match=r"expected 1 chat.update.*\['auth.test'\]"):
        await local_slack.wait_for("chat.update", timeout=0.1)


async def test_on_call_sees_each_call_and_a_failing_hook_is_harmless(
    client: AsyncWebClient, local_slack: LocalSlack
) -> None:
    """The shell's printer hook sees calls as they happen; its own errors never reach the bot."""
    seen: list[SlackCall] = []
    local_slack.on_call = seen.append
    await client.chat_postMessage(channel="C1", text="hi")
    assert [c.method for c in seen] == ["chat.postMessage"]

    def broken(call: SlackCall) -> None:
        raise RuntimeError("printer broke")

    local_slack.on_call = broken
    assert (await client.chat_postMessage(channel="C1", text="still fine"))["ok"]


# -- the helpers with a real Bolt app -----------------------------------------------------------


def _bolt_app(local_slack: LocalSlack) -> AsyncApp:
    return AsyncApp(
        client=AsyncWebClient(token=BOT_TOKEN, base_url=local_slack.base_url),
        signing_secret=SIGNING_SECRET,
        process_before_response=True,
    )


async def _dispatch(app: AsyncApp, body: str) -> int:
    response = await app.async_dispatch(AsyncBoltRequest(body=body, headers=signed_headers(body)))
    return int(response.status)


async def test_signed_slash_command_and_click_run_through_bolt(local_slack: LocalSlack) -> None:
    """The helpers' bodies pass Bolt's signature check and parsing, replies land in the stand-in."""
    app = _bolt_app(local_slack)
    clicks: list[dict[str, Any]] = []
    submissions: list[dict[str, Any]] = []

    @app.command("/billing")
    async def handle_billing(ack: Any, respond: Any, command: dict[str, Any]) -> None:
        await ack()
        await respond(text=f"you asked: {command['text']}")

    @app.action("approve")
    async def handle_approve(ack: Any, body: dict[str, Any], client: Any) -> None:
        await ack()
        clicks.append(body)
        await client.chat_update(
            channel=body["container"]["channel_id"],
            ts=body["container"]["message_ts"],
            text="Approved",
        )

    @app.view("deny")
    async def handle_deny(ack: Any, view: dict[str, Any]) -> None:
        await ack()
        submissions.append(view)

    @app.event("app_mention")
    async def handle_mention(event: dict[str, Any], say: Any) -> None:
        await say(text="on it", thread_ts=event["ts"])

    body = slash_command_body("status acme", response_url=local_slack.response_url("cmd"))
    assert await _dispatch(app, body) == 200
    (reply,) = local_slack.responses_to("cmd")
    assert reply.args["text"] == "you asked: status acme"

    posted = await app.client.chat_postMessage(channel="C0FINANCE", text="R-1")
    click = block_actions_body(
        "approve", "R-1", user_id="U0ALICE", message_ts=posted["ts"], block_id="approval"
    )
    assert await _dispatch(app, click) == 200
    assert clicks[0]["user"]["id"] == "U0ALICE"
    assert clicks[0]["actions"][0]["value"] == "R-1"
    message = local_slack.find_message("C0FINANCE", posted["ts"])
    assert message is not None
    assert message.text == "Approved"

    ephemeral_click = block_actions_body("approve", "R-1", user_id="U0BOB", is_ephemeral=True)
    assert "message" not in json.loads(_payload(ephemeral_click))

    submit = view_submission_body(
        "deny", {"reason": {"reason": "duplicate"}}, user_id="U0ALICE", private_metadata="R-1"
    )
    assert await _dispatch(app, submit) == 200
    assert submissions[0]["state"]["values"]["reason"]["reason"]["value"] == "duplicate"
    assert submissions[0]["private_metadata"] == "R-1"

    mention = event_body(app_mention("<@UBOTTRIAGE> why?", ts="1700000999.000100"))
    assert await _dispatch(app, mention) == 200
    said = await local_slack.wait_for("chat.postMessage", count=2)
    assert said[-1].args["thread_ts"] == "1700000999.000100"


def _payload(form_body: str) -> str:
    return parse_qs(form_body)["payload"][0]


async def test_signed_headers_are_verifiable_and_expire(local_slack: LocalSlack) -> None:
    """Headers verify with Slack's algorithm; an old timestamp or another secret is refused."""
    body = slash_command_body("help")
    verifier = SignatureVerifier(SIGNING_SECRET)
    assert verifier.is_valid_request(body, signed_headers(body))
    assert signed_headers(body)["content-type"] == "application/x-www-form-urlencoded"
    assert signed_headers(event_body({"type": "app_mention"}))["content-type"] == "application/json"
    app = _bolt_app(local_slack)
    stale = signed_headers(body, timestamp=1_600_000_000)
    response = await app.async_dispatch(AsyncBoltRequest(body=body, headers=stale))
    assert response.status == 401
    forged = signed_headers(body, secret="not-the-secret")
    response = await app.async_dispatch(AsyncBoltRequest(body=body, headers=forged))
    assert response.status == 401
