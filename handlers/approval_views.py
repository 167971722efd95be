"""Block Kit and text for refund and credit requests: the approval message in the finance channel
and its later states, the requester's confirmation and DM, refusals, the request and deny modals,
`/billing history` and the status view's open requests.

Buttons carry only the request ID. Text the requester or a provider controls (reasons, names) is
escaped; every builder stays within Slack's limits through the `handlers.views` helpers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from bot.domain.approvals import ApprovalRequest, Refusal, RequestKind, RequestState
from bot.domain.models import PROVIDER_LABELS
from bot.domain.money import Money
from bot.domain.records import AuditEvent
from bot.services.approvals import History, RequestForm
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

APPROVE_ACTION = "approval_approve"
DENY_ACTION = "approval_deny"
RETRY_ACTION = "approval_retry"
#: The draft's "Request refund" button (and the ticket card's, later): opens the refund modal.
REQUEST_REFUND_ACTION = "approval_request_refund"
REQUEST_FORM_CALLBACK = "approval_request_form"
DENY_CALLBACK = "approval_deny_reason"
PAYMENT_BLOCK = "payment"
PAYMENT_INPUT = "payment_input"
AMOUNT_BLOCK = "amount"
AMOUNT_INPUT = "amount_input"
REASON_BLOCK = "reason"
REASON_INPUT = "reason_input"
DENY_REASON_BLOCK = "deny_reason"
DENY_REASON_INPUT = "deny_reason_input"
MAX_OPTION_TEXT = 75
TRAIL_SHOWN = 25

_KIND_TITLE = {"refund": "Refund", "credit": "Credit"}
_STATE_LABEL = {
    RequestState.PENDING: "pending",
    RequestState.APPROVED: "approved",
    RequestState.EXECUTING: "executing",
    RequestState.EXECUTED: "executed",
    RequestState.FAILED: "failed",
    RequestState.DENIED: "denied",
    RequestState.EXPIRED: "expired",
}


def when(value: datetime | None) -> str:
    """`Dec 4, 20:44 UTC`, or an em dash."""
    return value.strftime("%b %-d, %H:%M UTC") if value else "—"


def label(provider: str) -> str:
    """`Stripe`, `Orb`, `Metronome`."""
    return PROVIDER_LABELS.get(provider, provider)


def _money(data: Mapping[str, Any], key: str = "amount") -> str:
    try:
        return str(Money(Decimal(str(data.get(key))), str(data.get("currency") or "usd")))
    except (InvalidOperation, ValueError, TypeError):
        return "?"


def _date(value: Any) -> str:
    if not isinstance(value, str):
        return "—"
    try:
        return datetime.fromisoformat(value).strftime("%b %-d, %Y")
    except ValueError:
        return "—"


def _users(approvals: Sequence[str]) -> str:
    return " and ".join(f"<@{u}>" for u in approvals) or "—"


def what(request: ApprovalRequest) -> str:
    """`refund of $25.00 on ch_… for Globex` / `credit of $25.00 for Globex (Orb)`."""
    name = escape(request.account_label)
    if request.kind == "refund":
        return f"refund of {request.amount} on `{request.payment_id}` for {name}"
    return f"credit of {request.amount} for {name} ({label(request.provider)})"


# --- the approval message --------------------------------------------------------------------


def _fields(request: ApprovalRequest) -> list[str]:
    ctx = request.context
    account = ctx.get("account") if isinstance(ctx.get("account"), Mapping) else {}
    ids = [f"`{request.account_id}`"] if request.account_id else []
    ids.append(f"{label(request.provider)} `{request.customer_id}`")
    fields = [
        f"*Account*\n{escape(request.account_label)}\n{' · '.join(ids)}",
        f"*Amount*\n*{request.amount}* ({request.amount.currency.upper()})",
    ]
    payment = ctx.get("payment")
    if request.kind == "refund" and isinstance(payment, Mapping):
        fields.append(
            f"*Payment*\n`{request.payment_id}` {_money(payment)} on "
            f"{_date(payment.get('created_at'))}\n{_money(payment, 'refunded')} refunded before · "
            f"{_money(payment, 'left')} was left"
        )
    else:
        fields.append(f"*Goes to*\n{label(request.provider)} `{request.customer_id}`")
    fields.append(f"*Requested by*\n<@{request.requester}> at {when(request.created_at)}")
    needs = "1 approver"
    if request.required_approvals > 1:
        needs = f"{request.required_approvals} different approvers (above the threshold)"
    fields.append(f"*Needs*\n{needs}")
    if request.state is RequestState.PENDING:
        fields.append(f"*Expires*\n{when(request.expires_at)}")
    if isinstance(account, Mapping) and account.get("email"):
        fields.append(f"*Email*\n{escape(str(account['email']))}")
    return fields


def _context_text(request: ApprovalRequest) -> str | None:
    ctx = request.context
    parts: list[str] = []
    invoices = [i for i in ctx.get("invoices") or [] if isinstance(i, Mapping)]
    if invoices:
        rows = [
            f"`{escape(str(i.get('number') or i.get('id')))}` {_date(i.get('date'))} · "
            f"{_money(i, 'total')} · {str(i.get('status', '')).replace('_', ' ')}"
            for i in invoices
        ]
        parts.append("*Recent invoices*\n" + "\n".join(rows))
    refunds = [r for r in ctx.get("refunds") or [] if isinstance(r, Mapping)]
    parts.append(
        "*Prior refunds*\n"
        + (
            "\n".join(
                f"`{r.get('id')}` {_date(r.get('date'))} · {_money(r)} · {r.get('status')}"
                for r in refunds
            )
            or "none"
        )
    )
    disputes = [d for d in ctx.get("disputes") or [] if isinstance(d, Mapping)]
    if disputes:
        rows = [
            f"`{d.get('id')}` {_money(d)} · {str(d.get('reason', '')).replace('_', ' ')} · "
            f"evidence due {_date(d.get('evidence_due_by'))}"
            for d in disputes
        ]
        parts.append(":rotating_light: *Open disputes*\n" + "\n".join(rows))
    else:
        parts.append("*Open disputes*\nnone")
    missing = [label(str(p)) for p in ctx.get("unavailable") or []]
    if missing:
        parts.append(f":warning: Not shown ({', '.join(missing)} did not answer).")
    return clip("\n\n".join(parts), MAX_SECTION) if parts else None


def status_text(request: ApprovalRequest) -> str:
    """Where the request is, who decided, when, why, and the provider's object."""
    approvers = [a.approver for a in request.approvals]
    provider = label(request.provider)
    state = request.state
    if state is RequestState.PENDING:
        if approvers:
            return (
                f":ballot_box_with_check: Approved by {_users(approvers)} "
                f"({len(approvers)} of {request.required_approvals}); waiting for a different "
                "second approver."
            )
        return ":hourglass_flowing_sand: Waiting for an approver."
    if state in (RequestState.APPROVED, RequestState.EXECUTING):
        text = (
            f":hourglass_flowing_sand: Approved by {_users(approvers)} at "
            f"{when(request.approved_at)}; sending it to {provider}…"
        )
        if request.failure:
            text += (
                f"\n{provider}'s answer has not arrived ({escape(request.failure)}). Billing "
                "Triage asks again with the same idempotency key, so it can never be made twice."
            )
        return text
    if state is RequestState.EXECUTED:
        done = "Refunded" if request.kind == "refund" else "Credited"
        return (
            f":white_check_mark: *{done}* by {provider}: `{request.provider_object_id}` "
            f"({request.provider_status}). Approved by {_users(approvers)} at "
            f"{when(request.approved_at)}."
        )
    if state is RequestState.FAILED:
        return (
            f":x: *{provider} refused it:* {escape(request.failure or 'no message')}\n"
            f"Approved by {_users(approvers)} at {when(request.approved_at)}. An approver can "
            "retry (same idempotency key; it is never made twice)."
        )
    if state is RequestState.DENIED:
        return (
            f":no_entry: *Denied* by <@{request.decided_by}> at {when(request.decided_at)}: "
            f"“{escape(request.decision_reason or '')}”"
        )
    undone = "refunded" if request.kind == "refund" else "credited"
    return (
        f":hourglass: *Expired* at {when(request.decided_at)}: nobody decided before "
        f"{when(request.expires_at)}. Nothing was {undone}."
    )


