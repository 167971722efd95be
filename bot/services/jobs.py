"""Periodic jobs inside `serve` and `socket` (the reconciler, expiry, scans, the weekly report),
run by one replica at a time where it matters.

An exclusive job runs only while this replica holds the lease `job:<name>` in the database
(`Leases.acquire`, one conditional upsert). The lease lasts one interval and is renewed while a
long run goes on; it is kept after the run, so replicas that wake later in the same interval skip
it. A replica that dies mid-run stops renewing, the lease expires, and the next replica takes the
job over at its next tick.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from bot.domain.records import Store

log = logging.getLogger("bot.jobs")


def replica_id() -> str:
    """This process's name among replicas: host, pid and a random suffix (≤ 64 characters)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class Job:
    """A periodic job. `every` is in seconds; `exclusive` jobs run on one replica per interval."""

    name: str
    every: float
    run: Callable[[], Awaitable[object]]
    exclusive: bool = True
    #: Wait this long after start before the first run (0: at once).
    first_delay: float = 0.0


class Scheduler:
    """Runs registered jobs on their intervals until stopped."""

    def __init__(
        self,
        store: Store,
        *,
        holder: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self.holder = holder or replica_id()
        self._clock = clock
        self.jobs: dict[str, Job] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        #: Completed runs per job name (for tests and /metrics).
        self.runs: dict[str, int] = {}

    def add(self, job: Job) -> None:
        """Register `job` (before `start`)."""
        if job.every <= 0:
            raise ValueError(f"job {job.name!r} needs a positive interval")
        self.jobs[job.name] = job

    @property
    def running(self) -> bool:
        """True between `start` and `stop`."""
        return bool(self._tasks)

    async def start(self) -> None:
        """Start one loop per job."""
        if self._tasks:
            return
        self._stopping.clear()
        for job in self.jobs.values():
            self._tasks.append(asyncio.create_task(self._loop(job), name=f"job:{job.name}"))

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - a bounded wait
        """Stop the loops, letting a running job finish within `timeout`, then release leases."""
        self._stopping.set()
        tasks, self._tasks = self._tasks, []
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for job in self.jobs.values():
            if job.exclusive:
                await self._release(job)

    async def run_now(self, name: str) -> bool:
        """Run `name` once now (if this replica gets its lease); True when it ran."""
        return await self._run(self.jobs[name])

    async def _loop(self, job: Job) -> None:
        delay = job.first_delay
        while not self._stopping.is_set():
            try:
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
                return
            except TimeoutError:
                pass
            started = asyncio.get_running_loop().time()
            await self._run(job)
            delay = max(0.0, job.every - (asyncio.get_running_loop().time() - started))

    async def _run(self, job: Job) -> bool:
        if job.exclusive and not await self._acquire(job):
            return False
        renew = (
            asyncio.create_task(self._renew(job), name=f"lease:{job.name}")
            if job.exclusive
            else None
        )
        try:
            await job.run()
        except Exception:
            log.exception("job failed", extra={"job": job.name})
        finally:
            if renew is not None:
                renew.cancel()
                await asyncio.gather(renew, return_exceptions=True)
        self.runs[job.name] = self.runs.get(job.name, 0) + 1
        return True

    def _ttl(self, job: Job) -> float:
        # Held for one interval (a little less, so the holder's own next tick can take it again).
        return max(1.0, job.every * 0.9)

    async def _acquire(self, job: Job) -> bool:
        try:
            async with self._store.uow() as uow:
                won = await uow.leases.acquire(
                    f"job:{job.name}", holder=self.holder, now=self._clock(), ttl=self._ttl(job)
                )
                await uow.commit()
        except Exception:
            log.warning("could not take the lease", extra={"job": job.name}, exc_info=True)
            return False
        return won

    async def _renew(self, job: Job) -> None:
        while True:
            await asyncio.sleep(self._ttl(job) / 3)
            if not await self._acquire(job):
                log.warning("lost the lease while running", extra={"job": job.name})
                return

    async def _release(self, job: Job) -> None:
        try:
            async with self._store.uow() as uow:
                await uow.leases.release(f"job:{job.name}", holder=self.holder)
                await uow.commit()
        except Exception:
            log.warning("could not release the lease", extra={"job": job.name}, exc_info=True)
