"""One scan per cluster, for real: two replica OS processes (`tests.support.scan_replica`, the
app with its periodic jobs) on one PostgreSQL database, scanning one shared provider process over
loopback and posting to one local Slack. The scheduled scan runs on one replica, both work its
pages (`FOR UPDATE SKIP LOCKED`), a replica killed mid-scan loses no account, and a dead
coordinator does not block the next scan."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import func, select

from bot.storage.db import Database
from bot.storage.migrate import upgrade
from bot.storage.tables import ScanAccountRow, ScanItemRow, ScanRunRow
from integrations.sandbox.labels import story_alerts
from integrations.sandbox.slack import LocalSlack
from integrations.sandbox.world import build_world

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
ONCALL = "C0ONCALL"
#: The planted stories and a few ordinary accounts (the provider process's world, at today).
ORDINARY = 8
_WORLD = build_world(ordinary_accounts=ORDINARY, population=False)
ACCOUNTS = len(_WORLD.accounts)
#: The accounts whose alerts on-call must hear about, once each.
STORY_ALERTS = set(story_alerts(_WORLD))
T = TypeVar("T")


async def _spawn(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", *args, env=env, cwd=ROOT, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _first_line(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    assert proc.stdout is not None and proc.stderr is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert line, (await proc.stderr.read()).decode()[-3000:]
    found: dict[str, Any] = json.loads(line)
    return found


@dataclass
class Replica:
    proc: asyncio.subprocess.Process
    holder: str


@dataclass
class Cluster:
    """The provider process, the replicas and the database they share."""

    db: Database
    slack: LocalSlack
    replicas: list[Replica]

    async def runs(self) -> list[ScanRunRow]:
        async with self.db.session_factory() as session:
            return list(await session.scalars(select(ScanRunRow).order_by(ScanRunRow.id)))

    async def items(self, run_id: int) -> list[ScanItemRow]:
        async with self.db.session_factory() as session:
            query = select(ScanItemRow).where(ScanItemRow.run_id == run_id)
            return list(await session.scalars(query.order_by(ScanItemRow.id)))

    async def scanned(self, run_id: int) -> tuple[int, int]:
        """(accounts claimed in the run, accounts the finished items counted)."""
        async with self.db.session_factory() as session:
            claimed = await session.scalar(
                select(func.count()).select_from(ScanAccountRow)
                .where(ScanAccountRow.run_id == run_id)
            )  # fmt: skip
            counted = await session.scalar(
                select(func.sum(ScanItemRow.accounts)).where(ScanItemRow.run_id == run_id)
            )
        return int(claimed or 0), int(counted or 0)

    def posts_naming(self, account: str) -> int:
        """Top-level on-call posts that mention `account` (a digest names several)."""
        return sum(
            1
            for c in self.slack.calls_to("chat.postMessage")
            if c.args.get("channel") == ONCALL
            and not c.args.get("thread_ts")
            and account in json.dumps(c.args.get("blocks"))
        )

    def posted_accounts(self) -> set[str]:
        return {a for a in STORY_ALERTS if self.posts_naming(a)}


async def _until(check: Callable[[], Awaitable[T | None]], timeout: float = 60.0) -> T:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s; last value {value!r}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def cluster_factory(
    postgres_database_url: str, local_slack: LocalSlack
) -> AsyncIterator[Callable[..., Awaitable[Cluster]]]:
    """Start the provider process and two replicas with short leases; stop them after."""
    procs: list[asyncio.subprocess.Process] = []
    await upgrade(postgres_database_url)
    db = Database(postgres_database_url)

    async def start(*, latency: float, scan_every: float, lease: float = 2.0) -> Cluster:
        provider = await _spawn(
            "tests.support.provider_process", "--ordinary", str(ORDINARY), "--no-population",
            "--latency", str(latency), env=dict(os.environ),
        )  # fmt: skip
        procs.append(provider)
        info = await _first_line(provider)
        env = {
            **os.environ, **info["env"], "DATABASE_URL": postgres_database_url,
            "AUTO_MIGRATE": "0", "SLACK_BOT_TOKEN": local_slack.token,
            "SLACK_API_URL": local_slack.base_url, "ONCALL_CHANNEL": ONCALL,
            "SCAN_INTERVAL_MINUTES": "60", "SCAN_PAGE_SIZE": "2",
            "SCAN_LEASE_SECONDS": str(lease), "STRIPE_RATE_LIMIT": "1000",
            "ORB_RATE_LIMIT": "1000", "METRONOME_RATE_LIMIT": "1000", "LOG_LEVEL": "WARNING",
        }  # fmt: skip
        args = ["tests.support.scan_replica", "--scan-every", str(scan_every)]
        spawned = [await _spawn(*args, "--worker-every", "0.2", env=env) for _ in range(2)]
        procs.extend(spawned)
        replicas = [Replica(p, (await _first_line(p))["holder"]) for p in spawned]
        scan_at = f"{time.time() + 0.5}\n".encode()
        for r in replicas:  # both schedulers tick at the same moment
            assert r.proc.stdin is not None
            r.proc.stdin.write(scan_at)
            await r.proc.stdin.drain()
        return Cluster(db, local_slack, replicas)

    try:
        yield start
    finally:
        for proc in reversed(procs):  # replicas are disposable: no graceful drain to wait for
            if proc.returncode is None:
                proc.kill() if proc is not procs[0] else proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.communicate(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await db.dispose()


async def test_two_replicas_scheduled_together_share_one_scan(
    cluster_factory: Callable[..., Awaitable[Cluster]],
) -> None:
    """Both replicas' schedulers fire at once: one scan run, whose pages both replicas work;
    every account is scanned exactly once and each alert reaches on-call once."""
    cluster = await cluster_factory(latency=0.05, scan_every=120)

    async def finished() -> list[ScanRunRow]:
        return [r for r in await cluster.runs() if r.status == "done"]

    [run] = await _until(finished)

    assert len(await cluster.runs()) == 1
    items = await cluster.items(run.id)
    assert all(i.status == "done" for i in items)
    assert {i.claimed_by for i in items} == {r.holder for r in cluster.replicas}
    assert await cluster.scanned(run.id) == (ACCOUNTS, ACCOUNTS)

    async def all_posted() -> bool:
        return cluster.posted_accounts() == STORY_ALERTS

    await _until(all_posted, timeout=30)
    await asyncio.sleep(1.2)  # the outbox posts one message a second: nothing more comes
    assert all(cluster.posts_naming(a) == 1 for a in STORY_ALERTS)


async def test_a_replica_killed_mid_scan_loses_no_account_and_alerts_once(
    cluster_factory: Callable[..., Awaitable[Cluster]],
) -> None:
    """SIGKILL the replica that is not coordinating while it holds a page: once its lease runs
    out the coordinator claims the page again, and the run completes with every account scanned
    once and no alert posted twice."""
    cluster = await cluster_factory(latency=0.2, scan_every=120)

    async def worker_holding() -> tuple[ScanRunRow, Replica, ScanItemRow] | None:
        runs = await cluster.runs()
        if not runs:
            return None
        run = runs[0]
        worker = next(r for r in cluster.replicas if r.holder != run.coordinator)
        held = [
            i for i in await cluster.items(run.id)
            if i.status == "claimed" and i.claimed_by == worker.holder
        ]  # fmt: skip
        return (run, worker, held[0]) if held else None

    run, worker, item = await _until(worker_holding)
    worker.proc.kill()
    await worker.proc.wait()

    async def finished() -> ScanRunRow | None:
        now = next(r for r in await cluster.runs() if r.id == run.id)
        return now if now.status == "done" else None

    done = await _until(finished)
    retried = next(i for i in await cluster.items(run.id) if i.id == item.id)
    assert retried.status == "done" and retried.attempts >= 2
    assert retried.claimed_by == done.coordinator
    assert await cluster.scanned(run.id) == (ACCOUNTS, ACCOUNTS)

    async def all_posted() -> bool:
        return cluster.posted_accounts() == STORY_ALERTS

    # The killed replica may have died delivering a post: the outbox hands it to the other
    # replica when its claim runs out (`handlers.delivery.CLAIM_LEASE`, 60 s).
    await _until(all_posted, timeout=80)
    await asyncio.sleep(1.2)
    assert all(cluster.posts_naming(a) == 1 for a in STORY_ALERTS)


async def test_a_dead_coordinator_does_not_block_the_next_scan(
    cluster_factory: Callable[..., Awaitable[Cluster]],
) -> None:
    """SIGKILL the coordinator mid-scan: the other replica's next scheduled scan takes the job's
    lease once it runs out, completes a run of its own, and closes the dead one as abandoned."""
    cluster = await cluster_factory(latency=0.15, scan_every=2, lease=1.0)

    async def started() -> ScanRunRow | None:
        runs = await cluster.runs()
        return runs[0] if runs and await cluster.items(runs[0].id) else None

    first = await _until(started)
    coordinator = next(r for r in cluster.replicas if r.holder == first.coordinator)
    survivor = next(r for r in cluster.replicas if r is not coordinator)
    coordinator.proc.kill()
    await coordinator.proc.wait()

    async def replaced() -> list[ScanRunRow]:
        runs = {r.id: r for r in await cluster.runs()}
        later = [
            r for r in runs.values()
            if r.id != first.id and r.status == "done" and r.coordinator == survivor.holder
        ]  # fmt: skip
        return later if later and runs[first.id].status == "abandoned" else []

    later = await _until(replaced)
    assert await cluster.scanned(later[0].id) == (ACCOUNTS, ACCOUNTS)
