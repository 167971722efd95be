"""Pacing providers by their request rate: queue time never counts against a provider's
deadline, 429s slow everyone down instead of failing, identical reads in flight are sent once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from bot.queueing import measuring
from integrations.http import ProviderHttp, RateLimiter, RetryPolicy
from integrations.sandbox.wire import WireRequest, WireResponse
from tests.support.fakeserver import FakeProviderServer


class Echo:
    """A provider that answers every request with its path and counts them."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float]] = []

    async def handle(self, request: WireRequest) -> WireResponse:
        self.seen.append((request.path, time.monotonic()))
        return WireResponse.of_json({"path": request.path, "query": list(request.query)})


@pytest_asyncio.fixture
async def echo() -> AsyncIterator[tuple[FakeProviderServer, Echo]]:
    """A loopback server answering every path."""
    router = Echo()
    async with FakeProviderServer(router) as server:
        yield server, router


def _http(server: FakeProviderServer, *, rate: float | None, deadline: float = 5.0) -> ProviderHttp:
    policy = RetryPolicy(deadline=deadline, backoff_base=0.01, backoff_max=0.05, max_attempts=6)
    return ProviderHttp(
        "stripe", base_url=server.url, headers={}, policy=policy, rate=rate, sleep=asyncio.sleep
    )


def test_the_limiter_spaces_requests_after_a_burst_and_backs_off_on_429() -> None:
    """First come first served at `rate` per second; a 429 halves the rate and pauses everyone."""
    now = [100.0]
    limiter = RateLimiter(10, burst=2, clock=lambda: now[0])
    waits = [round(limiter.reserve(), 3) for _ in range(5)]
    assert waits == [0.0, 0.0, 0.1, 0.2, 0.3]

    now[0] += 10  # quiet: the burst is available again
    limiter.throttle(retry_after=2.0)
    assert limiter.rate == 5 and limiter.throttled == 1
    assert limiter.reserve() == pytest.approx(2.0)  # nobody goes before Retry-After
    for _ in range(200):
        limiter.succeeded()
    assert limiter.rate == 10  # recovered, never above the configured rate


def test_429s_refused_together_halve_the_rate_once() -> None:
    """Twenty callers refused in the same second are one signal: the rate halves once (not
    down to the floor), all wait out the `Retry-After`, and a 429 after it halves again."""
    now = [100.0]
    limiter = RateLimiter(100, clock=lambda: now[0])
    for _ in range(20):
        limiter.throttle(retry_after=1.0)
    assert limiter.rate == 50 and limiter.throttled == 20
    assert limiter.reserve() == pytest.approx(1.0)
    now[0] += 1.5
    limiter.throttle(retry_after=None)
    assert limiter.rate == 25


async def test_queue_time_never_counts_against_the_provider_deadline(
    echo: tuple[FakeProviderServer, Echo],
) -> None:
    """120 reads paced at 50/s wait up to two seconds in our queue, well over the 1 s
    per-request deadline, yet none fails: the deadline is the provider's time, not our
    queue's. (The deadline leaves room for a busy machine's own slowness.)"""
    server, router = echo
    server.latency = 0.05
    http = _http(server, rate=50, deadline=1.0)
    try:
        with measuring() as meter:
            started = time.monotonic()
            results = await asyncio.gather(
                *(http.request("GET", f"/v1/things/{i}") for i in range(120))
            )
            elapsed = time.monotonic() - started
    finally:
        await http.aclose()
    assert len(results) == 120 and len(router.seen) == 120
    assert elapsed > 1.8  # (120 - burst 25) / 50 per second
    assert meter.seconds() > 1.0  # the scope saw the time spent in our own queue
    arrivals = sorted(at for _path, at in router.seen)
    # The provider saw them spread out (the first ones arrive late: they open connections).
    assert arrivals[-1] - arrivals[0] >= 1.4


async def test_a_429_with_retry_after_slows_every_caller_instead_of_failing(
    echo: tuple[FakeProviderServer, Echo],
) -> None:
    """Rate limited by the provider, paced callers wait Retry-After, slow down, and all succeed."""
    server, _router = echo
    server.fail(429, retry_after="0.3", times=3)
    http = _http(server, rate=50)
    try:
        results = await asyncio.gather(*(http.request("GET", f"/v1/x/{i}") for i in range(20)))
    finally:
        await http.aclose()
    assert len(results) == 20
    assert http.pacer is not None and http.pacer.throttled >= 1
    assert http.pacer.rate < 50


async def test_identical_reads_in_flight_are_sent_once_and_writes_never_merged(
    echo: tuple[FakeProviderServer, Echo],
) -> None:
    """Ten lookups asking for the same object at once cost one request; writes are each sent."""
    server, router = echo
    server.latency = 0.1
    http = _http(server, rate=None)
    try:
        same = await asyncio.gather(
            *(
                http.request("GET", "/v1/customers/cus_1", params={"expand[]": "x"})
                for _ in range(10)
            )
        )
        other = await http.request("GET", "/v1/customers/cus_1", params={"expand[]": "y"})
        writes = await asyncio.gather(
            *(
                http.request("POST", "/v1/refunds", form=[("amount", "5")],
                             idempotency_key=f"bt:REQ-{i}:refund")
                for i in range(2)
            )
        )  # fmt: skip
    finally:
        await http.aclose()
    paths = [p for p, _at in router.seen]
    assert paths.count("/v1/customers/cus_1") == 2  # one shared flight, one other query
    assert paths.count("/v1/refunds") == 2 and len(writes) == 2
    assert all(r == same[0] for r in same) and other != same[0]
    same[0]["path"] = "changed"  # callers own what they got
    assert same[1]["path"] == "/v1/customers/cus_1"


async def test_a_failed_shared_read_fails_every_caller_once(
    echo: tuple[FakeProviderServer, Echo],
) -> None:
    """When the shared request fails for good, each waiting caller gets the provider error."""
    server, _router = echo
    server.fail(404, times=1, body=b'{"error": {"message": "No such customer"}}')
    server.latency = 0.05
    http = _http(server, rate=None)
    try:
        outcomes = await asyncio.gather(
            *(http.request("GET", "/v1/customers/cus_gone") for _ in range(5)),
            return_exceptions=True,
        )
    finally:
        await http.aclose()
    assert all(type(o).__name__ == "ProviderNotFound" for o in outcomes)
