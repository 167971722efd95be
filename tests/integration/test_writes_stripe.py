"""Stripe refunds and balance credits through the real client over loopback HTTP against the
Stripe sandbox server: exactly once under replays, lost answers, timeouts, 5xx, 429 and malformed
bodies; Stripe's own rejections; finding the effect afterwards."""

from __future__ import annotations

import copy
import logging
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio

from bot.domain.identifiers import IdentifierKind
from bot.domain.models import CustomerRecord, idempotency_key
from bot.domain.money import Money
from bot.domain.ports import BillingWriter
from bot.errors import (
    ProviderIdempotencyConflict,
    ProviderNotFound,
    ProviderOutcomeUnknown,
    ProviderRateLimited,
    ProviderRequestError,
)
from integrations.sandbox.stripe_server import StripeSandboxServer
from integrations.stripe import StripeBillingProvider, refund_reason
from tests.support.fakeserver import Fault
from tests.support.providers import KEYS
from tests.support.writes import WRITE_POLICY, WriteEnv, serving, world

Env = WriteEnv[StripeSandboxServer, StripeBillingProvider]
ACCOUNT = "acct_globex"
REFUNDS = r"^/v1/refunds$"


@pytest_asyncio.fixture
async def env() -> AsyncIterator[Env]:
    """A fresh Stripe sandbox server on loopback and the Stripe client pointed at it."""
    shared = world()
    router = StripeSandboxServer(shared, api_key=KEYS["stripe"])
    async with serving(router) as server:
        client = StripeBillingProvider(
            KEYS["stripe"], base_url=server.url, policy=WRITE_POLICY, clock=lambda: shared.now
        )
        try:
            yield WriteEnv(shared, router, server, client)
        finally:
            await client.aclose()


async def customer_of(env: Env, account: str = ACCOUNT) -> CustomerRecord:
    """The account's Stripe customer, as lookup finds it."""
    [record] = await env.client.find_customers(IdentifierKind.ACCOUNT_ID, account)
    return record


def charge_of(env: Env, account: str = ACCOUNT, *, disputed: bool = False) -> dict[str, Any]:
    """A succeeded, unrefunded charge of the account in the shared world."""
    data = env.world.stripe(account)
    assert data is not None
    return next(
        c
        for c in data.charges
        if c["status"] == "succeeded" and not c["amount_refunded"] and c["disputed"] == disputed
    )


def refunds_for(env: Env, request_id: str) -> list[dict[str, Any]]:
    """The refunds the provider holds for one request (its own records, not our answer)."""
    return [
        r
        for r in env.router.refunds.values()
        if r.get("metadata", {}).get("request_id") == request_id
    ]


async def refund(
    env: Env, request_id: str, amount: str = "10.00", *, payment_id: str | None = None,
    account: str = ACCOUNT, key: str | None = None, reason: str | None = None,
) -> Any:  # fmt: skip
    """Refund through the client as the approval flow would."""
    return await env.client.refund_payment(
        customer=await customer_of(env, account),
        payment_id=payment_id or charge_of(env, account)["id"],
        amount=Money(Decimal(amount)),
        request_id=request_id,
        idempotency_key=key or idempotency_key(request_id, "refund"),
        reason=reason,
    )


# --- the happy path and replays -----------------------------------------------------------------


async def test_refund_moves_money_once_and_every_read_shows_it(env: Env) -> None:
    """A refund answers with Stripe's refund, raises the charge's refunded amount, and shows in
    the refunds list, the charge and the status snapshot."""
    charge = charge_of(env)
    result = await refund(env, "R-1", "12.34")
    assert isinstance(env.client, BillingWriter)
    assert result.provider == "stripe" and result.kind == "refund"
    assert result.object_id.startswith("re_") and result.status == "succeeded"
    assert result.amount == Money(Decimal("12.34")) and result.request_id == "R-1"
    assert not result.replayed
    [posted] = env.posts(REFUNDS)
    assert posted.headers["idempotency-key"] == "bt:R-1:refund"
    payment = await env.client.get_payment(charge["id"])
    assert payment.amount_refunded == Money(Decimal("12.34"))
    assert payment.refundable == Money.from_minor(charge["amount"] - 1234, "usd")
    snapshot = await env.client.get_snapshot(await customer_of(env))
    assert result.object_id in {r.id for r in snapshot.refunds}
    assert [r.metadata for r in snapshot.refunds if r.id == result.object_id] == [
        {"request_id": "R-1"}
    ]
    assert charge["amount_refunded"] == 0, "the shared world's charge must not change"


