"""Time spent waiting in our own queues (rate pacing, connection limits), measured per scope,
so that a deadline meant for a provider is never spent waiting behind our own limits.

Adapters wrap each wait in `queued()`; a caller that bounds a provider's work (the lookup's
per-provider deadline) opens a scope with `measuring()` and extends its deadline by
`meter.seconds()`. The meter counts the union of the intervals in which at least one request of
the scope was waiting, so parallel waits are not counted twice. Context variables carry the
scope into every task the work spawns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar


class QueueMeter:
    """How long some request of one scope has been waiting in our own queue."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._waiting = 0
        self._since = 0.0
        self._total = 0.0

    def enter(self) -> None:
        """A request of this scope starts waiting."""
        if self._waiting == 0:
            self._since = self._clock()
        self._waiting += 1

    def leave(self) -> None:
        """A request of this scope stops waiting."""
        self._waiting -= 1
        if self._waiting == 0:
            self._total += self._clock() - self._since

    def seconds(self) -> float:
        """Seconds during which at least one request of the scope waited (so far)."""
        if self._waiting:
            return self._total + (self._clock() - self._since)
        return self._total


_METER: ContextVar[QueueMeter | None] = ContextVar("bt_queue_meter", default=None)


@contextmanager
def measuring() -> Iterator[QueueMeter]:
    """Open a scope whose queue waits are measured (nested scopes replace the outer one)."""
    meter = QueueMeter()
    token = _METER.set(meter)
    try:
        yield meter
    finally:
        _METER.reset(token)


@contextmanager
def queued() -> Iterator[None]:
    """Mark the body as waiting in our own queue (for the current scope, if any)."""
    meter = _METER.get()
    if meter is None:
        yield
        return
    meter.enter()
    try:
        yield
    finally:
        meter.leave()