def approval_message(request: ApprovalRequest) -> tuple[str, list[Block]]:
    """The finance channel's message for `request` in its current state: buttons while it can
    be decided (Approve, Deny) or retried (Retry), none once final."""
    kind = _KIND_TITLE[request.kind]
    blocks: list[Block] = [
        header(f"{kind} request · {request.amount} · {request.account_label}"),
        section(f"*Reason*\n>{escape(request.reason)}", fields=_fields(request)),
    ]
    details = _context_text(request)
    if details:
        blocks.append(section(details))
    blocks.append(divider())
    blocks.append(
        {
            "type": "section",
            "block_id": f"status-v{request.version}",
            "text": {"type": "mrkdwn", "text": clip(status_text(request), MAX_SECTION)},
        }
    )
    elements: list[Block] = []
    if request.state is RequestState.PENDING:
        approve = button("Approve", APPROVE_ACTION, request.id, style="primary")
        approve["confirm"] = {
            "title": {"type": "plain_text", "text": f"Approve {request.id}?"},
            "text": {"type": "mrkdwn", "text": clip(f"Approve the {what(request)}.", 300)},
            "confirm": {"type": "plain_text", "text": "Approve"},
            "deny": {"type": "plain_text", "text": "Cancel"},
        }
        elements = [approve, button("Deny", DENY_ACTION, request.id, style="danger")]
    elif request.state is RequestState.FAILED:
        elements = [button("Retry", RETRY_ACTION, request.id, style="primary")]
    if elements:
        blocks.append(
            {"type": "actions", "block_id": f"decide-v{request.version}", "elements": elements}
        )
    blocks.append(
        context(
            f"`{request.id}` · {_STATE_LABEL[request.state]} · idempotency key "
            f"`{request.idempotency_key}` · `/billing history {request.id}`"
        )
    )
    text = (
        f"{kind} request {request.id}: {request.amount} for {escape(request.account_label)} "
        f"({_STATE_LABEL[request.state]})"
    )
    return text, blocks[:50]


