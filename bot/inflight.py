"""Listener work that runs after `ack()`: spawned as tasks we keep references to, so shutdown can
drain them and the shell can wait for a command's full answer. (Bolt keeps no reference to the
work it starts, and the event loop keeps only weak ones.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any


class InFlight:
    """Running work: a set of tasks plus a counter with an idle event."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def count(self) -> int:
        """Work items running now."""
        return self._count

    @asynccontextmanager
    async def track(self) -> AsyncIterator[None]:
        """Count the body as running work."""
        self._count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._count -= 1
            if self._count == 0:
                self._idle.set()

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `work` in the background, counted until it ends."""
        self._count += 1
        self._idle.clear()
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._count -= 1
        if self._count == 0:
            self._idle.set()
        if not task.cancelled() and task.exception() is not None:
            # Work is wrapped by handlers.errors.guarded; anything here escaped it.
            import logging

            logging.getLogger("bot.inflight").error(
                "background work failed", exc_info=task.exception()
            )

    async def wait_idle(self, timeout: float) -> bool:  # noqa: ASYNC109 - a wait, not an I/O call
        """Wait until nothing runs; False if `timeout` passed first."""
        await asyncio.sleep(0)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self._idle.wait()
                    await asyncio.sleep(0)
                    if self._idle.is_set():
                        return True
        except TimeoutError:
            return False
