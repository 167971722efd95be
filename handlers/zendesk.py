"""Zendesk tickets in Slack (DESIGN §10): `/billing ticket TICKET` (answered through
`handlers.dispatch.answer`, which calls `ticket_reply`), the triage cards the webhook enqueues
(the outbox renderer `zendesk_triage`), the buttons "Post as internal note" and "Regenerate"
("Request refund" is the approvals flow's own button, opening its modal), and the reconciler of
notes whose outcome was unknown."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from bot.deps import Deps
from bot.domain.commands import TicketCommand
from bot.domain.ports import TicketSource
from bot.domain.records import OutgoingMessage, RenderedMessage, SkipMessage
from bot.domain.tickets import parse_ticket_ref
from bot.errors import TicketNotFound, UserError
from bot.services.cases import causes_of, record_case
from bot.services.jobs import Job
from bot.services.tickets import (
    NoteOutcome,
    TriageResult,
    post_note,
    reconcile_unsettled,
    save_draft,
    triage_ticket,
)
from handlers import views
from handlers.errors import after_ack
from handlers.zendesk_views import (
    NOTE_ACTION,
    TICKET_REGENERATE_ACTION,
    posted_blocks,
    ticket_view,
    value_of,
)

log = logging.getLogger("handlers.zendesk")

Progress = Callable[[views.Reply], Awaitable[None]]
TRIAGE_RENDERER = "zendesk_triage"
NOTE_RECONCILE_JOB = "zendesk_notes"
NOT_CONFIGURED = (
    "Zendesk is not configured: set ZENDESK_API_TOKEN, ZENDESK_EMAIL and ZENDESK_SUBDOMAIN "
    "(or ZENDESK_API_BASE)."
)


def _tickets(deps: Deps) -> TicketSource:
    if deps.tickets is None:
        raise UserError(NOT_CONFIGURED)
    return deps.tickets


def _holder(deps: Deps) -> str:
    return deps.scheduler.holder if deps.scheduler is not None else "local"


async def triage(deps: Deps, ticket_id: int, *, user: str | None) -> tuple[TriageResult, bool]:
    """Triage one ticket and store its draft (so "Post as internal note" can post it)."""
    result = await triage_ticket(
        tickets=_tickets(deps),
        lookup=deps.lookup,
        ticket_id=ticket_id,
        account_field=deps.settings.zendesk_account_field or _tickets(deps).account_field,
        llm=deps.llm,
        deadline=deps.llm_deadline,
    )
    saved = await save_draft(deps.database, result, user=user)
    if result.draft is not None:
        deps.metrics.inc(
            "billing_triage_wording_total", kind="draft", source=result.draft.wording.source
        )
    return result, saved


async def record_ticket_case(deps: Deps, result: TriageResult, *, source: str) -> None:
    """The case of a triaged ticket (one per ticket)."""
    explanation = result.explanation.explanation if result.explanation else None
    await record_case(
        deps.database,
        source=source,
        kind="ticket",
        account_id=result.account_id,
        findings=causes_of(explanation),
        ticket_id=result.context.ticket.id,
        invoice_id=result.invoice_id,
    )


async def ticket_reply(
    cmd: TicketCommand,
    deps: Deps,
    *,
    source: str = "command",
    user: str | None = None,
    progress: Progress | None = None,
) -> views.Reply:
    """`/billing ticket TICKET`: the ticket, its account, billing state, explanation and draft."""
    tickets = _tickets(deps)
    ticket_id = parse_ticket_ref(cmd.ref, hosts=tickets.hosts)
    if progress is not None:
        await progress(views.progress_reply(f"Reading ticket #{ticket_id} from Zendesk…"))
    result, saved = await triage(deps, ticket_id, user=user)
    await record_ticket_case(deps, result, source=source)
    return ticket_view(result, sandbox=deps.sandbox, can_post=saved)


def _note_reply(outcome: NoteOutcome, url: str) -> str:
    who = f" by <@{outcome.posted_by}>" if outcome.posted_by else ""
    link = f"<{url}|#{outcome.ticket_id}>"
    if outcome.status == "already_posted":
        return f"Already posted as an internal note on {link}{who}."
    if outcome.status == "in_progress":
        return f"The note is being posted to {link}{who}; nothing more to do."
    if outcome.status == "unknown":
        return (
            f":hourglass_flowing_sand: Zendesk did not confirm the note on {link} in time. I'll "
            "check the ticket and tell you; clicking again will not post a second note."
        )
    if outcome.status == "missing":
        return outcome.message or "This draft is no longer known."
    return f":warning: The note was not posted: {outcome.message or 'try again'}"


async def render_triage_card(deps: Deps, payload: Mapping[str, Any]) -> RenderedMessage:
    """Build a triage card for `payload["ticket_id"]` at delivery time (the outbox renderer)."""
    if deps.tickets is None:
        raise SkipMessage()
    ticket_id = int(payload["ticket_id"])
    try:
        result, saved = await triage(deps, ticket_id, user=None)
    except TicketNotFound:
        log.info("triage card skipped: ticket gone", extra={"ticket": ticket_id})
        raise SkipMessage() from None
    await record_ticket_case(deps, result, source="ticket")
    reply = ticket_view(result, sandbox=deps.sandbox, can_post=saved, card=True)
    return RenderedMessage(text=reply.text, blocks=reply.blocks)


async def reconcile_notes(deps: Deps) -> int:
    """The reconciler job: settle notes left unknown; tell whoever clicked when one turns out
    to have been posted after all. Returns how many were settled as posted."""
    if deps.tickets is None:
        return 0
    outcomes = await reconcile_unsettled(store=deps.database, tickets=deps.tickets)
    posted = 0
    for outcome in outcomes:
        if outcome.status != "posted" or not outcome.by_this_call:
            continue
        posted += 1
        if outcome.posted_by:
            url = deps.tickets.agent_url(outcome.ticket_id)
            async with deps.database.uow() as uow:
                await uow.outbox.enqueue(
                    OutgoingMessage(
                        key=f"note:{outcome.ticket_id}:{outcome.draft_id}:settled",
                        op="dm",
                        channel=outcome.posted_by,
                        payload={
                            "text": f"The internal note on ticket #{outcome.ticket_id} was "
                            f"posted after all: <{url}|open the ticket>.",
                        },
                    ),
                    now=datetime.now(UTC),
                )
                await uow.commit()
    if posted and deps.delivery is not None:
        deps.delivery.wake()
    return posted


def register(app: AsyncApp, deps: Deps) -> None:
    """Register the ticket buttons, the triage card renderer and the notes reconciler."""
    if deps.delivery is not None:

        async def render(payload: Mapping[str, Any]) -> RenderedMessage:
            return await render_triage_card(deps, payload)

        deps.delivery.register_renderer(TRIAGE_RENDERER, render)
    if deps.scheduler is not None and deps.tickets is not None:

        async def run() -> None:
            await reconcile_notes(deps)

        deps.scheduler.add(Job(NOTE_RECONCILE_JOB, every=60.0, run=run, exclusive=True))

    @app.action(NOTE_ACTION)
    async def handle_ticket_note_action(
        ack: AsyncAck,
        body: dict[str, Any],
        action: dict[str, Any],
        respond: AsyncRespond,
        context: dict[str, Any],
        client: AsyncWebClient,
    ) -> None:
        await ack()

        async def work() -> None:
            ids = value_of(action)
            try:
                ticket_id, draft_id = int(ids["t"]), str(ids["d"])
            except (KeyError, TypeError, ValueError):
                raise UserError(
                    "This button no longer works; run `/billing ticket` again."
                ) from None
            tickets = _tickets(deps)
            user = str((body.get("user") or {}).get("id") or "")
            outcome = await post_note(
                store=deps.database,
                tickets=tickets,
                ticket_id=ticket_id,
                draft_id=draft_id,
                user=user,
                holder=_holder(deps),
            )
            deps.metrics.inc("billing_triage_zendesk_notes_total", outcome=outcome.status)
            url = tickets.agent_url(ticket_id)
            if outcome.status == "posted":
                async with deps.database.uow() as uow:
                    note = await uow.ticket_notes.get(ticket_id, draft_id)
                message = body.get("message") or {}
                blocks = posted_blocks(
                    message.get("blocks"),
                    ticket_id=ticket_id,
                    url=url,
                    user=outcome.posted_by or user,
                    body=note.body if note else "",
                )
                who = outcome.posted_by or user
                await respond(
                    text=f"Posted as an internal note on #{ticket_id} by <@{who}>",
                    blocks=blocks,
                    replace_original=True,
                )
                return
            text = _note_reply(outcome, url)
            await respond(
                text=text,
                blocks=[views.section(text)],
                response_type="ephemeral",
                replace_original=False,
            )

        after_ack(deps, work, body=body, context=context, client=client, respond=respond)

    @app.action(TICKET_REGENERATE_ACTION)
    async def handle_ticket_regenerate_action(
        ack: AsyncAck,
        body: dict[str, Any],
        action: dict[str, Any],
        respond: AsyncRespond,
        context: dict[str, Any],
        client: AsyncWebClient,
    ) -> None:
        await ack()

        async def work() -> None:
            ids = value_of(action)
            try:
                ticket_id = int(ids["t"])
            except (KeyError, TypeError, ValueError):
                raise UserError(
                    "This button no longer works; run `/billing ticket` again."
                ) from None
            user = str((body.get("user") or {}).get("id") or "") or None
            result, saved = await triage(deps, ticket_id, user=user)
            is_card = not (body.get("container") or {}).get("is_ephemeral", True)
            reply = ticket_view(result, sandbox=deps.sandbox, can_post=saved, card=is_card)
            await respond(text=reply.text, blocks=reply.blocks, replace_original=True)

        after_ack(deps, work, body=body, context=context, client=client, respond=respond)