def approval_dm(request: ApprovalRequest) -> tuple[str, list[Block]]:
    """The requester's DM once their request is decided (or failed)."""
    subject = f"Your request `{request.id}` ({what(request)})"
    approvers = _users([a.approver for a in request.approvals])
    provider = label(request.provider)
    state = request.state
    if state is RequestState.EXECUTED:
        text = (
            f":white_check_mark: {subject} was approved by {approvers} and made: {provider} "
            f"`{request.provider_object_id}` ({request.provider_status})."
        )
    elif state is RequestState.DENIED:
        text = (
            f":no_entry: {subject} was denied by <@{request.decided_by}>: "
            f"“{escape(request.decision_reason or '')}”."
        )
    elif state is RequestState.EXPIRED:
        text = (
            f":hourglass: {subject} expired: nobody in finance decided in time. Nothing was "
            "changed; ask again if it is still needed."
        )
    elif state is RequestState.FAILED:
        text = (
            f":x: {subject} was approved by {approvers}, but {provider} refused it: "
            f"{escape(request.failure or 'no message')}. Finance can retry it."
        )
    else:
        text = f"{subject} is {_STATE_LABEL[state]}."
    return text, [section(text)]


def created_reply(request: ApprovalRequest) -> Reply:
    """The requester's ephemeral confirmation with the request ID."""
    needs = (
        "one approver"
        if request.required_approvals == 1
        else f"{request.required_approvals} different approvers"
    )
    text = (
        f"Sent to finance for approval: {what(request)}. Request `{request.id}`; it needs "
        f"{needs} and expires {when(request.expires_at)}. You'll get a DM when it is decided."
    )
    return Reply(text=text, blocks=[section(f":inbox_tray: {text}")])


