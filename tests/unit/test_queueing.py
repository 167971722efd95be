"""Queue time is measured per scope, counted once for parallel waits, seen by enclosing scopes,
and extends a provider's budget without letting work run forever."""

from __future__ import annotations

import asyncio

import pytest

from bot.queueing import QueueMeter, measuring, queue_seconds, queued, within


def test_parallel_waits_count_once_and_reach_the_enclosing_scope() -> None:
    """Two requests waiting at the same time are one interval of waiting, for both scopes."""
    now = [0.0]
    outer = QueueMeter(lambda: now[0])
    inner = QueueMeter(lambda: now[0], parent=outer)
    inner.enter()
    now[0] = 1.0
    inner.enter()
    now[0] = 2.0
    inner.leave()
    now[0] = 3.0
    inner.leave()
    now[0] = 10.0
    assert inner.seconds() == 3.0
    assert outer.seconds() == 3.0


async def test_a_budget_excludes_time_spent_in_our_own_queue() -> None:
    """Work that waited 0.3 s in our queue and then ran 0.15 s fits a 0.2 s budget."""

    async def work() -> str:
        with queued():
            await asyncio.sleep(0.3)
        await asyncio.sleep(0.15)
        return "done"

    with measuring() as meter:
        assert await within(work(), 0.2, meter=meter) == "done"
        assert queue_seconds() >= 0.29


async def test_work_over_its_own_budget_or_the_cap_is_cancelled() -> None:
    """Provider time over the budget times out; so does endless queueing, at the cap."""
    cancelled: list[str] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append("slow")
            raise

    async def stuck() -> None:
        with queued():
            await asyncio.sleep(5)

    with measuring() as meter, pytest.raises(TimeoutError):
        await within(slow(), 0.05, meter=meter)
    with measuring() as meter, pytest.raises(TimeoutError):
        await within(stuck(), 0.05, meter=meter, cap=0.2)
    assert cancelled == ["slow"]
