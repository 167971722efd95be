"""Provider faults when an approved request is executed, over signed HTTP against the loopback
Stripe sandbox with scripted faults: a refusal (4xx) fails the request with Stripe's own message
and an approver can retry; an answer we never saw (5xx, timeout, a dropped connection after
Stripe refunded) leaves it executing until the reconciler finishes it with the same key — and
Stripe always ends with exactly one refund."""

from __future__ import annotations

import pytest

from bot.domain.approvals import RequestState
from handlers.approval_views import APPROVE_ACTION, RETRY_ACTION
from integrations.sandbox.slack import LocalSlack, dm_channel_id
from tests.support.approvals import APPROVERS, REQUESTER, ApprovalsApp, approvals_app
from tests.support.fakeserver import Fault
from tests.support.providers import FakeProviders

ALICE, BOB, _ = APPROVERS
REFUNDS = r"^/v1/refunds$"
STRIPE_400 = (
    b'{"error": {"type": "invalid_request_error", "code": "amount_too_large", "message": '
    b'"Refund amount ($25.00) is greater than unrefunded amount on charge ($0.00)"}}'
)


async def _approved(app: ApprovalsApp, amount: str = "25") -> tuple[str, str]:
    request_id = await app.request(f"refund acct_globex {amount} duplicate charge")
    await app.click(APPROVE_ACTION, request_id, user=ALICE)
    request = await app.get(request_id)
    return request_id, str(request.payment_id)


def _keys(providers: FakeProviders) -> set[str | None]:
    return {r.headers.get("idempotency-key") for r in providers.stripe.requests_to(REFUNDS)}


async def test_a_stripe_refusal_fails_the_request_with_its_message_and_a_retry_refunds_once(
    local_slack: LocalSlack, fake_providers: FakeProviders, database_url: str
) -> None:
    """Stripe's 400 leaves the request failed with Stripe's own words on the message (with a
    Retry button) and in the requester's DM; the requester can't retry it; an approver's retry
    refunds once, with the same idempotency key."""
    async with approvals_app(local_slack, database_url, fake_providers) as app:
        fake_providers.stripe.add_fault(
            Fault("status", status=400, body=STRIPE_400, path=REFUNDS, method="POST")
        )
        request_id, charge = await _approved(app)

        failed = await app.get(request_id)
        assert failed.state is RequestState.FAILED
        assert failed.failure and "greater than unrefunded amount" in failed.failure
        assert "greater than unrefunded amount" in app.message_text(request_id)
        assert app.buttons(request_id) == [RETRY_ACTION]
        dms = [m for m in local_slack.messages if m.channel == dm_channel_id(REQUESTER)]
        assert dms and "refused" in (dms[-1].text or "")
        results = [e.detail for e in await app.trail(f"request:{request_id}")
                   if e.action == "provider.result"]  # fmt: skip
        assert results[-1]["outcome"] == "rejected"

        told = await app.click(RETRY_ACTION, request_id, user=REQUESTER)
        assert "Only finance approvers" in told[0]["text"]
        await app.click(RETRY_ACTION, request_id, user=BOB)

        done = await app.get(request_id)
        assert done.state is RequestState.EXECUTED and done.attempts == 2
        assert len(await app.refunds_at_stripe(charge)) == 1
        assert _keys(fake_providers) == {f"bt:{request_id}:refund"}
        assert app.buttons(request_id) == []


async def test_rate_limited_on_every_attempt_is_retried_later_with_the_same_key(
    local_slack: LocalSlack, fake_providers: FakeProviders, database_url: str
) -> None:
    """429 on every attempt means Stripe did nothing: a passing fault, not finance's business.
    The request stays executing with no refund; once Stripe lets us in, the reconciler makes the
    one refund with the request's key."""
    async with approvals_app(local_slack, database_url, fake_providers) as app:
        fake_providers.stripe.add_fault(
            Fault("status", status=429, path=REFUNDS, method="POST", times=None)
        )
        request_id, charge = await _approved(app)
        assert (await app.get(request_id)).state is RequestState.EXECUTING
        assert await app.refunds_at_stripe(charge) == []

        fake_providers.stripe.clear_faults()
        await app.run_job()

        done = await app.get(request_id)
        assert done.state is RequestState.EXECUTED
        assert [r["id"] for r in await app.refunds_at_stripe(charge)] == [done.provider_object_id]
        assert _keys(fake_providers) == {f"bt:{request_id}:refund"}


@pytest.mark.parametrize(
    "fault",
    [
        Fault("status", status=500, path=REFUNDS, method="POST", times=None),
        Fault("hang", path=REFUNDS, method="POST", times=None),
        Fault("status", status=502, path=REFUNDS, method="POST", times=None, after=True),
        Fault("hang", path=REFUNDS, method="POST", times=None, after=True),
        Fault("drop", path=REFUNDS, method="POST", times=None, after=True),
    ],
    ids=[
        "5xx-before",
        "timeout-before",
        "5xx-after-refunding",
        "timeout-after-refunding",
        "dropped-after-refunding",
    ],
)
async def test_an_unseen_outcome_stays_executing_and_the_reconciler_makes_one_refund(
    local_slack: LocalSlack, fake_providers: FakeProviders, database_url: str, fault: Fault
) -> None:
    """A 5xx, a timeout or a dropped connection — before Stripe acted or after it refunded —
    is never "failed": the request stays executing, the message says the answer is pending,
    and once Stripe answers again the reconciler ends it executed with exactly one refund,
    every attempt carrying the request's one key."""
    async with approvals_app(local_slack, database_url, fake_providers) as app:
        fake_providers.stripe.add_fault(fault)
        request_id, charge = await _approved(app)

        waiting = await app.get(request_id)
        assert waiting.state is RequestState.EXECUTING
        assert "answer has not arrived" in app.message_text(request_id)
        assert len(await app.refunds_at_stripe(charge)) == (1 if fault.after else 0)
        told = await app.click(APPROVE_ACTION, request_id, user=BOB)
        assert "already approved" in told[0]["text"]

        fake_providers.stripe.clear_faults()
        await app.run_job()

        done = await app.get(request_id)
        assert done.state is RequestState.EXECUTED
        refunds = await app.refunds_at_stripe(charge)
        assert [r["id"] for r in refunds] == [done.provider_object_id]
        assert _keys(fake_providers) == {f"bt:{request_id}:refund"}
        results = [e.detail["outcome"] for e in await app.trail(f"request:{request_id}")
                   if e.action == "provider.result"]  # fmt: skip
        assert results[0] == "unknown"
        assert results[-1] == ("found" if fault.after else "created")
        assert "Refunded" in app.message_text(request_id)


async def test_the_reconciler_keeps_asking_while_stripe_is_down(
    local_slack: LocalSlack, fake_providers: FakeProviders, database_url: str
) -> None:
    """While Stripe stays down the reconciler leaves the request executing (never a second
    key, never failed early); each run is one more attempt."""
    async with approvals_app(local_slack, database_url, fake_providers) as app:
        fake_providers.stripe.add_fault(
            Fault("status", status=503, path=r"^/v1/refunds", times=None)
        )
        request_id, charge = await _approved(app)
        await app.run_job()
        await app.run_job()
        request = await app.get(request_id)
        assert request.state is RequestState.EXECUTING and request.attempts == 3
        fake_providers.stripe.clear_faults()
        await app.run_job()
        assert (await app.get(request_id)).state is RequestState.EXECUTED
        assert len(await app.refunds_at_stripe(charge)) == 1
        assert _keys(fake_providers) == {f"bt:{request_id}:refund"}
