"""Refund and credit requests in storage, on SQLite and PostgreSQL: migration 0002 up and down,
and every state change as one conditional UPDATE whose row count picks exactly one winner under
concurrency."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import NullPool

from bot.domain.approvals import ApprovalRequest, RequestState, new_request_id
from bot.domain.money import Money
from bot.domain.records import AuditEvent
from bot.storage.db import Database, make_engine
from bot.storage.migrate import current_revision, downgrade, upgrade

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def a_request(**overrides: object) -> ApprovalRequest:
    """A pending $25 refund request by U0REQ, needing one approver."""
    values: dict[str, object] = {
        "id": new_request_id(),
        "kind": "refund",
        "state": RequestState.PENDING,
        "account_key": "acct_globex",
        "account_label": "Globex Corporation",
        "provider": "stripe",
        "customer_id": "cus_globex",
        "amount": Money(Decimal("25.00"), "usd"),
        "reason": "duplicate charge",
        "requester": "U0REQ",
        "created_at": NOW,
        "expires_at": NOW + timedelta(hours=48),
        "required_approvals": 1,
        "channel": "C0FINANCE",
        "payment_id": "ch_1",
        "account_id": "acct_globex",
    }
    values.update(overrides)
    return ApprovalRequest(**values)  # type: ignore[arg-type]


async def _store(db: Database, request: ApprovalRequest) -> None:
    async with db.uow() as uow:
        await uow.requests.add(request)
        await uow.commit()


async def _get(db: Database, request_id: str) -> ApprovalRequest:
    async with db.uow() as uow:
        found = await uow.requests.get(request_id)
    assert found is not None
    return found


async def _tables(url: str) -> set[str]:
    engine = make_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:

            def names(sync: Connection) -> set[str]:
                return set(inspect(sync).get_table_names())

            return await connection.run_sync(names)
    finally:
        await engine.dispose()


async def test_migration_0002_goes_down_and_up_again(database_url: str) -> None:
    """0002 creates the request tables; downgrading to 0001 drops them; upgrading restores them."""
    await upgrade(database_url)
    assert {"approval_requests", "request_approvals"} <= await _tables(database_url)

    await downgrade(database_url, "0001")
    assert not ({"approval_requests", "request_approvals"} & await _tables(database_url))
    assert await current_revision(database_url) == "0001"

    await upgrade(database_url)
    assert {"approval_requests", "request_approvals"} <= await _tables(database_url)
    db = Database(database_url)
    try:
        request = a_request()
        await _store(db, request)
        assert (await _get(db, request.id)).amount == Money(Decimal("25.00"), "usd")
    finally:
        await db.dispose()


async def test_a_request_round_trips_exactly(migrated_db: Database) -> None:
    """Money (minor units), times (aware UTC), context and the state read back as stored."""
    request = a_request(amount=Money(Decimal("1250"), "jpy"), context={"invoices": ["in_1"]})
    await _store(migrated_db, request)

    stored = await _get(migrated_db, request.id)

    assert stored.amount == Money(Decimal(1250), "jpy")
    assert stored.expires_at == request.expires_at and stored.expires_at.tzinfo is not None
    assert stored.state is RequestState.PENDING and stored.version == 0
    assert stored.context == {"invoices": ["in_1"]}
    assert stored.idempotency_key == f"bt:{request.id}:refund"


async def test_the_schema_refuses_a_non_positive_amount(migrated_db: Database) -> None:
    """A zero amount can never be stored, whatever the code above storage does."""
    with pytest.raises(IntegrityError):
        async with migrated_db.uow() as uow:
            await uow.requests.add(a_request(amount=Money(Decimal(0), "usd")))
            await uow.commit()


async def _approve(db: Database, request_id: str, approver: str) -> RequestState | None:
    async with db.uow() as uow:
        if not await uow.requests.add_approval(request_id, approver, at=NOW):
            return None
        state = await uow.requests.approve(request_id, approver=approver, now=NOW)
        if state is None:
            await uow.rollback()
            return None
        await uow.commit()
        return state


async def test_twenty_concurrent_approvers_make_exactly_one_approval(
    migrated_db: Database,
) -> None:
    """Of 20 approvers clicking at once on a one-approver request, exactly one moves it to
    `approved`; the others' approvals are rolled back."""
    request = a_request()
    await _store(migrated_db, request)

    results = await asyncio.gather(
        *(_approve(migrated_db, request.id, f"U0APP{i:02d}") for i in range(20))
    )

    assert results.count(RequestState.APPROVED) == 1
    assert results.count(None) == 19
    stored = await _get(migrated_db, request.id)
    assert stored.state is RequestState.APPROVED and stored.approval_count == 1
    assert [a.approver for a in stored.approvals] == [stored.decided_by]