async def test_same_key_replays_the_same_refund_and_creates_nothing(env: Env) -> None:
    """A second call with the same key gets the first refund back, marked replayed."""
    first = await refund(env, "R-2")
    again = await refund(env, "R-2")
    assert again.object_id == first.object_id and again.replayed
    assert len(refunds_for(env, "R-2")) == 1


async def test_same_key_with_another_amount_is_a_conflict(env: Env) -> None:
    """Reusing a key with a different body is Stripe's idempotency_error: a conflict, not a new
    refund."""
    await refund(env, "R-3", "10.00")
    with pytest.raises(ProviderIdempotencyConflict, match="same parameters"):
        await refund(env, "R-3", "11.00")
    assert len(refunds_for(env, "R-3")) == 1


async def test_two_partial_refunds_of_one_amount_are_two_refunds(env: Env) -> None:
    """Two requests refunding the same amount of one charge are two refunds, not a replay."""
    charge = charge_of(env)
    one = await refund(env, "R-4a", "5.00", payment_id=charge["id"])
    two = await refund(env, "R-4b", "5.00", payment_id=charge["id"])
    assert one.object_id != two.object_id and not two.replayed
    assert (await env.client.get_payment(charge["id"])).amount_refunded == Money(Decimal("10.00"))


async def test_refund_by_payment_intent(env: Env) -> None:
    """A `pi_…` payment refunds its latest charge and is found by the intent afterwards."""
    charge = charge_of(env)
    intent = str(charge["payment_intent"])
    result = await refund(env, "R-5", "3.00", payment_id=intent)
    assert env.router.refunds[result.object_id]["charge"] == charge["id"]
    found = await env.client.find_write(
        customer=await customer_of(env), kind="refund", request_id="R-5", payment_id=intent
    )
    assert found is not None and found.object_id == result.object_id and found.replayed


# --- answers lost after the write -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["drop", "hang", "status", "malformed"])
async def test_a_lost_answer_is_unknown_then_the_same_key_returns_the_one_refund(
    env: Env, kind: Any
) -> None:
    """Stripe refunded but every answer was lost (dropped, hung, a 500, garbage): the outcome is
    unknown, never failed; retrying with the same key returns the one refund Stripe made."""
    env.server.fail_after(kind, path=REFUNDS, times=None)
    with pytest.raises(ProviderOutcomeUnknown, match="may or may not"):
        await refund(env, "R-6")
    assert len(refunds_for(env, "R-6")) == 1
    assert set(env.keys_seen(REFUNDS)) == {"bt:R-6:refund"}
    env.server.clear_faults()
    again = await refund(env, "R-6")
    assert again.replayed and again.object_id == refunds_for(env, "R-6")[0]["id"]
    assert len(refunds_for(env, "R-6")) == 1


async def test_one_lost_answer_is_retried_with_the_same_key(env: Env) -> None:
    """A single dropped answer is retried at once with the same key and replayed."""
    env.server.fail_after("drop", path=REFUNDS)
    result = await refund(env, "R-7")
    assert result.replayed
    assert env.keys_seen(REFUNDS) == ["bt:R-7:refund", "bt:R-7:refund"]
    assert len(refunds_for(env, "R-7")) == 1


async def test_find_write_finds_a_refund_whose_answer_was_lost(env: Env) -> None:
    """After an unknown outcome the reconciler finds the refund by request ID."""
    charge = charge_of(env)
    env.server.fail_after("drop", path=REFUNDS, times=None)
    with pytest.raises(ProviderOutcomeUnknown):
        await refund(env, "R-8", payment_id=charge["id"])
    env.server.clear_faults()
    record = await customer_of(env)
    found = await env.client.find_write(
        customer=record, kind="refund", request_id="R-8", payment_id=charge["id"]
    )
    assert found is not None and found.replayed and found.amount == Money(Decimal("10.00"))
    assert found.object_id == refunds_for(env, "R-8")[0]["id"]
    none = await env.client.find_write(
        customer=record, kind="refund", request_id="R-never", payment_id=charge["id"]
    )
    assert none is None


