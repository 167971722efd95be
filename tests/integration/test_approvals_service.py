"""The approval service on SQLite and PostgreSQL with an in-memory Stripe: exactly one provider
write per request under concurrent clicks on two replicas, requests racing for one payment,
leases, crashes at every step, and unknown outcomes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest_asyncio

from bot.domain.approvals import ApprovalRules, RequestState
from bot.domain.identifiers import classify_account
from bot.domain.money import parse_amount_input
from bot.errors import ProviderIdempotencyConflict, ProviderOutcomeUnknown, RequestRefused
from bot.services.access import AccessService
from bot.services.approvals import Actor, ApprovalService, RequestDraft
from bot.services.lookup import LookupService
from bot.storage.db import Database
from tests.support.fake_billing import FakeStripe, stocked

APPROVERS = [f"U0APP{i:02d}" for i in range(20)]
REQUESTER = Actor("U0REQ", "tr.req")


def _service(db: Database, stripe: FakeStripe, holder: str, **kw: object) -> ApprovalService:
    return ApprovalService(
        store=db,
        lookup=LookupService({"stripe": stripe}),
        providers={"stripe": stripe},
        access=AccessService(None, approvers=APPROVERS),
        rules=ApprovalRules(),
        channel="C0FINANCE",
        holder=holder,
        **kw,  # type: ignore[arg-type]
    )


@pytest_asyncio.fixture
async def replicas(
    migrated_db: Database,
) -> AsyncIterator[tuple[FakeStripe, ApprovalService, ApprovalService]]:
    """One Stripe, two replicas of the service on one database (separate engines)."""
    stripe = stocked()
    other = Database(migrated_db.url)
    try:
        yield (
            stripe,
            _service(migrated_db, stripe, "replica-1"),
            _service(other, stripe, "replica-2"),
        )
    finally:
        await other.dispose()


async def _create(service: ApprovalService, amount: str, payment: str = "ch_a1") -> str:
    draft = RequestDraft("refund", classify_account("acct_a"), parse_amount_input(amount),
                         "duplicate charge", payment)  # fmt: skip
    return (await service.create(draft, actor=REQUESTER)).id


async def test_twenty_approvers_on_two_replicas_make_one_write(
    replicas: tuple[FakeStripe, ApprovalService, ApprovalService],
) -> None:
    """Clicks split between two replicas: one approval wins, one provider write is made."""
    stripe, one, two = replicas
    request_id = await _create(one, "30")
    results = await asyncio.gather(
        *(
            (one if i % 2 else two).approve(request_id, actor=Actor(u))
            for i, u in enumerate(APPROVERS)
        )
    )
    assert sum(r.accepted for r in results) == 1
    assert stripe.calls == [f"bt:{request_id}:refund"]
    assert (await one.get(request_id)).state is RequestState.EXECUTED  # type: ignore[union-attr]


async def test_requests_racing_for_one_payment_cannot_both_take_what_is_left(
    replicas: tuple[FakeStripe, ApprovalService, ApprovalService],
) -> None:
    """Two requests for 60 of a $100 payment made at the same moment on two replicas: one is
    stored, the other refused as above what is left."""
    _, one, two = replicas
    outcomes = await asyncio.gather(_create(one, "60"), _create(two, "60"), return_exceptions=True)
    stored = [o for o in outcomes if isinstance(o, str)]
    refused = [o for o in outcomes if isinstance(o, RequestRefused)]
    assert len(stored) == 1 and len(refused) == 1 and refused[0].why == "amount_above_refundable"


async def _approve_only(service: ApprovalService, request_id: str) -> None:
    """What a replica that died right after the approval's commit left behind."""
    async with service.store.uow() as uow:
        assert await uow.requests.add_approval(request_id, "U0APP00", at=service.clock())
        assert await uow.requests.approve(request_id, approver="U0APP00", now=service.clock())
        await uow.commit()


def _later(seconds: float) -> Callable[[], datetime]:
    return lambda: datetime.now(UTC) + timedelta(seconds=seconds)


async def test_a_crash_between_approval_and_execution_is_finished_by_the_reconciler(
    replicas: tuple[FakeStripe, ApprovalService, ApprovalService],
) -> None:
    """Left `approved`, the request is not touched while its approver might still go on (a
    grace period), then the reconciler executes it once."""
    stripe, one, two = replicas
    request_id = await _create(one, "30")
    await _approve_only(one, request_id)
    assert await two.reconcile() == 0 and stripe.calls == []
    two.clock = _later(60)
    assert await two.reconcile() == 1
    assert stripe.calls == [f"bt:{request_id}:refund"]
    assert (await two.get(request_id)).state is RequestState.EXECUTED  # type: ignore[union-attr]


async def test_a_request_being_executed_is_left_alone_while_its_lease_runs(
    replicas: tuple[FakeStripe, ApprovalService, ApprovalService],
) -> None:
    """A slow provider call keeps its lease (renewed): the other replica's reconciler does not
    send a second request meanwhile."""
    stripe, one, two = replicas
    one.lease = 0.3
    stripe.write_delay = 0.8
    request_id = await _create(one, "30")
    clicking = asyncio.create_task(one.approve(request_id, actor=Actor("U0APP01")))
    await asyncio.sleep(0.5)  # past the first lease: only the renewals hold it now
    assert await two.reconcile() == 0
    await clicking
    assert stripe.calls == [f"bt:{request_id}:refund"]