async def test_dual_approval_needs_two_distinct_approvers(migrated_db: Database) -> None:
    """The same approver twice counts once; a second, different approver approves it."""
    request = a_request(required_approvals=2, amount=Money(Decimal("1500"), "usd"))
    await _store(migrated_db, request)

    assert await _approve(migrated_db, request.id, "U0ALICE") is RequestState.PENDING
    assert await _approve(migrated_db, request.id, "U0ALICE") is None
    assert (await _get(migrated_db, request.id)).approval_count == 1
    assert await _approve(migrated_db, request.id, "U0BOB") is RequestState.APPROVED
    stored = await _get(migrated_db, request.id)
    assert [a.approver for a in stored.approvals] == ["U0ALICE", "U0BOB"]


async def test_concurrent_double_clicks_by_one_approver_count_once(migrated_db: Database) -> None:
    """Ten simultaneous clicks by one approver on a dual-approval request leave one approval."""
    request = a_request(required_approvals=2)
    await _store(migrated_db, request)

    results = await asyncio.gather(
        *(_approve(migrated_db, request.id, "U0ALICE") for _ in range(10))
    )

    assert results.count(RequestState.PENDING) == 1
    stored = await _get(migrated_db, request.id)
    assert stored.state is RequestState.PENDING and stored.approval_count == 1


async def test_deny_and_approve_racing_have_one_winner(migrated_db: Database) -> None:
    """A deny and approvals at the same moment: the request ends in exactly one decision."""
    request = a_request()
    await _store(migrated_db, request)

    async def deny() -> bool:
        async with migrated_db.uow() as uow:
            won = await uow.requests.deny(request.id, by="U0DENY", reason="no", now=NOW)
            await uow.commit()
            return won

    outcomes = await asyncio.gather(
        deny(), *(_approve(migrated_db, request.id, f"U0A{i}") for i in range(5))
    )
    denied = outcomes[0] is True
    approved = sum(1 for o in outcomes[1:] if o is RequestState.APPROVED)
    assert denied + approved == 1
    stored = await _get(migrated_db, request.id)
    assert stored.state is (RequestState.DENIED if denied else RequestState.APPROVED)


async def test_an_expired_request_cannot_be_approved_and_expires_once(
    migrated_db: Database,
) -> None:
    """Past its expiry a request refuses approvals; `expire` succeeds once."""
    request = a_request(expires_at=NOW - timedelta(seconds=1))
    await _store(migrated_db, request)

    assert await _approve(migrated_db, request.id, "U0APP") is None
    async with migrated_db.uow() as uow:
        assert await uow.requests.expiring(now=NOW) == [request.id]
        assert await uow.requests.expire(request.id, now=NOW)
        assert not await uow.requests.expire(request.id, now=NOW)
        await uow.commit()
    assert (await _get(migrated_db, request.id)).state is RequestState.EXPIRED


async def test_a_request_not_yet_due_does_not_expire(migrated_db: Database) -> None:
    """`expire` before the expiry time changes nothing."""
    request = a_request()
    await _store(migrated_db, request)
    async with migrated_db.uow() as uow:
        assert not await uow.requests.expire(request.id, now=NOW)
        assert await uow.requests.expiring(now=NOW) == []