# --- failures before the write ------------------------------------------------------------------


async def test_5xx_before_the_write_is_unknown_and_a_retry_refunds_once(env: Env) -> None:
    """5xx answers are unknown outcomes (Stripe may have acted); here it had not, so the retry
    with the same key makes the one refund."""
    env.server.fail(500, path=REFUNDS, times=None)
    with pytest.raises(ProviderOutcomeUnknown):
        await refund(env, "R-9")
    assert refunds_for(env, "R-9") == []
    assert len(env.posts(REFUNDS)) == WRITE_POLICY.max_attempts
    env.server.clear_faults()
    assert not (await refund(env, "R-9")).replayed
    assert len(refunds_for(env, "R-9")) == 1


async def test_should_retry_false_stops_retries_and_the_outcome_is_unknown(env: Env) -> None:
    """`Stripe-Should-Retry: false` on a 500 is honoured: one attempt, outcome unknown."""
    env.server.fail(500, path=REFUNDS, times=None, headers={"Stripe-Should-Retry": "false"})
    with pytest.raises(ProviderOutcomeUnknown):
        await refund(env, "R-10")
    assert len(env.posts(REFUNDS)) == 1


async def test_a_stored_500_is_replayed_and_stays_unknown(env: Env) -> None:
    """Stripe stores a 500 for its key and replays it: still unknown, nothing refunded; once
    the key is pruned a retry refunds once."""
    env.router.break_writes(1)
    with pytest.raises(ProviderOutcomeUnknown):
        await refund(env, "R-11")
    assert refunds_for(env, "R-11") == []
    assert len(env.posts(REFUNDS)) == WRITE_POLICY.max_attempts  # the replays of the 500
    record = await customer_of(env)
    charge = charge_of(env)
    assert (
        await env.client.find_write(
            customer=record, kind="refund", request_id="R-11", payment_id=charge["id"]
        )
        is None
    )
    env.router.expire_idempotency_keys()
    await refund(env, "R-11")
    assert len(refunds_for(env, "R-11")) == 1


@pytest.mark.parametrize("retry_after", [None, "0"])
async def test_429_is_retried_with_the_same_key(env: Env, retry_after: str | None) -> None:
    """429s, with or without Retry-After, are retried, every attempt carrying the same key."""
    env.server.fail(429, path=REFUNDS, times=2, retry_after=retry_after)
    result = await refund(env, "R-12")
    assert env.keys_seen(REFUNDS) == ["bt:R-12:refund"] * 3
    assert not result.replayed and len(refunds_for(env, "R-12")) == 1


async def test_429_on_every_attempt_is_rate_limited_not_unknown(env: Env) -> None:
    """A write refused with 429 every time was never executed: rate limited, not unknown."""
    env.server.fail(429, path=REFUNDS, times=None)
    with pytest.raises(ProviderRateLimited):
        await refund(env, "R-13")
    assert refunds_for(env, "R-13") == []


async def test_409_in_flight_is_retried_then_unknown(env: Env) -> None:
    """Stripe's 409 "another in-progress request" is retried with the key, then unknown."""
    body = (
        b'{"error": {"type": "idempotency_error", "code": "idempotency_key_in_use",'
        b' "message": "There is currently another in-progress request"}}'
    )
    env.server.add_fault(Fault("status", status=409, body=body, path=REFUNDS, times=None))
    with pytest.raises(ProviderOutcomeUnknown, match="in flight"):
        await refund(env, "R-14")
    assert set(env.keys_seen(REFUNDS)) == {"bt:R-14:refund"}


# --- Stripe's rejections --------------------------------------------------------------------------


async def test_more_than_is_left_is_stripes_amount_too_large(env: Env) -> None:
    """A refund above what is left is refused with Stripe's message; nothing changes."""
    charge = charge_of(env)
    over = Money.from_minor(charge["amount"] + 1, "usd")
    with pytest.raises(ProviderRequestError) as caught:
        await refund(env, "R-15", str(over.amount), payment_id=charge["id"])
    assert caught.value.status == 400
    assert caught.value.message == (
        f"Refund amount ({over.format()}) is greater than unrefunded amount on charge "
        f"({Money.from_minor(charge['amount'], 'usd').format()})"
    )
    assert refunds_for(env, "R-15") == []