def refusal_text(refusal: Refusal, request: ApprovalRequest | None, request_id: str) -> str:
    """What a clicker is told when their click changed nothing."""
    rid = f"`{request_id}`"
    if refusal is Refusal.NOT_FOUND or request is None:
        return f"There is no request {rid}. Nothing was changed."
    approvers = _users([a.approver for a in request.approvals])
    match refusal:
        case Refusal.NOT_APPROVER:
            return (
                "Only finance approvers (FINANCE_APPROVERS) can decide refund and credit "
                "requests. Nothing was changed."
            )
        case Refusal.SELF_APPROVAL:
            return f"You can't decide your own request {rid}; someone else in finance has to."
        case Refusal.ALREADY_APPROVED_BY_YOU:
            return (
                f"You already approved {rid}. It needs a second approver, someone other than you."
            )
        case Refusal.EXPIRED:
            ended = when(request.decided_at or request.expires_at)
            return f"{rid} expired at {ended}. Nothing was changed."
        case Refusal.NOT_FAILED:
            return f"{rid} is {_STATE_LABEL[request.state]}, so there is nothing to retry."
    if request.state is RequestState.DENIED:
        return f"{rid} was already denied by <@{request.decided_by}>."
    if request.state is RequestState.FAILED:
        return f"{rid} was approved by {approvers} and then failed; use Retry on the message."
    return f"{rid} was already approved by {approvers}."


def not_viewer_text() -> str:
    """The one thing someone outside VIEWERS is told."""
    return (
        "Sorry, you don't have access to billing data in Billing Triage. Ask whoever runs it "
        "to add you to VIEWERS."
    )


# --- modals ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prefill:
    """What the request modal starts with (from the command, or the draft's button)."""

    payment_id: str | None = None
    amount: str | None = None
    reason: str | None = None


def request_button(
    account: str, payment_id: str | None, amount: Money | None, reason: str
) -> Block:
    """The "Request refund" button: what to prefill the refund modal with, never a command to
    run (everything is checked again when the form is submitted)."""
    data = {
        "a": account,
        "p": payment_id or "",
        "m": amount.decimal_str() if amount is not None else "",
        "r": reason[:200],
    }
    return button("Request refund", REQUEST_REFUND_ACTION, json.dumps(data))


def modal_metadata(
    *, kind: RequestKind, account: str, response_url: str | None, origin: str
) -> str:
    """The modal's `private_metadata` (≤ 3000 chars): what it is about and where to confirm."""
    data = {"k": kind, "a": account[:254], "o": origin[:20]}
    if response_url and len(response_url) < 2000:
        data["r"] = response_url
    return json.dumps(data)


def _title(kind: RequestKind) -> dict[str, Any]:
    return {"type": "plain_text", "text": f"{_KIND_TITLE[kind]} request"}


def loading_modal(kind: RequestKind, account: str, metadata: str) -> dict[str, Any]:
    """Shown at once (the trigger expires in 3 s) while the account is looked up."""
    return {
        "type": "modal",
        "callback_id": REQUEST_FORM_CALLBACK,
        "title": _title(kind),
        "close": {"type": "plain_text", "text": "Cancel"},
        "private_metadata": metadata,
        "blocks": [
            section(f":hourglass_flowing_sand: Looking up `{escape(account)}` and its payments…")
        ],
    }


def message_modal(kind: RequestKind, text: str, metadata: str = "") -> dict[str, Any]:
    """A modal that only says something (a refusal, a confirmation)."""
    return {
        "type": "modal",
        "callback_id": REQUEST_FORM_CALLBACK,
        "title": _title(kind),
        "close": {"type": "plain_text", "text": "Close"},
        "private_metadata": metadata,
        "blocks": [section(text)],
    }


