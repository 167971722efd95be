"""Slack test helpers (a pytest plugin): signed request headers, request bodies shaped like the
ones Slack sends (slash commands, events, button clicks, modal submissions), and a `local_slack`
fixture, a started `integrations.sandbox.slack.LocalSlack` that answers the bot's Web API calls.

Bodies follow Slack's wire formats (notes/slack.md §6 and §14): slash commands form-encoded,
interactivity as `payload=<url-encoded JSON>`, events as raw JSON.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import pytest_asyncio
from slack_sdk.signature import SignatureVerifier

from integrations.sandbox.slack import LocalSlack

SIGNING_SECRET = "test-signing-secret"
BOT_TOKEN = "xoxb-test-0000"

TEAM_ID = "T0BILLING"
TEAM_DOMAIN = "billing-local"
API_APP_ID = "A0BILLING"
BOT_USER_ID = "UBOTTRIAGE"
VERIFICATION_TOKEN = "legacy-verification-token"
# Port 9 (discard) on loopback: a response_url that nobody serves, so a test that forgets to pass
# `local_slack.response_url(...)` fails fast and never reaches the internet.
UNSERVED_RESPONSE_URL = "http://127.0.0.1:9/commands/unserved"

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


def signed_headers(
    body: str,
    *,
    secret: str = SIGNING_SECRET,
    timestamp: int | None = None,
    content_type: str | None = None,
) -> dict[str, str]:
    """Headers Slack would send with `body`: content type, timestamp and `v0=` signature.

    `content_type` defaults to JSON for a body that starts with `{`, else form-encoded.
    """
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
    assert signature is not None  # None only when timestamp or body is None
    if content_type is None:
        content_type = JSON if body.lstrip().startswith("{") else FORM
    return {
        "content-type": content_type,
        "x-slack-request-timestamp": ts,
        "x-slack-signature": signature,
    }


def slash_command_body(
    text: str,
    *,
    user_id: str = "U0SUPPORT",
    command: str = "/billing",
    channel_id: str = "C0SUPPORT",
    response_url: str = UNSERVED_RESPONSE_URL,
    trigger_id: str = "tr.1",
) -> str:
    """A form-encoded slash command invocation, as Slack posts it."""
    return urlencode(
        {
            "token": VERIFICATION_TOKEN,
            "team_id": TEAM_ID,
            "team_domain": TEAM_DOMAIN,
            "channel_id": channel_id,
            "channel_name": channel_id.lower(),
            "user_id": user_id,
            "user_name": user_id.lower(),
            "command": command,
            "text": text,
            "api_app_id": API_APP_ID,
            "is_enterprise_install": "false",
            "response_url": response_url,
            "trigger_id": trigger_id,
        }
    )


def event_body(
    event: dict[str, Any],
    *,
    event_id: str = "Ev0001",
    team_id: str = TEAM_ID,
    event_time: int | None = None,
) -> str:
    """A JSON `event_callback` envelope around `event`."""
    return json.dumps(
        {
            "token": VERIFICATION_TOKEN,
            "team_id": team_id,
            "api_app_id": API_APP_ID,
            "event": event,
            "type": "event_callback",
            "event_id": event_id,
            "event_time": int(time.time()) if event_time is None else event_time,
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": team_id,
                    "user_id": BOT_USER_ID,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": f"4-local-{event_id}",
        }
    )


def app_mention(
    text: str,
    *,
    user: str = "U0SUPPORT",
    channel: str = "C0SUPPORT",
    ts: str = "1700000000.000100",
    thread_ts: str | None = None,
) -> dict[str, Any]:
    """An `app_mention` event; `text` is sent as given, so include `<@UBOTTRIAGE>` yourself."""
    event: dict[str, Any] = {
        "type": "app_mention",
        "user": user,
        "text": text,
        "ts": ts,
        "channel": channel,
        "event_ts": ts,
        "team": TEAM_ID,
        "client_msg_id": f"msg-{ts}",
    }
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
    return event


def _user(user_id: str) -> dict[str, Any]:
    return {"id": user_id, "username": user_id.lower(), "name": user_id.lower(), "team_id": TEAM_ID}


def _payload_body(payload: dict[str, Any]) -> str:
    return urlencode({"payload": json.dumps(payload)})


def block_actions_body(
    action_id: str,
    value: str | None,
    *,
    user_id: str,
    channel_id: str = "C0FINANCE",
    message_ts: str | None = None,
    response_url: str = UNSERVED_RESPONSE_URL,
    is_ephemeral: bool = False,
    block_id: str = "b1",
    message: dict[str, Any] | None = None,
) -> str:
    """A button click (`block_actions`), form-encoded as `payload=<JSON>`.

    `message` is the clicked message (e.g. built from a `LocalSlack` message); by default a minimal
    one at `message_ts`. Ephemeral sources carry no `message`, as on Slack.
    """
    ts = message_ts or (message or {}).get("ts") or "1700000000.000100"
    action: dict[str, Any] = {
        "action_id": action_id,
        "block_id": block_id,
        "text": {"type": "plain_text", "text": action_id, "emoji": True},
        "type": "button",
        "action_ts": f"{int(time.time())}.000200",
    }
    if value is not None:
        action["value"] = value
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": _user(user_id),
        "api_app_id": API_APP_ID,
        "token": VERIFICATION_TOKEN,
        "container": {
            "type": "message",
            "message_ts": ts,
            "channel_id": channel_id,
            "is_ephemeral": is_ephemeral,
        },
        "trigger_id": "tr.action.1",
        "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": channel_id.lower()},
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [action],
    }
    if not is_ephemeral:
        payload["message"] = message or {
            "type": "message",
            "ts": ts,
            "user": BOT_USER_ID,
            "bot_id": "BBOTTRIAGE",
            "text": "",
            "blocks": [],
            "team": TEAM_ID,
        }
    return _payload_body(payload)


def view_submission_body(
    callback_id: str,
    values: dict[str, Any],
    *,
    user_id: str,
    private_metadata: str = "",
    view_id: str = "V0SUBMIT0001",
    blocks: list[dict[str, Any]] | None = None,
) -> str:
    """A modal submission (`view_submission`), form-encoded as `payload=<JSON>`.

    `values` is `view.state.values`: `{block_id: {action_id: state}}`; a plain string `state` is
    taken as a text input's value. `view_id` and `blocks` are the submitted view's (as Slack
    sends them back), e.g. from a view the fake Slack opened.
    """
    state = {
        block_id: {
            action_id: (
                {"type": "plain_text_input", "value": item} if isinstance(item, str) else item
            )
            for action_id, item in actions.items()
        }
        for block_id, actions in values.items()
    }
    payload = {
        "type": "view_submission",
        "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
        "user": _user(user_id),
        "api_app_id": API_APP_ID,
        "token": VERIFICATION_TOKEN,
        "trigger_id": "tr.view.1",
        "view": {
            "id": view_id,
            "team_id": TEAM_ID,
            "type": "modal",
            "blocks": blocks or [],
            "private_metadata": private_metadata,
            "callback_id": callback_id,
            "state": {"values": state},
            "hash": "1700000000.abcdef",
            "title": {"type": "plain_text", "text": "Billing Triage"},
            "clear_on_close": False,
            "notify_on_close": False,
            "close": None,
            "submit": {"type": "plain_text", "text": "Submit"},
            "previous_view_id": None,
            "root_view_id": view_id,
            "app_id": API_APP_ID,
            "external_id": "",
            "app_installed_team_id": TEAM_ID,
            "bot_id": "BBOTTRIAGE",
        },
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": None,
    }
    return _payload_body(payload)


@pytest_asyncio.fixture
async def local_slack() -> AsyncIterator[LocalSlack]:
    """A started `LocalSlack` that accepts `BOT_TOKEN`; stopped after the test."""
    slack = LocalSlack(token=BOT_TOKEN, team_id=TEAM_ID, bot_user_id=BOT_USER_ID)
    await slack.start()
    try:
        yield slack
    finally:
        await slack.stop()
