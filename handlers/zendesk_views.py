"""Block Kit for Zendesk tickets (DESIGN §10): `/billing ticket` answers and triage cards, with
"Post as internal note", "Regenerate" and "Request refund"; and the "posted as an internal note
on #123 by @x" state.

Ticket text is customer-controlled: it is redacted (card numbers, secrets) and escaped before it
is shown; button values carry IDs only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from bot.domain.models import PaymentStatus
from bot.domain.redact import redact
from bot.services.explain import invoice_name, signed
from bot.services.tickets import TriageResult
from handlers.account_views import provider_blocks
from handlers.explain_views import (
    findings_text,
    refund_request_buttons,
    summary_line,
    wording_context,
)
from handlers.views import (
    MAX_SECTION,
    Block,
    Reply,
    button,
    clip,
    context,
    divider,
    escape,
    header,
    section,
)

NOTE_ACTION = "zendesk_post_note"
TICKET_REGENERATE_ACTION = "zendesk_regenerate"
TICKET_ACTIONS_BLOCK = "ticket_actions"
DRAFT_BLOCK = "ticket_draft"
CUSTOMER_SHOWN = 900


def value(**ids: Any) -> str:
    """A button value carrying IDs only (never command text)."""
    return json.dumps({k: v for k, v in ids.items() if v is not None}, separators=(",", ":"))


def value_of(action: Mapping[str, Any]) -> dict[str, Any]:
    """The IDs a button carries ({} when unreadable)."""
    try:
        data = json.loads(action.get("value") or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _quote(text: str) -> str:
    clean = escape(clip(redact(text.strip()), CUSTOMER_SHOWN))
    return "\n".join(f"> {line}" if line.strip() else ">" for line in clean.splitlines())


def _ticket_blocks(result: TriageResult, *, sandbox: bool) -> list[Block]:
    ctx = result.context
    ticket = ctx.ticket
    subject = redact(ticket.subject or "(no subject)")
    who = []
    if ctx.requester is not None:
        name = escape(redact(ctx.requester.name or "requester"))
        who.append(f"{name} ({escape(ctx.requester.email)})" if ctx.requester.email else name)
    if ctx.organization is not None:
        who.append(escape(redact(ctx.organization.name or f"organization {ctx.organization.id}")))
    line = [f"<{ctx.url}|#{ticket.id}>", f"status *{escape(ticket.status)}*", *who]
    if sandbox:
        line.append("sandbox Zendesk")
    blocks: list[Block] = [header(f"Ticket #{ticket.id} · {subject}"), context(" · ".join(line))]
    if ctx.latest is not None:
        blocks.append(section("*Customer's latest message*\n" + _quote(ctx.latest.body)))
    else:
        blocks.append(context("The customer has written no public comment."))
    return blocks


def _match_blocks(result: TriageResult) -> list[Block]:
    if result.outcome == "matched":
        return [
            section(
                f"*Account* `{escape(result.account_id or '')}` · matched by "
                f"{escape(result.matched_by or '')}"
            )
        ]
    tried = "\n".join(f"• {escape(t)}" for a in result.attempts for t in a.tried)
    if result.outcome == "ambiguous":
        candidates = ", ".join(f"`{escape(c)}`" for c in result.candidates[:10])
        return [
            section(
                f":warning: *Several accounts match* (by {escape(result.matched_by or '')}): "
                f"{candidates}. I won't guess which one the ticket is about. Look one up with "
                "`/billing explain ACCOUNT`, or set the organization's external ID in Zendesk."
            ),
            context(clip("Tried, in order:\n" + tried, MAX_SECTION)),
        ]
    return [
        section(
            ":grey_question: *No account matches this ticket.* Nothing in it names an account "
            "the billing providers know. Set the organization's external ID (or the account "
            "field) in Zendesk, or look the account up with `/billing ACCOUNT`."
        ),
        context(clip("Tried, in order:\n" + tried, MAX_SECTION)),
    ]


def facts_text(result: TriageResult) -> str | None:
    """The facts that matter for a triage card: failed payments, open disputes, the latest
    invoice change and its main reason."""
    snapshot = result.snapshot
    if snapshot is None:
        return None
    rows: list[str] = []
    failed = [p for p in snapshot.payments if p.status is PaymentStatus.FAILED]
    if failed:
        latest = failed[0]
        rows.append(
            f":x: {len(failed)} failed payment{'s' if len(failed) != 1 else ''}, latest "
            f"{latest.amount} ({escape(latest.failure_message or latest.failure_code or 'failed')})"
        )
    disputes = [d for p in snapshot.providers for d in p.disputes if d.is_open]
    for dispute in disputes[:3]:
        due = dispute.evidence_due_by.strftime("%b %-d, %Y") if dispute.evidence_due_by else "—"
        rows.append(
            f":rotating_light: open dispute {dispute.amount} · "
            f"{escape(dispute.reason.replace('_', ' '))} · evidence due {due}"
        )
    explained = result.explanation
    if explained is not None:
        explanation = explained.explanation
        reason = explanation.findings[0] if explanation.findings else None
        change = (
            f"{signed(explanation.change)} vs `{explanation.previous.id}`"
            if explanation.previous is not None
            else "no earlier invoice"
        )
        current = explanation.current
        text = f":receipt: latest invoice `{invoice_name(current)}` {current.total} ({change})"
        if reason is not None:
            kind = escape(reason.kind.value.replace("_", " "))
            text += f"; main reason: {kind} {signed(reason.amount)}"
        rows.append(text)
        for dup in explanation.duplicate_payments[:2]:
            rows.append(f":rotating_light: duplicate charge {dup.amount}")
    return "*What matters*\n" + "\n".join(rows) if rows else None


def ticket_view(
    result: TriageResult, *, sandbox: bool, can_post: bool, card: bool = False
) -> Reply:
    """The answer to `/billing ticket` (and the triage card when `card`)."""
    blocks = _ticket_blocks(result, sandbox=sandbox)
    blocks.extend(_match_blocks(result))
    snapshot = result.snapshot
    if snapshot is not None:
        for failure in snapshot.failures:
            blocks.append(context(f":warning: *{failure.provider.capitalize()}: {failure.reason}*"))
        if card:
            facts = facts_text(result)
            if facts:
                blocks.append(section(facts))
        else:
            for snap in snapshot.providers:
                blocks.append(divider())
                blocks.extend(provider_blocks(snap, sandbox=sandbox))
    if result.problem:
        blocks.append(section(f":information_source: {escape(result.problem)}"))
    explained = result.explanation
    if explained is not None:
        blocks.append(divider())
        blocks.append(section(summary_line(explained.explanation)))
        if explained.wording.text:
            blocks.append(section(escape(explained.wording.text)))
        if not card:
            findings = findings_text(explained.explanation, shown=5)
            if findings:
                blocks.append(section(findings))
        blocks.append(wording_context(explained.wording))
    draft = result.draft
    if draft is not None:
        blocks.append(divider())
        blocks.append(section("*Draft reply* (not sent to the customer)"))
        blocks.append(
            {
                "type": "section",
                "block_id": DRAFT_BLOCK,
                "text": {
                    "type": "plain_text",
                    "text": clip(draft.wording.text, MAX_SECTION),
                    "emoji": False,
                },
            }
        )
        blocks.append(wording_context(draft.wording))
    elements: list[Block] = []
    ticket_id = result.context.ticket.id
    if draft is not None and result.draft_id and can_post:
        elements.append(
            button(
                "Post as internal note",
                NOTE_ACTION,
                value(t=ticket_id, d=result.draft_id),
                style="primary",
            )
        )
    elements.append(button("Regenerate", TICKET_REGENERATE_ACTION, value(t=ticket_id)))
    if result.outcome == "matched" and draft is not None:
        # The approvals flow's own button: it opens the refund modal, prefilled (§4).
        elements.extend(refund_request_buttons(draft))
    blocks.append({"type": "actions", "block_id": TICKET_ACTIONS_BLOCK, "elements": elements})
    if len(blocks) > 50:
        blocks = [*blocks[:49], blocks[-1]]
    subject = escape(redact(result.context.ticket.subject or ""))
    where = f"`{result.account_id}`" if result.account_id else result.outcome
    text = f"Ticket #{ticket_id}: {subject} ({where})"
    return Reply(text=text, blocks=blocks)


def posted_line(ticket_id: int, url: str, user: str | None) -> Block:
    """ "posted as an internal note on #123 by @x", with the link."""
    by = f" by <@{user}>" if user else ""
    return context(f":white_check_mark: posted as an internal note on <{url}|#{ticket_id}>{by}")


def posted_blocks(
    original: Sequence[Mapping[str, Any]] | None,
    *,
    ticket_id: int,
    url: str,
    user: str | None,
    body: str,
) -> list[Block]:
    """The message after the note went out: its blocks without the Post button (or, for an
    ephemeral answer Slack doesn't send back, the note itself), and the posted line."""
    if original:
        kept: list[Block] = []
        for block in original:
            if block.get("block_id") == TICKET_ACTIONS_BLOCK:
                elements = [
                    dict(e) for e in block.get("elements", []) if e.get("action_id") != NOTE_ACTION
                ]
                if elements:
                    kept.append(
                        {"type": "actions", "block_id": TICKET_ACTIONS_BLOCK, "elements": elements}
                    )
                continue
            kept.append(dict(block))
        return [*kept[:49], posted_line(ticket_id, url, user)]
    return [
        header(f"Ticket #{ticket_id} · internal note"),
        {
            "type": "section",
            "block_id": DRAFT_BLOCK,
            "text": {"type": "plain_text", "text": clip(body, MAX_SECTION), "emoji": False},
        },
        posted_line(ticket_id, url, user),
    ]
