"""`@Billing Triage …` mentions: find the account and intent in the text, answer in a thread."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncSay
from slack_sdk.web.async_client import AsyncWebClient

from bot.deps import Deps
from bot.domain.commands import DraftCommand, TicketCommand, parse_mention
from handlers.dispatch import answer, quick_answer
from handlers.errors import after_ack


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
        # Bolt acks events itself once this returns; the answer is worked out after.
        deps.metrics.inc("billing_triage_mentions_total")

        async def work() -> None:
            thread = event.get("thread_ts") or event.get("ts")
            cmd = parse_mention(event.get("text") or "", bot_user_id=context.get("bot_user_id"))
            reply = quick_answer(cmd, deps) or await answer(
                cmd,
                deps,
                command_text=event.get("text") or "",
                source="mention",
                user=event.get("user"),
            )
            if isinstance(cmd, (DraftCommand, TicketCommand)):
                # A draft (a ticket's too) is for the engineer only, even when asked for in a
                # channel.
                await client.chat_postEphemeral(
                    channel=event["channel"],
                    user=event["user"],
                    thread_ts=thread,
                    text=reply.text,
                    blocks=reply.render_blocks(with_share=False),
                )
                return
            await say(
                text=reply.text, blocks=reply.render_blocks(with_share=False), thread_ts=thread
            )

        after_ack(deps, work, body=body, context=context, client=client, respond=None)
