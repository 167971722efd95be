"""One path from a parsed command to its reply, shared by the slash command, mentions and the
"Share in channel" button. `caller` says who asked (refunds and credits need it; a command may
open a modal through it)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import assert_never

from bot.deps import Deps
from bot.domain.commands import (
    AlertsCommand,
    Command,
    CreditCommand,
    DraftCommand,
    ExplainCommand,
    HelpCommand,
    HistoryCommand,
    RefundCommand,
    ReportCommand,
    StatusCommand,
    TicketCommand,
)
from bot.services.cases import record_case
from handlers import views
from handlers.account_views import snapshot_reply
from handlers.alerts import alerts_reply
from handlers.approval_views import open_requests_blocks
from handlers.approvals import history_reply_for, request_reply
from handlers.caller import Caller
from handlers.explain import draft_reply_for, explain_reply
from handlers.report import report_reply
from handlers.zendesk import ticket_reply

Progress = Callable[[views.Reply], Awaitable[None]]
log = logging.getLogger("handlers.dispatch")


def quick_answer(cmd: Command, deps: Deps) -> views.Reply | None:
    """The reply when it needs no I/O (help), else None: every other command has its answer."""
    if isinstance(cmd, HelpCommand):
        return views.help_reply(deps.settings.billing_command, cmd.topic)
    return None


#: Commands that only read, and so may be re-run and posted by "Share in channel".
READ_ONLY = (HelpCommand, StatusCommand, ExplainCommand, HistoryCommand, AlertsCommand)


async def answer(
    cmd: Command,
    deps: Deps,
    *,
    command_text: str,
    progress: Progress | None = None,
    caller: Caller | None = None,
) -> views.Reply:
    """Run `cmd` and build its reply. Raises `BotError`s for the error handler to render.
    The caller's origin (`command`, `mention`) is where the case came from, for the case log."""
    name = deps.settings.billing_command
    source = caller.origin if caller is not None else "command"
    if isinstance(cmd, HelpCommand):
        return views.help_reply(name, cmd.topic)
    if isinstance(cmd, StatusCommand):
        if progress is not None:
            where = ", ".join(p.capitalize() for p in deps.providers) or "no providers"
            await progress(views.progress_reply(f"Looking up `{cmd.account.value}` in {where}…"))
        snapshot = await deps.lookup.snapshot(cmd.account)
        await record_case(
            deps.database, source=source, kind="status", account_id=snapshot.account.account_id
        )
        reply = snapshot_reply(snapshot, sandbox=deps.sandbox)
        blocks = list(reply.blocks)
        if deps.approvals is not None:
            try:
                pending = open_requests_blocks(await deps.approvals.open_for(snapshot))
            except Exception:  # the billing state stands without its requests
                log.warning("could not read the account's requests", exc_info=True)
                pending = []
            blocks = blocks[: views.MAX_BLOCKS - 1 - len(pending)] + pending
        return views.Reply(
            text=reply.text,
            blocks=blocks,
            shareable=True,
            share_value=views.command_value(command_text),
        )
    if isinstance(cmd, ExplainCommand):
        return await explain_reply(
            cmd, deps, command_text=command_text, progress=progress, source=source
        )
    if isinstance(cmd, DraftCommand):
        return await draft_reply_for(
            cmd, deps, command_text=command_text, progress=progress, source=source
        )
    if isinstance(cmd, TicketCommand):
        user = caller.user_id if caller is not None else None
        return await ticket_reply(cmd, deps, source=source, user=user, progress=progress)
    if isinstance(cmd, ReportCommand):
        return await report_reply(cmd, deps)
    if isinstance(cmd, (RefundCommand, CreditCommand)):
        return await request_reply(cmd, deps, caller=caller, progress=progress)
    if isinstance(cmd, HistoryCommand):
        reply = await history_reply_for(cmd, deps)
        return views.Reply(
            text=reply.text,
            blocks=reply.blocks,
            shareable=True,
            share_value=views.command_value(command_text),
        )
    if isinstance(cmd, AlertsCommand):
        return await alerts_reply(cmd, deps)
    assert_never(cmd)
