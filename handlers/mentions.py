"""`@Billing Triage …` mentions: find the account and intent in the text, answer in a thread."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncSay
from slack_sdk.web.async_client import AsyncWebClient

from bot.deps import Deps
from bot.domain.commands import (
    CreditCommand,
    DraftCommand,
    RefundCommand,
    TicketCommand,
    parse_mention,
)
from handlers.access import slack_request_id
from handlers.caller import Caller
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
            caller = Caller(str(event.get("user") or ""), slack_request_id(body), origin="mention")
            reply = quick_answer(cmd, deps) or await answer(
                cmd, deps, command_text=event.get("text") or "", caller=caller
            )
            if isinstance(cmd, (DraftCommand, RefundCommand, CreditCommand, TicketCommand)):
                # A draft (a ticket triage holds one too) or a request confirmation is for the
                # asker only, even in a channel.
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