def _option(text: str, value: str) -> dict[str, Any]:
    return {"text": {"type": "plain_text", "text": clip(text, MAX_OPTION_TEXT)}, "value": value}


def request_modal(
    form: RequestForm, prefill: Prefill, metadata: str, *, error: str | None = None
) -> dict[str, Any]:
    """The refund or credit form: account (fixed), payment picker with what is left to refund,
    amount, reason."""
    where = (
        "refunds go back through the Stripe payment"
        if form.kind == "refund"
        else f"the credit goes to {label(form.provider)}"
    )
    blocks: list[Block] = [
        context(
            f"Account *{escape(form.account_label)}* (`{escape(form.account_key)}`) · {where} · "
            f"amounts in {form.currency.upper()}"
        )
    ]
    if error:
        blocks.append(section(f":warning: {escape(error)} Nothing was sent."))
    if form.kind == "refund":
        options = [
            _option(
                f"{p.payment_id[:28]} · {p.created_at.strftime('%b %-d')} · {p.amount} · "
                f"{p.left} left",
                p.payment_id,
            )
            for p in form.payments
        ]
        chosen = next((o for o in options if o["value"] == prefill.payment_id), None)
        if options and (prefill.payment_id is None or chosen is not None):
            element: dict[str, Any] = {
                "type": "static_select",
                "action_id": PAYMENT_INPUT,
                "placeholder": {"type": "plain_text", "text": "Pick the payment to refund"},
                "options": options,
                "initial_option": chosen or options[0],
            }
        else:
            element = {
                "type": "plain_text_input",
                "action_id": PAYMENT_INPUT,
                "placeholder": {"type": "plain_text", "text": "ch_…, pi_… or in_…"},
            }
            if prefill.payment_id:
                element["initial_value"] = prefill.payment_id
        blocks.append(
            {
                "type": "input",
                "block_id": PAYMENT_BLOCK,
                "label": {"type": "plain_text", "text": "Payment"},
                "element": element,
                "hint": {
                    "type": "plain_text",
                    "text": "Recent payments with what is left to refund after other open requests."
                    if options
                    else "No recent payment has anything left to refund; give its ID.",
                },
            }
        )
    amount: dict[str, Any] = {
        "type": "plain_text_input",
        "action_id": AMOUNT_INPUT,
        "placeholder": {"type": "plain_text", "text": "25.00"},
    }
    if prefill.amount:
        amount["initial_value"] = prefill.amount[:100]
    blocks.append(
        {
            "type": "input",
            "block_id": AMOUNT_BLOCK,
            "label": {"type": "plain_text", "text": f"Amount ({form.currency.upper()})"},
            "element": amount,
        }
    )
    reason: dict[str, Any] = {
        "type": "plain_text_input",
        "action_id": REASON_INPUT,
        "multiline": True,
        "max_length": 500,
        "placeholder": {"type": "plain_text", "text": "Why? Finance sees this."},
    }
    if prefill.reason:
        reason["initial_value"] = prefill.reason[:500]
    blocks.append(
        {
            "type": "input",
            "block_id": REASON_BLOCK,
            "label": {"type": "plain_text", "text": "Reason"},
            "element": reason,
        }
    )
    return {
        "type": "modal",
        "callback_id": REQUEST_FORM_CALLBACK,
        "title": _title(form.kind),
        "submit": {"type": "plain_text", "text": "Send to finance"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "private_metadata": metadata,
        "blocks": blocks,
    }


def checking_modal(kind: RequestKind, metadata: str) -> dict[str, Any]:
    """Shown while a submitted request is checked against the provider."""
    return message_modal(
        kind, ":hourglass_flowing_sand: Checking the payment and sending it to finance…", metadata
    )


def deny_modal(request: ApprovalRequest) -> dict[str, Any]:
    """Asks the approver why (the requester is told)."""
    return {
        "type": "modal",
        "callback_id": DENY_CALLBACK,
        "title": {"type": "plain_text", "text": "Deny request"},
        "submit": {"type": "plain_text", "text": "Deny"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "private_metadata": json.dumps({"id": request.id}),
        "blocks": [
            section(
                f"Deny `{request.id}`, the {what(request)} requested by <@{request.requester}>? "
                "This is final."
            ),
            {
                "type": "input",
                "block_id": DENY_REASON_BLOCK,
                "label": {"type": "plain_text", "text": "Why?"},
                "hint": {"type": "plain_text", "text": "The requester sees this."},
                "element": {
                    "type": "plain_text_input",
                    "action_id": DENY_REASON_INPUT,
                    "multiline": True,
                    "max_length": 500,
                },
            },
        ],
    }


# --- history and the status view ---------------------------------------------------------------


def _request_line(request: ApprovalRequest) -> str:
    state = _STATE_LABEL[request.state]
    line = (
        f"`{request.id}` {when(request.created_at)} · *{state}* · {what(request)} · "
        f"by <@{request.requester}>"
    )
    if request.state is RequestState.EXECUTED:
        line += f" · {label(request.provider)} `{request.provider_object_id}`"
    if request.state is RequestState.DENIED:
        line += f" · denied by <@{request.decided_by}>: “{escape(request.decision_reason or '')}”"
    return line


def _trail_line(event: AuditEvent) -> str:
    detail = event.detail
    extra = ""
    if event.action == "request.transition":
        extra = f" {detail.get('from')} → {detail.get('to')}"
    elif event.action == "provider.result":
        said = detail.get("object_id") or escape(str(detail.get("message") or ""))
        extra = f" {detail.get('outcome')} {said}"
    elif event.action.startswith("click."):
        extra = f" {detail.get('outcome')}"
        if detail.get("refusal"):
            extra += f" ({detail.get('refusal')})"
    elif event.action == "provider.call":
        extra = f" attempt {detail.get('attempt')} key `{detail.get('idempotency_key')}`"
    who = f"<@{event.actor}>" if event.actor.startswith(("U", "W")) else event.actor
    return clip(f"{when(event.at)} · {who} · `{event.action}`{extra}", 300)


def history_reply(history: History, target: str) -> Reply:
    """`/billing history ACCOUNT|REQUEST_ID`: the requests, decisions and the audit trail."""
    if not history.requests:
        text = f"No refund or credit requests for `{escape(target)}`."
        return Reply(text=text, blocks=[section(text)])
    blocks: list[Block] = [header(f"Refund and credit requests · {target}")]
    single = len(history.requests) == 1
    for request in history.requests[:10]:
        blocks.append(section(clip(_request_line(request), MAX_SECTION)))
        blocks.append(context(clip(f"Reason: {escape(request.reason)}", MAX_SECTION)))
        if single:
            trail = history.trails.get(request.id, ())
            rows = [_trail_line(e) for e in trail[-TRAIL_SHOWN:]]
            if rows:
                text = "*Audit trail*\n" + "\n".join(rows)
                blocks.append(section(clip(text, MAX_SECTION)))
    if len(history.requests) > 10:
        blocks.append(context(f"…and {len(history.requests) - 10} older requests."))
    if not single:
        blocks.append(context("`/billing history REQUEST_ID` shows one request's audit trail."))
    text = f"{len(history.requests)} request(s) for {target}"
    return Reply(text=text, blocks=blocks[:49], shareable=True)


def open_requests_blocks(requests: Sequence[ApprovalRequest]) -> list[Block]:
    """The status view's "pending requests" section (nothing when there are none)."""
    if not requests:
        return []
    rows = [_request_line(r) for r in requests[:5]]
    return [divider(), section(clip("*Pending requests*\n" + "\n".join(rows), MAX_SECTION))]