async def test_execution_is_claimed_once_and_taken_over_only_after_the_lease(
    migrated_db: Database,
) -> None:
    """Twenty executors race for an approved request: one claims it. Nobody can take it over
    while the lease runs; after it runs out one reconciler does, and the attempt is counted."""
    request = a_request()
    await _store(migrated_db, request)
    assert await _approve(migrated_db, request.id, "U0APP") is RequestState.APPROVED

    async def claim(holder: str) -> bool:
        async with migrated_db.uow() as uow:
            won = await uow.requests.claim(
                request.id,
                source=RequestState.APPROVED,
                holder=holder,
                now=NOW,
                until=NOW + timedelta(seconds=30),
            )
            await uow.commit()
            return won

    claims = await asyncio.gather(*(claim(f"replica{i}") for i in range(20)))
    assert claims.count(True) == 1

    async def reclaim(holder: str, at: datetime) -> bool:
        async with migrated_db.uow() as uow:
            won = await uow.requests.reclaim(
                request.id, holder=holder, now=at, until=at + timedelta(seconds=30)
            )
            await uow.commit()
            return won

    assert not await reclaim("late", NOW + timedelta(seconds=10))
    later = NOW + timedelta(seconds=31)
    takeovers = await asyncio.gather(*(reclaim(f"r{i}", later) for i in range(10)))
    assert takeovers.count(True) == 1
    stored = await _get(migrated_db, request.id)
    assert stored.state is RequestState.EXECUTING and stored.attempts == 2
    async with migrated_db.uow() as uow:
        assert await uow.requests.executed(request.id, object_id="re_1", status="ok", now=later)
        assert not await uow.requests.fail(request.id, message="late", now=later)
        await uow.commit()
    assert (await _get(migrated_db, request.id)).provider_object_id == "re_1"


async def test_unfinished_finds_stale_approved_and_abandoned_executing(
    migrated_db: Database,
) -> None:
    """The reconciler's query: approved for a while, or executing with a lapsed lease."""
    approved, running, abandoned = a_request(), a_request(), a_request()
    for request in (approved, running, abandoned):
        await _store(migrated_db, request)
        assert await _approve(migrated_db, request.id, "U0APP") is RequestState.APPROVED
    async with migrated_db.uow() as uow:
        for request, until in ((running, NOW + timedelta(minutes=5)), (abandoned, NOW)):
            assert await uow.requests.claim(
                request.id, source=RequestState.APPROVED, holder="x", now=NOW, until=until
            )
        await uow.commit()

    async with migrated_db.uow() as uow:
        found = await uow.requests.unfinished(
            now=NOW + timedelta(seconds=1), approved_before=NOW + timedelta(seconds=1)
        )
    assert {r.id for r in found} == {approved.id, abandoned.id}


async def test_holding_counts_only_unfinished_requests_on_the_payment(
    migrated_db: Database,
) -> None:
    """Pending, approved and executing requests hold part of a payment; decided ones do not."""
    held, denied, other = a_request(), a_request(), a_request(payment_id="ch_2")
    for request in (held, denied, other):
        await _store(migrated_db, request)
    async with migrated_db.uow() as uow:
        await uow.requests.deny(denied.id, by="U0X", reason="no", now=NOW)
        await uow.requests.hold_payment("ch_1")
        assert [r.id for r in await uow.requests.holding("ch_1")] == [held.id]
        await uow.commit()


async def test_audit_export_pages_from_a_date(migrated_db: Database) -> None:
    """`since` returns events from a date on, oldest first, paged by id."""
    async with migrated_db.uow() as uow:
        for day in range(5):
            await uow.audit.append(
                AuditEvent(None, NOW + timedelta(days=day), "U0", f"a{day}", "s")
            )
        await uow.commit()
    async with migrated_db.uow() as uow:
        first = await uow.audit.since(NOW + timedelta(days=2), limit=2)
        rest = await uow.audit.since(NOW + timedelta(days=2), after_id=first[-1].id or 0)
    assert [e.action for e in first] == ["a2", "a3"]
    assert [e.action for e in rest] == ["a4"]
