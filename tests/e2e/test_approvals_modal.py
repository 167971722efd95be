"""The request modal (issue 8 (1)): a command with parts missing, or the draft's "Request
refund" button, opens a form with the account's refundable payments and what is left on each;
what is submitted is checked like a command, inline where no provider is needed."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from bot.domain.approvals import RequestState
from handlers.approval_views import REQUEST_FORM_CALLBACK, REQUEST_REFUND_ACTION
from integrations.sandbox.slack import LocalSlack
from tests.support.approvals import FINANCE, REQUESTER, ApprovalsApp, approvals_app, sqlite_url
from tests.support.providers import FakeProviders
from tests.support.slack import FORM, block_actions_body, signed_headers


def _form(slack: LocalSlack) -> dict[str, Any]:
    """The modal as it stands after the last views.update."""
    [opened] = slack.calls_to("views.open")
    view_id = opened.response["view"]["id"]
    return slack.views[view_id]


def _input(view: dict[str, Any], block_id: str) -> dict[str, Any]:
    [block] = [b for b in view["blocks"] if b.get("block_id") == block_id]
    return dict(block["element"])


def _values(option: dict[str, Any] | None, amount: str, reason: str) -> dict[str, Any]:
    values: dict[str, Any] = {
        "amount": {"amount_input": amount},
        "reason": {"reason_input": reason},
    }
    if option is not None:
        values["payment"] = {"payment_input": {"type": "static_select", "selected_option": option}}
    return values


async def _submit(app: ApprovalsApp, view: dict[str, Any], values: dict[str, Any]) -> Any:
    response = await app.submit(
        REQUEST_FORM_CALLBACK, values, user=REQUESTER, metadata=view["private_metadata"],
        view_id=view["id"], blocks=view["blocks"],
    )  # fmt: skip
    assert response.status_code == 200
    await app.settle()
    return response.json() if response.content else None


async def test_a_refund_without_an_amount_opens_a_form_that_makes_the_request(
    local_slack: LocalSlack, fake_providers: FakeProviders, database_url: str
) -> None:
    """`/billing refund ACCOUNT` opens a modal at once, then fills in the account's recent
    refundable payments with what is left on each; submitting it makes the request, confirms
    in the modal and ephemerally, and posts it to finance."""
    async with approvals_app(local_slack, database_url, fake_providers) as app:
        await app.say("refund acct_globex")

        view = _form(local_slack)
        assert "Globex Corporation" in json.dumps(view["blocks"])
        picker = _input(view, "payment")
        assert picker["type"] == "static_select"
        payments = await app.payments("acct_globex")
        shown = [o["value"] for o in picker["options"]]
        assert shown and shown[0] == payments[0].id
        assert "left" in picker["options"][0]["text"]["text"]

        answer = await _submit(app, view, _values(picker["options"][1], "12.50", "charged twice"))

        assert answer["response_action"] == "update"  # "checking…" while the provider is asked
        [request] = await app.stored()
        assert (request.amount.amount, request.payment_id) == (Decimal("12.50"), shown[1])
        assert request.state is RequestState.PENDING and request.requester == REQUESTER
        assert request.id in json.dumps(local_slack.views[view["id"]])
        assert app.message(request.id).channel == FINANCE
        assert any(request.id in str(c.args) for c in local_slack.calls_to("response_url"))
        created = await app.trail(f"request:{request.id}")
        assert created[0].action == "request.created" and created[0].detail["origin"] == "command"


async def test_a_bad_form_is_refused_inline_and_nothing_is_stored(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """An amount that is not one and an empty reason come back as errors on their fields; the
    refusal is audited."""
    async with approvals_app(local_slack, sqlite_url(tmp_path), fake_providers) as app:
        await app.say("refund acct_globex")
        view = _form(local_slack)
        option = _input(view, "payment")["options"][0]

        answer = await _submit(app, view, _values(option, "twelve", "   "))

        assert answer["response_action"] == "errors"
        assert set(answer["errors"]) == {"amount", "reason"}
        assert await app.stored() == []
        [refusal] = [e for e in await app.trail("account:acct_globex")
                     if e.action == "request.refused"]  # fmt: skip
        assert refusal.detail["why"] == "form_invalid"


async def test_a_form_the_provider_refuses_comes_back_with_what_was_typed(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """More than is left on the payment (or another currency) is refused in the form itself,
    with the amount and reason still filled in; nothing is stored."""
    async with approvals_app(local_slack, sqlite_url(tmp_path), fake_providers) as app:
        await app.say("refund acct_globex")
        view = _form(local_slack)
        option = _input(view, "payment")["options"][0]

        await _submit(app, view, _values(option, "25 EUR", "charged twice"))

        again = local_slack.views[view["id"]]
        assert "not in USD" in json.dumps(again["blocks"])
        assert _input(again, "amount")["initial_value"] == "25 EUR"
        assert _input(again, "reason")["initial_value"] == "charged twice"
        assert again.get("submit")  # still a form
        assert await app.stored() == []


async def test_a_credit_form_asks_only_amount_and_reason_in_the_accounts_currency(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """`/billing credit ACCOUNT` opens a form naming where the credit goes (Orb here)."""
    async with approvals_app(local_slack, sqlite_url(tmp_path), fake_providers) as app:
        await app.say("credit acct_northwind")
        view = _form(local_slack)
        assert "Orb" in json.dumps(view["blocks"]) and "USD" in json.dumps(view["blocks"])
        assert not [b for b in view["blocks"] if b.get("block_id") == "payment"]

        await _submit(app, view, _values(None, "30", "outage"))

        [request] = await app.stored()
        assert (request.kind, request.provider) == ("credit", "orb")


async def test_someone_not_allowed_to_request_sees_why_in_the_form(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """The form never offers payments to someone outside REQUESTERS."""
    async with approvals_app(
        local_slack, sqlite_url(tmp_path), fake_providers, requesters="U0SOMEONEELSE"
    ) as app:
        await app.say("refund acct_globex")
        view = _form(local_slack)
        assert "not allowed to request" in json.dumps(view["blocks"])
        assert not view.get("submit")


async def test_the_drafts_request_refund_button_opens_the_form_prefilled(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """The draft for the duplicate charge offers "Request refund": it opens the refund form with
    the duplicate payment picked and its amount and reason filled in."""
    async with approvals_app(local_slack, sqlite_url(tmp_path), fake_providers) as app:
        draft = await app.running.answer("draft acct_globex charged twice", key="draft")
        [button] = [
            e for b in draft["blocks"] if b["type"] == "actions" for e in b["elements"]
            if e["action_id"] == REQUEST_REFUND_ACTION
        ]  # fmt: skip
        prefill = json.loads(button["value"])
        body = block_actions_body(
            REQUEST_REFUND_ACTION, button["value"], user_id=REQUESTER, channel_id="C0SUPPORT",
            is_ephemeral=True, response_url=local_slack.response_url("btn"),
        )  # fmt: skip
        response = await app.running.post_slack(body, signed_headers(body, content_type=FORM))
        assert response.status_code == 200
        await app.settle()

        view = _form(local_slack)
        picker = _input(view, "payment")
        assert picker["initial_option"]["value"] == prefill["p"]
        assert _input(view, "amount")["initial_value"] == prefill["m"]
        assert _input(view, "reason")["initial_value"] == "duplicate charge"
        await _submit(
            app, view, _values(picker["initial_option"], prefill["m"], "duplicate charge")
        )
        [request] = await app.stored()
        assert request.payment_id == prefill["p"]
        assert (await app.trail(f"request:{request.id}"))[0].detail["origin"] == "draft"
