"""The Slack edge of refund and credit requests (DESIGN §4): `/billing refund|credit|history`,
the request modal (also opened by the draft's "Request refund" button), Approve / Deny / Retry
on the finance channel's message, the Deny modal, the renderers of the approval message and the
requester's DM (delivered by the outbox), and the periodic expiry-and-reconcile job.

Every click is authorised by the service at click time; a refusal is an ephemeral reply to the
clicker (`replace_original=False`, so the shared message is untouched). Buttons carry only the
request ID.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot.deps import Deps
from bot.domain.approvals import RequestKind, clean_reason
from bot.domain.commands import (
    PAYMENT_ID_RE,
    REQUEST_ID_RE,
    USAGE,
    CreditCommand,
    HistoryCommand,
    RefundCommand,
)
from bot.domain.identifiers import AccountIdentifier, classify_account
from bot.domain.money import AmountInput, parse_amount_input
from bot.domain.records import RenderedMessage, SkipMessage
from bot.errors import BotError, InvalidAmount, ProviderError, RequestRefused, UsageError, UserError
from bot.services.approvals import Actor, ApprovalService, RequestDraft
from bot.services.jobs import Job
from handlers import views
from handlers.access import slack_request_id
from handlers.approval_views import (
    AMOUNT_BLOCK,
    APPROVE_ACTION,
    DENY_ACTION,
    DENY_CALLBACK,
    DENY_REASON_BLOCK,
    PAYMENT_BLOCK,
    REASON_BLOCK,
    REQUEST_FORM_CALLBACK,
    REQUEST_REFUND_ACTION,
    RETRY_ACTION,
    Prefill,
    approval_dm,
    approval_message,
    checking_modal,
    created_reply,
    deny_modal,
    history_reply,
    loading_modal,
    message_modal,
    modal_metadata,
    refusal_text,
    request_modal,
)
from handlers.caller import Caller
from handlers.errors import after_ack, reply_for

log = logging.getLogger("handlers.approvals")

Progress = Callable[[views.Reply], Awaitable[None]]
JOB_NAME = "approvals"
FORM_ERROR_BLOCK = "form_error"


def service(deps: Deps) -> ApprovalService:
    """The approval service (always built by `build_app`)."""
    if deps.approvals is None:
        raise UsageError("Refund and credit requests are not available in this process.")
    return deps.approvals


def _actor(caller: Caller) -> Actor:
    return Actor(caller.user_id, caller.slack_request)


def _draft(cmd: RefundCommand | CreditCommand, origin: str) -> RequestDraft:
    amount = cmd.amount_input
    if amount is None and cmd.amount is not None:
        amount = AmountInput(cmd.amount, None, f"{cmd.amount}")
    return RequestDraft(
        kind="refund" if isinstance(cmd, RefundCommand) else "credit",
        account=cmd.account,
        amount=amount,
        reason=cmd.reason,
        payment_id=cmd.payment_id if isinstance(cmd, RefundCommand) else None,
        origin=origin,
    )


# --- commands (called from handlers.dispatch) ---------------------------------------------------


async def request_reply(
    cmd: RefundCommand | CreditCommand,
    deps: Deps,
    *,
    caller: Caller | None,
    progress: Progress | None = None,
) -> views.Reply:
    """`/billing refund|credit …`: a complete command becomes a request (or a refusal saying
    why); a command with parts missing opens the request modal."""
    kind: RequestKind = "refund" if isinstance(cmd, RefundCommand) else "credit"
    if caller is None:
        raise UsageError("A refund or credit request needs a Slack user to come from.")
    approvals = service(deps)
    if not cmd.complete:
        if caller.client is None or not caller.trigger_id:
            raise UsageError(f"Give the amount and a reason. Usage: {USAGE[kind]}.")
        prefill = Prefill(
            payment_id=cmd.payment_id if isinstance(cmd, RefundCommand) else None,
            amount=cmd.amount_input.text if cmd.amount_input else None,
            reason=cmd.reason,
        )
        await open_request_form(
            deps,
            caller.client,
            trigger_id=caller.trigger_id,
            kind=kind,
            account=cmd.account,
            prefill=prefill,
            caller=caller,
        )
        text = f"Opened the {kind} form for `{cmd.account.value}`."
        return views.Reply(text=text, blocks=[views.context(text)])
    if progress is not None:
        await progress(
            views.progress_reply(
                f"Checking the {kind} for `{cmd.account.value}` with the providers…"
            )
        )
    request = await approvals.create(_draft(cmd, caller.origin), actor=_actor(caller))
    return created_reply(request)


async def history_reply_for(cmd: HistoryCommand, deps: Deps) -> views.Reply:
    """`/billing history ACCOUNT|REQUEST_ID`."""
    approvals = service(deps)
    if cmd.request_id is not None:
        history = await approvals.history(request_id=cmd.request_id)
        return history_reply(history, cmd.request_id)
    assert cmd.account is not None
    history = await approvals.history(account=cmd.account)
    return history_reply(history, cmd.account.value)


async def audit_unparsed(deps: Deps, text: str, caller: Caller, error: BotError) -> None:
    """Audit a refund or credit command refused by the parser (a bad amount, a malformed
    payment ID): nothing was stored, but the attempt is on the record."""
    words = text.split()
    kind: RequestKind = "credit" if words and words[0].lower() == "credit" else "refund"
    account = words[1] if len(words) > 1 else "?"
    if deps.approvals is None or not isinstance(error, UserError):
        return
    try:
        await deps.approvals.record_refusal(
            kind, account, _actor(caller), error, origin=caller.origin,
            amount=words[2] if len(words) > 2 else None,
        )  # fmt: skip
    except Exception:  # the refusal stands; only its record is missing
        log.warning("could not audit a refused command", exc_info=True)


# --- the request modal ----------------------------------------------------------------------


async def open_request_form(
    deps: Deps,
    client: AsyncWebClient,
    *,
    trigger_id: str,
    kind: RequestKind,
    account: AccountIdentifier,
    prefill: Prefill,
    caller: Caller,
) -> None:
    """Open the modal at once (the trigger lasts 3 s), then fill it in once the account's
    payments are known; a refusal (not a requester, an account in doubt) replaces it."""
    metadata = modal_metadata(
        kind=kind, account=account.value, response_url=caller.response_url, origin=caller.origin
    )
    opened = await client.views_open(
        trigger_id=trigger_id, view=loading_modal(kind, account.value, metadata)
    )
    view_id = str((opened.get("view") or {}).get("id") or "")
    approvals = service(deps)
    try:
        form = await approvals.form(kind, account, actor=_actor(caller))
    except (UserError, ProviderError) as exc:
        await approvals.record_refusal(kind, account, _actor(caller), exc, origin=caller.origin)
        reply, _ = reply_for(exc)
        await client.views_update(view_id=view_id, view=message_modal(kind, reply.text, metadata))
        return
    await client.views_update(view_id=view_id, view=request_modal(form, prefill, metadata))


def _state_value(values: Mapping[str, Any], block: str) -> str | None:
    """A text input's value or a select's chosen value in `view.state.values`."""
    actions = values.get(block)
    if not isinstance(actions, Mapping):
        return None
    for state in actions.values():
        if not isinstance(state, Mapping):
            continue
        option = state.get("selected_option")
        if isinstance(option, Mapping) and isinstance(option.get("value"), str):
            return str(option["value"])
        value = state.get("value")
        if isinstance(value, str):
            return value
    return None


def _metadata(view: Mapping[str, Any]) -> dict[str, str] | None:
    try:
        data = json.loads(str(view.get("private_metadata") or ""))
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("k") not in ("refund", "credit"):
        return None
    if not isinstance(data.get("a"), str):
        return None
    return {k: str(v) for k, v in data.items() if isinstance(v, str)}


def form_errors(kind: str, values: Mapping[str, Any]) -> dict[str, str]:
    """What is wrong with a submitted form that needs no provider to tell, per input block."""
    errors: dict[str, str] = {}
    amount = (_state_value(values, AMOUNT_BLOCK) or "").strip()
    if not amount:
        errors[AMOUNT_BLOCK] = "Give an amount, e.g. 25.00."
    else:
        try:
            parse_amount_input(amount)
        except InvalidAmount as exc:
            errors[AMOUNT_BLOCK] = exc.message.replace("`", "")[:150]
    if clean_reason(_state_value(values, REASON_BLOCK)) is None:
        errors[REASON_BLOCK] = "Give a reason; finance sees it."
    payment = (_state_value(values, PAYMENT_BLOCK) or "").strip()
    if kind == "refund" and payment and not PAYMENT_ID_RE.match(payment):
        errors[PAYMENT_BLOCK] = "Give a charge (ch_…), payment intent (pi_…) or invoice (in_…) ID."
    return errors


def draft_from_form(
    kind: RequestKind, account: AccountIdentifier, values: Mapping[str, Any], *, origin: str
) -> RequestDraft:
    """The request a form asks for (`form_errors` found nothing wrong with it); the service
    checks the rest against the provider."""
    payment = (_state_value(values, PAYMENT_BLOCK) or "").strip() or None
    return RequestDraft(
        kind=kind,
        account=account,
        amount=parse_amount_input(_state_value(values, AMOUNT_BLOCK) or ""),
        reason=_state_value(values, REASON_BLOCK),
        payment_id=payment if kind == "refund" else None,
        origin=origin,
    )


def _form_again(view: Mapping[str, Any], values: Mapping[str, Any], error: str) -> dict[str, Any]:
    """The submitted form again, with what was typed kept and `error` on top."""
    blocks: list[dict[str, Any]] = []
    for block in view.get("blocks") or []:
        if not isinstance(block, dict) or block.get("block_id") == FORM_ERROR_BLOCK:
            continue
        block = json.loads(json.dumps(block))
        element = block.get("element")
        block_id = block.get("block_id")
        if block.get("type") == "input" and isinstance(element, dict) and isinstance(block_id, str):
            state = next(iter((values.get(block_id) or {}).values()), None)
            if isinstance(state, dict):
                if isinstance(state.get("selected_option"), dict):
                    element["initial_option"] = state["selected_option"]
                elif isinstance(state.get("value"), str) and state["value"]:
                    element["initial_value"] = state["value"][:3000]
        blocks.append(block)
    note = {**views.section(f":warning: {views.escape(error)} Nothing was sent."),
            "block_id": FORM_ERROR_BLOCK}  # fmt: skip
    blocks.insert(1 if blocks else 0, note)
    return {
        "type": "modal",
        "callback_id": REQUEST_FORM_CALLBACK,
        "title": view.get("title") or {"type": "plain_text", "text": "Request"},
        "submit": view.get("submit") or {"type": "plain_text", "text": "Send to finance"},
        "close": view.get("close") or {"type": "plain_text", "text": "Cancel"},
        "private_metadata": str(view.get("private_metadata") or ""),
        "blocks": blocks[:100],
    }


# --- renderers and registration ---------------------------------------------------------------


def register(app: AsyncApp, deps: Deps) -> None:
    """Register the buttons, the modals, the renderers and the periodic job."""
    approvals = service(deps)

    async def render_approval(payload: Mapping[str, Any]) -> RenderedMessage:
        request = await approvals.get(str(payload.get("request_id") or ""))
        if request is None:
            raise SkipMessage()
        text, blocks = approval_message(request)
        return RenderedMessage(text, blocks)

    async def render_dm(payload: Mapping[str, Any]) -> RenderedMessage:
        request = await approvals.get(str(payload.get("request_id") or ""))
        if request is None:
            raise SkipMessage()
        text, blocks = approval_dm(request)
        return RenderedMessage(text, blocks)

    if deps.delivery is not None:
        deps.delivery.register_renderer("approval", render_approval)
        deps.delivery.register_renderer("approval_dm", render_dm)
    if deps.scheduler is not None:
        deps.scheduler.add(
            Job(JOB_NAME, every=deps.settings.approvals_reconcile_seconds, run=approvals.tick)
        )

    def clicker(body: dict[str, Any]) -> Actor:
        return Actor(str((body.get("user") or {}).get("id") or ""), slack_request_id(body))

    def request_id_of(action: dict[str, Any]) -> str:
        value = str(action.get("value") or "").strip()
        return value if REQUEST_ID_RE.match(value) else ""

    async def tell(respond: AsyncRespond, text: str) -> None:
        await respond(text=text, response_type="ephemeral", replace_original=False)

    def decision_listener(decide: Callable[..., Awaitable[Any]]) -> Any:
        # Approve and Retry differ only in the service call; Bolt passes listeners only the
        # arguments it knows by name, so the call is bound here, not as a default argument.
        async def handle_approval_action(
            ack: AsyncAck,
            body: dict[str, Any],
            action: dict[str, Any],
            respond: AsyncRespond,
            context: dict[str, Any],
            client: AsyncWebClient,
        ) -> None:
            await ack()
            request_id, actor = request_id_of(action), clicker(body)

            async def work() -> None:
                result = await decide(request_id, actor=actor)
                if result.refusal is not None:
                    await tell(respond, refusal_text(result.refusal, result.request, request_id))

            after_ack(deps, work, body=body, context=context, client=client, respond=respond)

        return handle_approval_action

    app.action(APPROVE_ACTION)(decision_listener(approvals.approve))
    app.action(RETRY_ACTION)(decision_listener(approvals.retry))

    @app.action(DENY_ACTION)
    async def handle_approval_deny_action(
        ack: AsyncAck,
        body: dict[str, Any],
        action: dict[str, Any],
        respond: AsyncRespond,
        context: dict[str, Any],
        client: AsyncWebClient,
    ) -> None:
        await ack()
        request_id, actor = request_id_of(action), clicker(body)
        trigger_id = str(body.get("trigger_id") or "")

        async def work() -> None:
            result = await approvals.check_deny(request_id, actor=actor)
            if result.refusal is not None or result.request is None:
                await tell(respond, refusal_text(result.refusal, result.request, request_id))  # type: ignore[arg-type]
                return
            await client.views_open(trigger_id=trigger_id, view=deny_modal(result.request))

        after_ack(deps, work, body=body, context=context, client=client, respond=respond)

    @app.view(DENY_CALLBACK)
    async def handle_approval_deny_submission(
        ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]
    ) -> None:
        # Decided before the ack, so a refusal (someone approved meanwhile) shows in the modal.
        try:
            request_id = str(json.loads(str(view.get("private_metadata") or "{}")).get("id") or "")
        except (ValueError, AttributeError):
            request_id = ""
        reason = clean_reason(
            _state_value(view.get("state", {}).get("values", {}), DENY_REASON_BLOCK)
        )
        if reason is None:
            await ack(response_action="errors", errors={DENY_REASON_BLOCK: "Say why it is denied."})
            return
        try:
            result = await approvals.deny(request_id, actor=clicker(body), reason=reason)
        except BotError as exc:
            await ack(response_action="errors", errors={DENY_REASON_BLOCK: exc.message[:150]})
            return
        except Exception:
            ref = secrets.token_hex(3)
            log.exception("deny failed ref=%s", ref, extra={"ref": ref})
            await ack(
                response_action="errors",
                errors={DENY_REASON_BLOCK: f"Something went wrong (ref {ref}); nothing changed."},
            )
            return
        if result.refusal is not None:
            text = refusal_text(result.refusal, result.request, request_id).replace("`", "")
            await ack(response_action="errors", errors={DENY_REASON_BLOCK: text[:150]})
            return
        await ack()

    @app.action(REQUEST_REFUND_ACTION)
    async def handle_approval_request_refund_action(
        ack: AsyncAck,
        body: dict[str, Any],
        action: dict[str, Any],
        respond: AsyncRespond,
        context: dict[str, Any],
        client: AsyncWebClient,
    ) -> None:
        await ack()
        caller = Caller(
            user_id=clicker(body).user_id,
            slack_request=slack_request_id(body),
            trigger_id=str(body.get("trigger_id") or ""),
            response_url=str(body.get("response_url") or "") or None,
            client=client,
            origin="draft",
        )

        async def work() -> None:
            try:
                data = json.loads(str(action.get("value") or "{}"))
                account = classify_account(str(data["a"]))
            except (ValueError, KeyError, TypeError, BotError):
                raise UsageError(
                    "This button no longer works; use `/billing refund ACCOUNT` instead."
                ) from None
            prefill = Prefill(
                payment_id=str(data.get("p") or "") or None,
                amount=str(data.get("m") or "") or None,
                reason=str(data.get("r") or "") or None,
            )
            await open_request_form(
                deps, client, trigger_id=caller.trigger_id or "", kind="refund",
                account=account, prefill=prefill, caller=caller,
            )  # fmt: skip

        after_ack(deps, work, body=body, context=context, client=client, respond=respond)

    @app.view(REQUEST_FORM_CALLBACK)
    async def handle_approval_request_submission(
        ack: AsyncAck, body: dict[str, Any], view: dict[str, Any], client: AsyncWebClient
    ) -> None:
        meta = _metadata(view)
        values = (view.get("state") or {}).get("values") or {}
        actor = clicker(body)
        if meta is None:
            await ack(
                response_action="update",
                view=message_modal("refund", "This form no longer works; run the command again."),
            )
            return
        kind: RequestKind = "refund" if meta["k"] == "refund" else "credit"
        errors = form_errors(kind, values)
        try:
            account = classify_account(meta["a"])
        except BotError as exc:
            await ack(response_action="update", view=message_modal(kind, exc.message))
            return
        if errors:
            await approvals.record_refusal(
                kind, account, actor,
                RequestRefused("form_invalid", "; ".join(f"{k}: {v}" for k, v in errors.items())),
                origin=meta.get("o", "modal"),
            )  # fmt: skip
            await ack(response_action="errors", errors=errors)
            return
        metadata = str(view.get("private_metadata") or "")
        await ack(response_action="update", view=checking_modal(kind, metadata))
        view_id = str(view.get("id") or "")
        draft = draft_from_form(kind, account, values, origin=meta.get("o", "modal"))

        async def work() -> None:
            try:
                request = await approvals.create(draft, actor=actor)
            except (UserError, ProviderError) as exc:
                reply, _ = reply_for(exc)
                if view.get("blocks"):
                    again = _form_again(view, values, reply.text)
                else:
                    again = message_modal(kind, f":warning: {reply.text}", metadata)
                await client.views_update(view_id=view_id, view=again)
                return
            confirmation = created_reply(request)
            await client.views_update(
                view_id=view_id, view=message_modal(kind, confirmation.text, metadata)
            )
            await _confirm(meta.get("r"), confirmation)

        after_ack(deps, work, body=body, context={}, client=client, respond=None)


async def _confirm(response_url: str | None, reply: views.Reply) -> None:
    """The requester's ephemeral confirmation where they typed the command (best effort: the
    modal already says it)."""
    if not response_url:
        return
    try:
        await AsyncWebhookClient(response_url).send(
            text=reply.text, blocks=reply.blocks, response_type="ephemeral", replace_original=False
        )
    except Exception:
        log.info("could not confirm through the response_url", exc_info=True)