async def test_a_crash_after_the_provider_refunded_ends_executed_without_a_second_refund(
    replicas: tuple[FakeStripe, ApprovalService, ApprovalService],
) -> None:
    """The replica died after Stripe refunded and before the commit: once its lease lapses,
    the reconciler finds the refund by request ID and records it; nothing is sent again."""
    stripe, one, two = replicas
    request_id = await _create(one, "30")
    await _approve_only(one, request_id)
    now = one.clock()
    async with one.store.uow() as uow:
        assert await uow.requests.claim(request_id, source=RequestState.APPROVED,
                                        holder="dead-replica", now=now,
                                        until=now + timedelta(seconds=30))  # fmt: skip
        await uow.commit()
    request = await one.get(request_id)
    assert request is not None
    await stripe.refund_payment(customer=request.customer(), payment_id="ch_a1",
                                amount=request.amount, request_id=request_id,
                                idempotency_key=request.idempotency_key)  # fmt: skip
    assert await two.reconcile() == 0  # the dead replica's lease still runs
    two.clock = _later(31)
    assert await two.reconcile() == 1
    done = await two.get(request_id)
    assert done is not None and done.state is RequestState.EXECUTED
    assert len(stripe.refunds("ch_a1")) == 1 and stripe.calls == [request.idempotency_key]


async def test_when_stripe_cannot_be_asked_nothing_is_sent(
    replicas: tuple[FakeStripe, ApprovalService, ApprovalService],
) -> None:
    """After an unknown outcome the reconciler looks for the refund first; if it cannot even
    look, it sends nothing and tries again next time."""
    stripe, one, two = replicas
    stripe.fail_next.append((ProviderOutcomeUnknown("stripe", "timed out"), True))
    request_id = await _create(one, "30")
    await one.approve(request_id, actor=Actor("U0APP01"))
    assert (await one.get(request_id)).state is RequestState.EXECUTING  # type: ignore[union-attr]
    stripe.find_fails = True
    two.clock = _later(1)
    assert await two.reconcile() == 1
    assert len(stripe.calls) == 1
    stripe.find_fails = False
    two.clock = _later(2)
    await two.reconcile()
    done = await two.get(request_id)
    assert done is not None and done.state is RequestState.EXECUTED and len(stripe.calls) == 1


async def test_after_ten_unknown_outcomes_a_human_is_asked(
    replicas: tuple[FakeStripe, ApprovalService, ApprovalService],
) -> None:
    """A provider that never answers does not keep the request executing forever: after ten
    attempts it fails, saying what to check; a retry still looks for the object first."""
    stripe, one, two = replicas
    stripe.fail_next.extend((ProviderOutcomeUnknown("stripe", "502"), False) for _ in range(10))
    request_id = await _create(one, "30")
    await one.approve(request_id, actor=Actor("U0APP01"))
    for step in range(1, 10):
        two.clock = _later(step)
        await two.reconcile()
    failed = await two.get(request_id)
    assert failed is not None and failed.state is RequestState.FAILED and failed.attempts == 10
    assert f"request_id={request_id}" in (failed.failure or "")
    retried = await two.retry(request_id, actor=Actor("U0APP02"))
    assert retried.accepted
    assert (await two.get(request_id)).state is RequestState.EXECUTED  # type: ignore[union-attr]
    assert set(stripe.calls) == {f"bt:{request_id}:refund"}


async def test_an_idempotency_conflict_fails_the_request_and_is_never_worked_around(
    replicas: tuple[FakeStripe, ApprovalService, ApprovalService],
) -> None:
    """The key used with another body (a bug) fails the request; no other key is tried."""
    stripe, one, _ = replicas
    stripe.fail_next.append(
        (ProviderIdempotencyConflict("stripe", "Keys … same parameters"), False)
    )
    request_id = await _create(one, "30")
    await one.approve(request_id, actor=Actor("U0APP01"))
    failed = await one.get(request_id)
    assert failed is not None and failed.state is RequestState.FAILED
    assert "same parameters" in (failed.failure or "")
    assert stripe.calls == [f"bt:{request_id}:refund"] and stripe.refunds() == []


async def test_a_refund_in_another_currency_or_beyond_the_payment_is_refused(
    replicas: tuple[FakeStripe, ApprovalService, ApprovalService],
) -> None:
    """JPY has no minor unit; a USD amount on a JPY payment, or more than is left, is refused."""
    _, one, _ = replicas
    for account, amount, payment, why in (
        ("acct_yen", "12.5", "ch_y1", "invalid_amount"),
        ("acct_yen", "$10", "ch_y1", "invalid_amount"),
        ("acct_a", "25.01", "ch_a2", "amount_above_refundable"),
    ):
        draft = RequestDraft("refund", classify_account(account), parse_amount_input(amount),
                             "x", payment)  # fmt: skip
        try:
            await one.create(draft, actor=REQUESTER)
        except Exception as exc:  # a RequestRefused or an InvalidAmount: its why is checked
            assert getattr(exc, "why", getattr(exc, "code", None)) == why
        else:
            raise AssertionError(f"{amount} on {payment} was accepted")
    ok = RequestDraft("refund", classify_account("acct_a"), parse_amount_input("25"), "x", "ch_a2")
    assert (await one.create(ok, actor=REQUESTER)).amount.amount == Decimal(25)