async def test_a_fully_refunded_charge_is_charge_already_refunded(env: Env) -> None:
    """After a full refund, another refund of the charge is `charge_already_refunded`."""
    charge = charge_of(env)
    whole = Money.from_minor(charge["amount"], "usd")
    await refund(env, "R-16a", str(whole.amount), payment_id=charge["id"])
    assert env.router.charges[charge["id"]]["refunded"] is True
    with pytest.raises(ProviderRequestError, match="has already been refunded"):
        await refund(env, "R-16b", "1.00", payment_id=charge["id"])


async def test_unknown_charge_is_not_found_and_nothing_is_posted(env: Env) -> None:
    """An unknown charge is Stripe's 404 `No such charge`; no refund is attempted."""
    with pytest.raises(ProviderNotFound, match="No such charge"):
        await refund(env, "R-17", payment_id="ch_3NoSuchCharge000000000000")
    assert env.posts(REFUNDS) == []


async def test_charge_of_another_customer_or_currency_is_refused_before_sending(env: Env) -> None:
    """A payment of another account, or a refund in another currency, never reaches Stripe."""
    other = charge_of(env, "acct_hooli")
    with pytest.raises(ProviderRequestError, match="another Stripe customer"):
        await refund(env, "R-18", payment_id=other["id"])
    with pytest.raises(ProviderRequestError, match="paid in USD"):
        await env.client.refund_payment(
            customer=await customer_of(env),
            payment_id=charge_of(env)["id"],
            amount=Money(Decimal("5"), "eur"),
            request_id="R-18",
            idempotency_key="bt:R-18:refund",
        )
    assert env.posts(REFUNDS) == []


async def test_a_charged_back_charge_cannot_be_refunded(env: Env) -> None:
    """A charge under a dispute is Stripe's `charge_disputed`."""
    disputed = charge_of(env, "acct_fabrikam", disputed=True)
    with pytest.raises(ProviderRequestError, match="charged back"):
        await refund(env, "R-19", payment_id=disputed["id"], account="acct_fabrikam")


async def test_bad_arguments_are_programming_errors(env: Env) -> None:
    """A key too long or not of the request, a non-positive or over-precise amount: ValueError,
    and nothing is sent."""
    long_id = "R" * 70
    with pytest.raises(ValueError, match="64"):
        await refund(env, long_id, key=f"bt:{long_id}:refund")
    with pytest.raises(ValueError, match="form"):
        await refund(env, "R-20", key="bt:R-other:refund")
    for amount in ("0", "-1", "1.001"):
        with pytest.raises(ValueError):
            await refund(env, "R-20", amount)
    with pytest.raises(ValueError, match="charge or payment intent"):
        await refund(env, "R-20", payment_id="in_123")
    assert env.posts(REFUNDS) == []


def test_refund_reasons_map_to_stripes_words() -> None:
    """Only Stripe's own words become Stripe reasons; free text is requested_by_customer."""
    assert refund_reason("Duplicate") == "duplicate"
    assert refund_reason("fraudulent") == "fraudulent"
    assert refund_reason("charged twice, sorry") == "requested_by_customer"
    assert refund_reason(None) == "requested_by_customer"


# --- balance credits ------------------------------------------------------------------------------


async def test_balance_credit_lowers_the_balance_once(env: Env) -> None:
    """A credit is a negative balance transaction: the customer's balance drops by it, a replay
    returns it, and find_write finds it."""
    record = await customer_of(env)
    before = record.balance or Money.zero("usd")

    async def credit(amount: str = "25.00") -> Any:
        return await env.client.grant_credit(
            customer=record, amount=Money(Decimal(amount)), request_id="C-1",
            idempotency_key="bt:C-1:credit", description="Sorry for the outage",
        )  # fmt: skip

    result = await credit()
    assert result.kind == "credit" and result.object_id.startswith("cbtxn_")
    assert result.amount == Money(Decimal("25.00")) and result.status == "applied"
    again = await credit()
    assert again.replayed and again.object_id == result.object_id
    with pytest.raises(ProviderIdempotencyConflict):
        await credit("26.00")
    after = (await customer_of(env)).balance
    assert after == before - Money(Decimal("25.00"))
    found = await env.client.find_write(customer=record, kind="credit", request_id="C-1")
    assert found is not None and found.object_id == result.object_id and found.replayed
    assert await env.client.find_write(customer=record, kind="credit", request_id="C-x") is None
    snapshot = await env.client.get_snapshot(await customer_of(env))
    assert snapshot.balances[0].remaining == -after


