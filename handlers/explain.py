"""`/billing explain` and `/billing draft` (and their mentions), and the draft's "Regenerate"
button. The commands are answered through `handlers.dispatch.answer`, which calls
`explain_reply` / `draft_reply_for`; `register` adds the button's listener."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from bot.deps import Deps
from bot.domain.commands import DraftCommand, ExplainCommand, parse_command
from bot.errors import UsageError
from bot.services.cases import causes_of, record_case
from bot.services.explain import draft_reply, explain_account
from handlers import views
from handlers.errors import after_ack
from handlers.explain_views import (
    DRAFT_REGENERATE_ACTION,
    draft_view,
    explanation_view,
)

# Same shape as `handlers.dispatch.Progress` (not imported: dispatch imports this module).
Progress = Callable[[views.Reply], Awaitable[None]]


def _deadline(deps: Deps) -> float:
    """Seconds the LLM may take before the standard wording is used."""
    return deps.llm_deadline


def _draft_command_text(cmd: DraftCommand) -> str:
    """The draft as `/billing` text, whatever it came from (command, mention or button)."""
    return f"draft {cmd.account.value} {cmd.notes or ''}".strip()


async def explain_reply(
    cmd: ExplainCommand,
    deps: Deps,
    *,
    command_text: str,
    progress: Progress | None = None,
    source: str = "command",
) -> views.Reply:
    """Explain the account's latest (or given) invoice; the answer can be shared in channel."""
    if progress is not None:
        which = f"invoice `{cmd.invoice_id}`" if cmd.invoice_id else "the latest invoice"
        await progress(views.progress_reply(f"Explaining {which} of `{cmd.account.value}`…"))
    result = await explain_account(
        lookup=deps.lookup,
        ident=cmd.account,
        invoice_id=cmd.invoice_id,
        llm=deps.llm,
        deadline=_deadline(deps),
    )
    deps.metrics.inc("billing_triage_wording_total", kind="explain", source=result.wording.source)
    await record_case(
        deps.database,
        source=source,
        kind="explain",
        account_id=result.snapshot.account.account_id,
        findings=causes_of(result.explanation),
        invoice_id=result.explanation.current.id,
    )
    reply = explanation_view(result, sandbox=deps.sandbox)
    return views.Reply(
        text=reply.text,
        blocks=reply.blocks,
        shareable=True,
        share_value=views.command_value(command_text),
    )


async def draft_reply_for(
    cmd: DraftCommand,
    deps: Deps,
    *,
    command_text: str,
    progress: Progress | None = None,
    source: str = "command",
) -> views.Reply:
    """A customer-ready reply for the engineer alone (never shareable), with a Regenerate button.

    `command_text` is what was typed; the button re-runs the parsed command, so a mention's
    draft regenerates the same way.
    """
    del command_text  # the button carries the normalised command instead
    if progress is not None:
        await progress(views.progress_reply(f"Drafting a reply for `{cmd.account.value}`…"))
    result = await draft_reply(
        lookup=deps.lookup,
        ident=cmd.account,
        notes=cmd.notes,
        llm=deps.llm,
        deadline=_deadline(deps),
    )
    deps.metrics.inc("billing_triage_wording_total", kind="draft", source=result.wording.source)
    await record_case(
        deps.database,
        source=source,
        kind="draft",
        account_id=result.snapshot.account.account_id,
        findings=causes_of(result.explanation),
        invoice_id=result.explanation.current.id,
    )
    return draft_view(
        result, regenerate=views.command_value(_draft_command_text(cmd)), sandbox=deps.sandbox
    )


def register(app: AsyncApp, deps: Deps) -> None:
    """Register the draft's Regenerate button (acked at once; the new draft follows)."""

    @app.action(DRAFT_REGENERATE_ACTION)
    async def handle_draft_regenerate_action(
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
            if not isinstance(cmd, DraftCommand):
                raise UsageError("This button no longer works; run `/billing draft ACCOUNT` again.")
            reply = await draft_reply_for(cmd, deps, command_text=text, source="button")
            await respond(
                text=reply.text,
                blocks=reply.render_blocks(with_share=False),
                response_type="ephemeral",
                replace_original=True,
            )

        after_ack(deps, work, body=body, context=context, client=client, respond=respond)
