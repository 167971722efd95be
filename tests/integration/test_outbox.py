"""The outbox, leases and periodic jobs on SQLite and PostgreSQL: durable, ordered, one winner."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from bot.domain.records import OutgoingMessage
from bot.services.jobs import Job, Scheduler
from bot.storage.db import Database

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def _msg(key: str, *, op: str = "post", ref: str | None = None) -> OutgoingMessage:
    return OutgoingMessage(key=key, op=op, channel="C0FINANCE", ref=ref, payload={"text": key})  # type: ignore[arg-type]


async def _enqueue(db: Database, *messages: OutgoingMessage) -> list[bool]:
    async with db.uow() as uow:
        stored = [await uow.outbox.enqueue(m, now=NOW) for m in messages]
        await uow.commit()
    return stored


async def test_enqueuing_the_same_key_twice_stores_one_message(migrated_db: Database) -> None:
    """A retried enqueue (a Slack retry, a second replica) never posts a message twice."""
    assert await _enqueue(migrated_db, _msg("req:R1:posted")) == [True]
    assert await _enqueue(migrated_db, _msg("req:R1:posted")) == [False]

    async with migrated_db.uow() as uow:
        assert (await uow.outbox.stats())["pending"] == 1


async def test_an_update_waits_for_the_post_of_its_message(migrated_db: Database) -> None:
    """Entries naming the same message go out in order: the update is not claimable before the
    post that creates the message has been delivered."""
    await _enqueue(
        migrated_db,
        _msg("post", ref="request:R1"),
        _msg("update", op="update", ref="request:R1"),
        _msg("other", ref="alert:A1"),
    )
    async with migrated_db.uow() as uow:
        first = await uow.outbox.claim_due(now=NOW, holder="a", lease=60, limit=10)
        await uow.commit()
    assert [e.message.key for e in first] == ["post", "other"]

    async with migrated_db.uow() as uow:
        await uow.outbox.mark_sent([first[0].id], now=NOW)
        await uow.commit()
    async with migrated_db.uow() as uow:
        second = await uow.outbox.claim_due(now=NOW, holder="a", lease=60, limit=10)
    assert [e.message.key for e in second] == ["update"]


async def test_two_replicas_never_claim_the_same_entry(migrated_db: Database) -> None:
    """Concurrent claimers split the due entries between them; none is delivered twice."""
    await _enqueue(migrated_db, *(_msg(f"k{i}") for i in range(40)))

    async def claim(holder: str) -> list[int]:
        got: list[int] = []
        for _ in range(10):
            async with migrated_db.uow() as uow:
                batch = await uow.outbox.claim_due(now=NOW, holder=holder, lease=60, limit=3)
                await uow.commit()
            got.extend(e.id for e in batch)
            await asyncio.sleep(0)
        return got

    claims = await asyncio.gather(*(claim(f"h{i}") for i in range(4)))
    every = [i for c in claims for i in c]
    assert len(every) == len(set(every)) == 40


async def test_an_expired_claim_is_delivered_by_someone_else(migrated_db: Database) -> None:
    """A replica that claimed an entry and died does not lose it: the claim expires."""
    await _enqueue(migrated_db, _msg("lonely"))
    async with migrated_db.uow() as uow:
        assert len(await uow.outbox.claim_due(now=NOW, holder="dead", lease=30, limit=5)) == 1
        await uow.commit()
    async with migrated_db.uow() as uow:
        assert await uow.outbox.claim_due(now=NOW, holder="b", lease=30, limit=5) == []
        later = await uow.outbox.claim_due(
            now=NOW + timedelta(seconds=31), holder="b", lease=30, limit=5
        )
    assert [e.message.key for e in later] == ["lonely"]


async def test_of_many_concurrent_lease_takers_exactly_one_wins(migrated_db: Database) -> None:
    """One conditional upsert decides who holds a lease, under concurrency."""

    async def take(holder: str) -> bool:
        async with migrated_db.uow() as uow:
            won = await uow.leases.acquire("job:scan", holder=holder, now=NOW, ttl=60)
            await uow.commit()
        return won

    results = await asyncio.gather(*(take(f"r{i}") for i in range(8)))
    assert results.count(True) == 1


async def test_an_expired_lease_is_taken_over_and_a_released_one_is_free(
    migrated_db: Database,
) -> None:
    """A replica that died holding a lease does not block the job; a released lease is free."""
    async with migrated_db.uow() as uow:
        assert await uow.leases.acquire("job:scan", holder="a", now=NOW, ttl=60)
        assert not await uow.leases.acquire("job:scan", holder="b", now=NOW, ttl=60)
        assert await uow.leases.acquire("job:scan", holder="a", now=NOW, ttl=60)  # renewal
        assert await uow.leases.acquire(
            "job:scan", holder="b", now=NOW + timedelta(seconds=61), ttl=60
        )
        await uow.leases.release("job:scan", holder="a")  # not a's any more: no effect
        assert not await uow.leases.acquire(
            "job:scan", holder="c", now=NOW + timedelta(seconds=62), ttl=60
        )
        await uow.leases.release("job:scan", holder="b")
        assert await uow.leases.acquire(
            "job:scan", holder="c", now=NOW + timedelta(seconds=62), ttl=60
        )
        await uow.commit()


async def test_an_exclusive_job_runs_on_one_replica_per_interval(migrated_db: Database) -> None:
    """Two replicas scheduling the same exclusive job run it once per interval between them."""
    runs: list[str] = []

    def job_for(name: str) -> Job:
        async def run() -> None:
            runs.append(name)

        return Job("scan", every=0.4, run=run)

    replicas = [Scheduler(migrated_db, holder=f"replica-{i}") for i in range(2)]
    for i, scheduler in enumerate(replicas):
        scheduler.add(job_for(f"replica-{i}"))
    for scheduler in replicas:
        await scheduler.start()
    await asyncio.sleep(1.3)
    for scheduler in replicas:
        await scheduler.stop()

    # Three or four intervals passed; each ran at most once however many replicas there are.
    assert 2 <= len(runs) <= 4


async def test_a_job_whose_replica_died_is_run_by_another(migrated_db: Database) -> None:
    """A replica that dies holding the job's lease delays the job by at most one interval."""
    ran: list[str] = []

    async def run() -> None:
        ran.append("b")

    async with migrated_db.uow() as uow:  # replica a took the lease, then died
        await uow.leases.acquire("job:scan", holder="a", now=datetime.now(UTC), ttl=0.5)
        await uow.commit()
    survivor = Scheduler(migrated_db, holder="b")
    survivor.add(Job("scan", every=0.3, run=run))

    assert not await survivor.run_now("scan")
    await asyncio.sleep(0.6)
    assert await survivor.run_now("scan")
    assert ran == ["b"]
