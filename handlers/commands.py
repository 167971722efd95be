"""The `/billing` slash command and the "Share in channel" button."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from bot.deps import Deps
from bot.domain.commands import parse_command
from bot.errors import BotError, UsageError
from handlers import views
from handlers.access import slack_request_id
from handlers.caller import Caller
from handlers.dispatch import READ_ONLY, answer, quick_answer
from handlers.errors import after_ack, note

log = logging.getLogger("handlers.commands")


def register(app: AsyncApp, deps: Deps) -> None:
    """Register the slash command and the share button."""

    @app.command(deps.settings.billing_command)
    async def handle_billing_command(
        ack: AsyncAck,
        body: dict[str, Any],
        command: dict[str, Any],
        respond: AsyncRespond,
        context: dict[str, Any],
        client: AsyncWebClient,
    ) -> None:
        deps.metrics.inc("billing_triage_commands_total")
        text = command.get("text") or ""
        try:
            cmd = parse_command(text)
            immediate = quick_answer(cmd, deps)
        except BotError as error:
            # Argument errors need no I/O: they are the ack's own (ephemeral) reply.
            reply = note(error, deps)
            await ack(text=reply.text, blocks=reply.blocks)
            return
        if immediate is not None:
            await ack(text=immediate.text, blocks=immediate.render_blocks())
            return
        await ack()

        async def work() -> None:
            async def progress(reply: views.Reply) -> None:
                await respond(text=reply.text, blocks=reply.blocks, response_type="ephemeral")
                context["progress_posted"] = True

            caller = Caller(
                user_id=str(command.get("user_id") or ""),
                slack_request=slack_request_id(body),
                trigger_id=str(command.get("trigger_id") or "") or None,
                response_url=str(command.get("response_url") or "") or None,
                client=client,
            )
            reply = await answer(cmd, deps, command_text=text, progress=progress, caller=caller)
            await respond(
                text=reply.text,
                blocks=reply.render_blocks(),
                response_type="ephemeral",
                replace_original=bool(context.get("progress_posted")),
            )

        after_ack(deps, work, body=body, context=context, client=client, respond=respond)

    @app.action(views.SHARE_ACTION)
    async def handle_share_action(
        ack: AsyncAck,
        body: dict[str, Any],
        action: dict[str, Any],
        respond: AsyncRespond,
        context: dict[str, Any],
        client: AsyncWebClient,
    ) -> None:
        await ack()

        async def work() -> None:
            text = views.command_of(action)
            cmd = parse_command(text)
            if not isinstance(cmd, READ_ONLY):
                # Only lookups are re-run and posted; anything that changes something is not
                # shared, whatever the button says. The clicker's own access was checked.
                raise UsageError("Only lookups can be shared in the channel.")
            caller = Caller(str((body.get("user") or {}).get("id") or ""), slack_request_id(body))
            reply = quick_answer(cmd, deps) or await answer(
                cmd, deps, command_text=text, caller=caller
            )
            await respond(
                text=reply.text,
                blocks=reply.render_blocks(with_share=False),
                response_type="in_channel",
                replace_original=False,
            )

        after_ack(deps, work, body=body, context=context, client=client, respond=respond)
