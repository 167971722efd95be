"""Time spent waiting in our own queues (rate pacing, connection limits), measured per scope,
so that a deadline meant for a provider is never spent waiting behind our own limits.

Adapters wrap each wait in `queued()`; a caller that bounds a provider's work (the lookup's
per-provider deadline) opens a scope with `measuring()` and extends its deadline by
`meter.seconds()`. The meter counts the union of the intervals in which at least one request of
the scope was waiting, so parallel waits are not counted twice. Context variables carry the
scope into every task the work spawns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")


class QueueMeter:
    """How long some request of one scope has been waiting in our own queue."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, *, parent: QueueMeter | None = None
    ) -> None:
        self._clock = clock
        #: The enclosing scope, which sees every wait of this one too.
        self._parent = parent
        self._waiting = 0
        self._since = 0.0
        self._total = 0.0

    def enter(self) -> None:
        """A request of this scope starts waiting."""
        if self._waiting == 0:
            self._since = self._clock()
        self._waiting += 1
        if self._parent is not None:
            self._parent.enter()

    def leave(self) -> None:
        """A request of this scope stops waiting."""
        self._waiting -= 1
        if self._waiting == 0:
            self._total += self._clock() - self._since
        if self._parent is not None:
            self._parent.leave()

    def seconds(self) -> float:
        """Seconds during which at least one request of the scope waited (so far)."""
        if self._waiting:
            return self._total + (self._clock() - self._since)
        return self._total


_METER: ContextVar[QueueMeter | None] = ContextVar("bt_queue_meter", default=None)


@contextmanager
def measuring() -> Iterator[QueueMeter]:
    """Open a scope whose queue waits are measured (an enclosing scope sees them too)."""
    meter = QueueMeter(parent=_METER.get())
    token = _METER.set(meter)
    try:
        yield meter
    finally:
        _METER.reset(token)


def queue_seconds() -> float:
    """Queue time measured so far in the current scope (0 outside any scope)."""
    meter = _METER.get()
    return meter.seconds() if meter is not None else 0.0


@contextmanager
def queued() -> Iterator[None]:
    """Mark the body as waiting in our own queue (for the current scope and those around it)."""
    meter = _METER.get()
    if meter is None:
        yield
        return
    meter.enter()
    try:
        yield
    finally:
        meter.leave()


async def within(
    work: Coroutine[Any, Any, T],
    budget: float,
    *,
    meter: QueueMeter,
    cap: float | None = None,
) -> T:
    """Await `work` for at most `budget` seconds of time NOT spent in our own queues (measured by
    `meter`, which `work` must run under), and never more than `cap` seconds in all. Raises
    `TimeoutError` (after cancelling `work`) when either runs out."""
    task = asyncio.ensure_future(work)
    started = time.monotonic()
    hard = started + (cap if cap is not None else max(budget * 4, budget + 30.0))
    try:
        while True:
            now = time.monotonic()
            left = min(started + budget + meter.seconds(), hard) - now
            if left <= 0:
                raise TimeoutError
            done, _ = await asyncio.wait({task}, timeout=left)
            if done:
                return task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
