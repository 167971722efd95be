"""Serve a sandbox `WireRouter` over real loopback HTTP, with scripted faults.

Faults: 429 with or without `Retry-After`, 5xx, slow responses, malformed JSON, hangs (timeouts),
connection drops, and a fixed latency added to every request (for benchmarks).

A fault applies before the router sees the request (the provider did nothing), or with
`after=True` once the router has answered (the provider did it, then the client sees a dropped
connection, a hang, a status or a malformed body instead): "the provider accepted the refund, we
never saw the answer". `method` narrows a fault to one HTTP method (e.g. only the POST write).
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

from integrations.sandbox.wire import WireRequest, WireResponse, WireRouter

FaultKind = Literal["status", "slow", "malformed", "hang", "drop"]


@dataclass
class Fault:
    """One scripted fault. `times=None` means forever; `path` is a regex matched on the path."""

    kind: FaultKind
    status: int = 500
    body: bytes = b'{"error": "scripted fault"}'
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    path: str | None = None
    times: int | None = 1
    #: Apply after the router has handled the request (the write happened) instead of before.
    after: bool = False
    method: str | None = None

    def matches(self, path: str, method: str | None = None, *, after: bool = False) -> bool:
        """True when this fault applies to `path` (and `method`) at this stage."""
        if self.after != after:
            return False
        if self.method is not None and method is not None and self.method.upper() != method:
            return False
        return self.path is None or re.search(self.path, path) is not None


@dataclass(frozen=True)
class Seen:
    """A request the server received."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    headers: dict[str, str]
    body: bytes


class FakeProviderServer:
    """A provider API on 127.0.0.1:<random port> answering from a router."""

    def __init__(
        self,
        router: WireRouter,
        *,
        latency: float = 0.0,
        rate_limit: float | None = None,
        record: bool = True,
    ) -> None:
        self.router = router
        self.latency = latency
        #: Requests per second allowed (a token bucket holding one second's worth); above it
        #: the server answers 429 with `Retry-After: 1`, as providers do. None: unlimited.
        self.rate_limit = rate_limit
        #: Keep every request in `requests` (off for long benchmarks: memory).
        self.record = record
        self._tokens = rate_limit or 0.0
        self._refilled = time.monotonic()
        #: Requests answered 429 by the rate limit, and requests let through.
        self.limited = 0
        self.served = 0
        self.faults: list[Fault] = []
        self.requests: list[Seen] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:54321`."""
        return f"http://127.0.0.1:{self.port}"

    def add_fault(self, fault: Fault) -> Fault:
        """Script a fault (applied in order, before the router answers)."""
        self.faults.append(fault)
        return fault

    def fail(self, status: int, *, retry_after: str | None = None, times: int | None = 1,
             path: str | None = None, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> Fault:  # fmt: skip
        """Shortcut: answer `status` (with an optional `Retry-After`)."""
        hdrs = dict(headers or {})
        if retry_after is not None:
            hdrs["Retry-After"] = retry_after
        return self.add_fault(
            Fault("status", status=status, headers=hdrs, times=times, path=path,
                  body=body if body is not None else b'{"error": "scripted fault"}')
        )  # fmt: skip

    def fail_after(
        self,
        kind: FaultKind,
        *,
        status: int = 500,
        path: str | None = None,
        method: str | None = "POST",
        times: int | None = 1,
    ) -> Fault:
        """Shortcut: let the router handle the request (a write happens), then `kind` instead
        of its answer (`drop`, `hang`, `status`, `malformed`)."""
        return self.add_fault(
            Fault(kind, status=status, path=path, method=method, times=times, after=True)
        )

    def requests_to(self, path: str, method: str = "POST") -> list[Seen]:
        """The requests the server received for `path` (a regex) with `method`."""
        return [r for r in self.requests if r.method == method and re.search(path, r.path)]

    def clear_faults(self) -> None:
        """Remove every scripted fault."""
        self.faults.clear()

    async def start(self) -> None:
        """Bind to a random loopback port and serve."""
        app = web.Application(client_max_size=10 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeProviderServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _take_token(self) -> bool:
        assert self.rate_limit is not None
        now = time.monotonic()
        self._tokens = min(self.rate_limit, self._tokens + (now - self._refilled) * self.rate_limit)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _take_fault(self, path: str, method: str, *, after: bool = False) -> Fault | None:
        for fault in self.faults:
            if fault.matches(path, method, after=after):
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                return fault
        return None

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        query = tuple((k, v) for k, v in request.query.items())
        if self.record:
            self.requests.append(Seen(request.method, request.path, query, headers, body))
        if self.rate_limit is not None and not self._take_token():
            self.limited += 1
            return web.Response(
                status=429,
                body=b'{"error": {"type": "rate_limit_error", "message": "Too many requests"}}',
                headers={"Content-Type": "application/json", "Retry-After": "1"},
            )
        self.served += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        fault = self._take_fault(request.path, request.method)
        if fault is not None:
            faulted = await self._apply(fault, request)
            if faulted is not None:
                return faulted
        wire = WireRequest(
            method=request.method,
            path=request.path,
            query=query,
            headers=headers,
            body=body,
        )
        answer: WireResponse = await self.router.handle(wire)
        fault = self._take_fault(request.path, request.method, after=True)
        if fault is not None:
            faulted = await self._apply(fault, request)
            if faulted is not None:
                return faulted
        return web.Response(status=answer.status, body=answer.body, headers=dict(answer.headers))

    @staticmethod
    async def _apply(fault: Fault, request: web.Request) -> web.StreamResponse | None:
        """What `fault` answers instead (None: `slow`, which only delays)."""
        if fault.kind == "hang":
            await asyncio.sleep(3600)
        if fault.kind == "drop":
            transport = request.transport
            if transport is not None:
                transport.close()
            return web.Response(status=500)
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay)
            return None
        if fault.kind == "malformed":
            return web.Response(
                status=200, body=b'{"data": [ {"id": ', content_type="application/json"
            )
        return web.Response(status=fault.status, body=fault.body, headers={
            "Content-Type": "application/json", **fault.headers})  # fmt: skip
