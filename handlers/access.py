"""Who may see billing data (VIEWERS, DESIGN §2): one global middleware in front of every
listener, and the Slack side of user-group resolution.

The middleware checks the acting user of every user request — slash commands, interactive
payloads of any kind (button clicks, modal submissions, shortcuts, option loads) and the events a
user sends (`app_mention`, `message`) — whatever feature or action ID it is for, so the alerts'
and tickets' buttons are covered too. Someone outside VIEWERS gets one short refusal and nothing
else, and the refusal is audited. The shell's `--as` goes through the same dispatch.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.response import BoltResponse
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot.deps import Deps
from bot.domain.commands import SUBCOMMANDS
from bot.domain.records import AuditEvent
from bot.errors import AccessDenied
from handlers.approval_views import not_viewer_text
from handlers.views import section

log = logging.getLogger("handlers.access")

#: Interactive payload types that a user sends (everything interactive, in fact).
_INTERACTIVE = frozenset(
    {
        "block_actions", "view_submission", "view_closed", "block_suggestion", "shortcut",
        "message_action", "interactive_message", "dialog_submission", "workflow_step_edit",
    }
)  # fmt: skip
#: Events a person sends to the bot (others, like `subteam_members_changed`, are not requests).
_USER_EVENTS = frozenset({"app_mention", "message", "app_home_opened"})


class SlackGroupDirectory:
    """`GroupDirectory` over Slack's `usergroups.users.list` (scope `usergroups:read`)."""

    def __init__(self, client: AsyncWebClient) -> None:
        self._client = client

    async def members(self, group_id: str) -> frozenset[str]:
        """The group's user IDs; raises `SlackApiError` (and the like) on any failure."""
        response = await self._client.usergroups_users_list(usergroup=group_id)
        users = response.get("users")
        if not isinstance(users, list):
            raise ValueError("usergroups.users.list answered without a user list")
        return frozenset(str(u) for u in users)


def request_kind(body: dict[str, Any]) -> str | None:
    """What kind of user request `body` is (`command`, an interactive type, an event type), or
    None for traffic that is not a person asking for something."""
    if body.get("command"):
        return "command"
    kind = body.get("type")
    if kind in _INTERACTIVE:
        return str(kind)
    if kind == "event_callback":
        event = body.get("event") or {}
        if event.get("type") in _USER_EVENTS and not event.get("bot_id"):
            return str(event.get("type"))
    return None


def acting_user(body: dict[str, Any]) -> str | None:
    """The user behind a request."""
    if body.get("command"):
        return str(body.get("user_id") or "") or None
    user = body.get("user")
    if isinstance(user, dict) and user.get("id"):
        return str(user["id"])
    event = body.get("event") or {}
    if isinstance(event, dict) and isinstance(event.get("user"), str):
        return str(event["user"])
    return None


def slack_request_id(body: dict[str, Any]) -> str | None:
    """The Slack request's own ID for the audit: the event ID, else the trigger ID (one per
    command, click or submission), else the view ID."""
    for key in ("event_id", "trigger_id"):
        if body.get(key):
            return str(body[key])[:255]
    view = body.get("view")
    if isinstance(view, dict) and view.get("id"):
        return str(view["id"])[:255]
    return None


def _what(body: dict[str, Any], kind: str) -> str:
    """What was asked for, without its arguments (they may name a customer)."""
    if kind == "command":
        words = str(body.get("text") or "").split()
        sub = words[0].lower() if words and words[0].lower() in SUBCOMMANDS else ""
        return f"{body.get('command')} {sub}".strip()[:100]
    actions = body.get("actions")
    if isinstance(actions, list) and actions and isinstance(actions[0], dict):
        return str(actions[0].get("action_id") or "")[:100]
    view = body.get("view")
    if isinstance(view, dict):
        return str(view.get("callback_id") or "")[:100]
    return kind


async def _audit_refusal(deps: Deps, user: str, kind: str, body: dict[str, Any]) -> None:
    try:
        async with deps.database.uow() as uow:
            await uow.audit.append(
                AuditEvent(
                    id=None,
                    at=datetime.now(UTC),
                    actor=user,
                    action="access.refused",
                    subject="viewers",
                    detail={"request": kind, "what": _what(body, kind)},
                    slack_request=slack_request_id(body),
                )
            )
            await uow.commit()
    except Exception:  # the refusal itself stands; only its record is missing
        log.warning("could not audit a refused request", exc_info=True)


async def _tell(body: dict[str, Any]) -> None:
    """Say the refusal through the interaction's `response_url`, ephemerally."""
    url = body.get("response_url")
    if not isinstance(url, str) or not url:
        return
    try:
        await AsyncWebhookClient(url).send(
            text=not_viewer_text(), response_type="ephemeral", replace_original=False
        )
    except Exception:
        log.warning("could not deliver an access refusal", exc_info=True)


async def refuse_non_viewer(
    deps: Deps, body: dict[str, Any], client: AsyncWebClient
) -> BoltResponse | None:
    """The answer for a request from someone outside VIEWERS (the short refusal, audited), or
    None when the request may go on. Called by the one global middleware (handlers.middleware)
    for every request type, so no feature can forget it."""
    kind = request_kind(body)
    user = acting_user(body)
    if kind is None or user is None or await deps.access.can_view(user):
        return None
    deps.metrics.inc("billing_triage_access_refused_total", request=kind)
    deps.observer.record(AccessDenied(not_viewer_text()))  # `ask` exits 1
    log.info("request refused: not a viewer", extra={"request": kind})
    await _audit_refusal(deps, user, kind, body)
    text = not_viewer_text()
    if kind == "command":
        reply = json.dumps({"response_type": "ephemeral", "text": text,
                            "blocks": [section(f":lock: {text}")]})  # fmt: skip
        return BoltResponse(status=200, body=reply, headers={"content-type": "application/json"})
    if kind == "view_submission":
        view = {
            "type": "modal",
            "title": {"type": "plain_text", "text": "Billing Triage"},
            "close": {"type": "plain_text", "text": "Close"},
            "blocks": [section(f":lock: {text}")],
        }
        reply = json.dumps({"response_action": "update", "view": view})
        return BoltResponse(status=200, body=reply, headers={"content-type": "application/json"})
    if kind == "block_suggestion":
        return BoltResponse(status=200, body=json.dumps({"options": []}),
                            headers={"content-type": "application/json"})  # fmt: skip
    if kind in ("app_mention", "message"):
        event = body.get("event") or {}
        channel = event.get("channel")
        if channel:
            deps.inflight.spawn(_post_ephemeral(client, str(channel), user, text))
        return BoltResponse(status=200, body="")
    deps.inflight.spawn(_tell(body))
    return BoltResponse(status=200, body="")


def register(app: AsyncApp, deps: Deps) -> None:
    """Add the group-cache invalidation listener (the VIEWERS check itself runs in the one
    global middleware, `handlers.middleware`, through `refuse_non_viewer`)."""

    @app.event("subteam_members_changed")
    async def handle_subteam_members_changed(event: dict[str, Any]) -> None:
        group = event.get("subteam_id")
        deps.access.forget(str(group) if group else None)


async def _post_ephemeral(client: AsyncWebClient, channel: str, user: str, text: str) -> None:
    try:
        await client.chat_postEphemeral(channel=channel, user=user, text=text)
    except Exception:
        log.warning("could not deliver an access refusal", exc_info=True)
