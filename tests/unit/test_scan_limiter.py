"""The scan's adaptive limiter on one provider's calls in flight (`AimdLimiter`): it halves on a
429 (once per `Retry-After`), grows back one call per window of successes, never lets more calls
in than its window, and holds new calls while a provider's `Retry-After` runs."""

from __future__ import annotations

import asyncio
import time

from bot.services.scan import AimdLimiter


class Clock:
    """A hand-moved monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_429_halves_the_window_once_per_retry_after_and_never_below_the_minimum() -> None:
    """A burst of 429s within one `Retry-After` halves the window once; later ones halve it
    again, down to the minimum and no further."""
    clock = Clock()
    limiter = AimdLimiter("stripe", initial=16, minimum=2, clock=clock)

    for _ in range(5):
        limiter.throttled(retry_after=3.0)
    assert limiter.window == 8 and limiter.decreases == 1

    clock.now += 2.9
    limiter.throttled(retry_after=3.0)
    assert limiter.window == 8  # still within the first Retry-After
    clock.now += 0.2
    limiter.throttled(retry_after=None)  # no header: a one-second cooldown
    assert limiter.window == 4
    for _ in range(5):
        clock.now += 1.1
        limiter.throttled()
    assert limiter.window == 2 and limiter.decreases == 7  # one per cooldown, even at the floor


def test_successes_grow_the_window_by_one_per_window_up_to_the_maximum() -> None:
    """Eight successes at window 8 add one call; growth stops at the maximum."""
    limiter = AimdLimiter("orb", initial=8, maximum=10)
    for _ in range(8):
        limiter.succeeded()
    assert 8.9 < limiter.window < 9.0
    for _ in range(100):
        limiter.succeeded()
    assert limiter.window == 10 and limiter.peak == 10


async def test_no_more_calls_in_flight_than_the_window() -> None:
    """With a window of 2, a third call waits until one of the first two is done."""
    limiter = AimdLimiter("metronome", initial=2, maximum=2)
    inside = 0
    most = 0
    release = asyncio.Event()

    async def call() -> None:
        nonlocal inside, most
        async with limiter:
            inside += 1
            most = max(most, inside)
            await release.wait()
            inside -= 1

    tasks = [asyncio.create_task(call()) for _ in range(5)]
    await asyncio.sleep(0.05)
    assert inside == 2 and limiter.in_flight == 2
    release.set()
    await asyncio.gather(*tasks)
    assert most == 2 and limiter.in_flight == 0


async def test_a_pause_holds_new_calls_until_the_retry_after_passed() -> None:
    """A call that ran out of retries on a 429 pauses the provider for its `Retry-After`: the
    next call starts only after it, though the window has room."""
    limiter = AimdLimiter("stripe", initial=8)
    limiter.throttled(retry_after=0.3, pause=True)
    started = time.monotonic()
    async with limiter:
        waited = time.monotonic() - started
    assert waited >= 0.25
    assert limiter.window == 4