async def test_balance_credit_lost_answer_then_retry(env: Env) -> None:
    """A credit whose answer is lost is unknown; the retry returns the one transaction."""
    record = await customer_of(env)
    path = rf"/v1/customers/{record.customer_id}/balance_transactions$"
    env.server.fail_after("drop", path=path, times=None)
    kwargs: dict[str, Any] = {
        "customer": record, "amount": Money(Decimal("5")), "request_id": "C-2",
        "idempotency_key": "bt:C-2:credit", "description": "goodwill",
    }  # fmt: skip
    with pytest.raises(ProviderOutcomeUnknown):
        await env.client.grant_credit(**kwargs)
    env.server.clear_faults()
    assert (await env.client.grant_credit(**kwargs)).replayed
    mine = [
        t for t in env.router.balance_transactions.values()
        if t.get("metadata", {}).get("request_id") == "C-2"
    ]  # fmt: skip
    assert len(mine) == 1


async def test_balance_credit_in_another_currency_is_refused(env: Env) -> None:
    """Stripe keeps the balance in the customer's currency: a EUR credit to a USD customer is
    refused before sending."""
    with pytest.raises(ProviderRequestError, match="in USD"):
        await env.client.grant_credit(
            customer=await customer_of(env), amount=Money(Decimal("5"), "eur"),
            request_id="C-3", idempotency_key="bt:C-3:credit", description="x",
        )  # fmt: skip


# --- reads for the approval flow ------------------------------------------------------------------


async def test_payment_for_invoice_and_get_payment(env: Env) -> None:
    """An invoice resolves to the payment that paid it, and the payment reads with what is left
    to refund."""
    data = env.world.stripe(ACCOUNT)
    assert data is not None
    paid = next(p for p in data.invoice_payments if p["status"] == "paid")
    ref = paid["payment"]
    expected = ref.get("charge") or ref.get("payment_intent")
    assert await env.client.payment_for_invoice(paid["invoice"]) == expected
    payment = await env.client.get_payment(str(expected))
    assert payment.customer_id == (await customer_of(env)).customer_id
    assert payment.refundable == payment.amount
    with pytest.raises(ProviderNotFound):
        await env.client.get_payment("ch_3NoSuchCharge000000000000")


# --- the write log ------------------------------------------------------------------------------


async def test_each_write_logs_one_line_without_the_key(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """One log line per write: provider, request ID, idempotency key and outcome; never the
    API key."""
    with caplog.at_level(logging.INFO, logger="integrations.writes"):
        await refund(env, "R-21")
        await refund(env, "R-21")
        with pytest.raises(ProviderIdempotencyConflict):
            await refund(env, "R-21", "11.00")
    lines = [r for r in caplog.records if r.name == "integrations.writes"]
    assert [getattr(r, "outcome", None) for r in lines] == ["created", "replayed", "conflict"]
    for line in lines:
        assert line.__dict__["provider"] == "stripe"
        assert line.__dict__["request_id"] == "R-21"
        assert line.__dict__["idempotency_key"] == "bt:R-21:refund"
        assert KEYS["stripe"] not in str(line.__dict__)


async def test_writes_never_change_the_shared_world(env: Env) -> None:
    """The world's generated objects are shared between servers: writes change only this
    server's copies."""
    data = env.world.stripe(ACCOUNT)
    assert data is not None
    before = copy.deepcopy((data.customer, data.charges, data.refunds))
    await refund(env, "R-22")
    await env.client.grant_credit(
        customer=await customer_of(env), amount=Money(Decimal("1")), request_id="C-22",
        idempotency_key="bt:C-22:credit", description="x",
    )  # fmt: skip
    assert (data.customer, data.charges, data.refunds) == before
