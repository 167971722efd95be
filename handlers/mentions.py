"""`@Billing Triage …` mentions: find the account and intent in the text, answer in a thread."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slack_bolt.async_app import AsyncApp, AsyncSay

from slack_sdk.web.async_client import AsyncWebClient

from bot.domain.commands import parse_mention
from handlers.dispatch import answer
from handlers.errors import guarded

if TYPE_CHECKING:
    from bot.app import Deps


def register(app: AsyncApp, deps: Deps) -> None:
    """Register the app_mention listener."""

    @app.event("app_mention")
    async def handle_app_mention(
        body: dict[str, Any],
        event: dict[str, Any],
        say: AsyncSay,
        context: dict[str, Any],
        client: AsyncWebClient,
    ) -> None:
        # Events are acked by Bolt before this runs.
        async with guarded(deps, body=body, context=context, client=client, respond=None):
            deps.metrics.inc("billing_triage_mentions_total")
            thread = event.get("thread_ts") or event.get("ts")
            cmd = parse_mention(event.get("text") or "", bot_user_id=context.get("bot_user_id"))
            reply = await answer(cmd, deps, command_text=event.get("text") or "")
            await say(text=reply.text, blocks=reply.render_blocks(with_share=False), thread_ts=thread)
