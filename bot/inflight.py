"""Tracks listener work still running after `ack()`, so shutdown can drain it and the shell can
wait for a command's full answer. Bolt keeps no reference to the tasks it starts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class InFlight:
    """A counter of running work with an idle event."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()

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

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing runs; False if `timeout` passed first."""
        # Yield once so work scheduled just before (Bolt's ensure_future) gets to start.
        await asyncio.sleep(0)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self._idle.wait()
                    await asyncio.sleep(0.01)
                    if self._idle.is_set():
                        return True
        except TimeoutError:
            return False
