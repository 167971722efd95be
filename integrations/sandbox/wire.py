"""Wire-level request/response types for the sandbox servers, and the in-process httpx transport.

A sandbox server is a `WireRouter`: it answers one provider's HTTP API from the sandbox world. At
run time the real provider clients reach it through `RouterTransport` (no sockets); in the tests
the same router is served over real loopback HTTP with scripted faults.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import httpx


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        # Integral amounts as ints; others as floats whose shortest repr is the same digits.
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(obj: Any) -> bytes:
    """JSON bytes for a provider body (Decimal → JSON number)."""
    return json.dumps(obj, default=_json_default, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class WireRequest:
    """An HTTP request as a router sees it. `path` is the full URL path (e.g. `/v1/customers`)."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""

    def q(self, name: str) -> str | None:
        """First query value of `name` (brackets may arrive raw or percent-encoded)."""
        return next((v for k, v in self.query if k == name), None)

    def q_all(self, name: str) -> list[str]:
        """All query values of `name`."""
        return [v for k, v in self.query if k == name]

    def form(self) -> list[tuple[str, str]]:
        """Form-encoded body pairs (Stripe)."""
        return parse_qsl(self.body.decode(), keep_blank_values=True)

    def json(self) -> Any:
        """JSON body (Orb, Metronome); `{}` when empty."""
        return json.loads(self.body, parse_float=Decimal) if self.body else {}


@dataclass(frozen=True, slots=True)
class WireResponse:
    """An HTTP response from a router."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of_json(
        cls, obj: Any, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> WireResponse:
        """A JSON response."""
        merged = {"content-type": "application/json", **(headers or {})}
        return cls(status=status, body=dumps(obj), headers=merged)


class WireRouter(Protocol):
    """A provider API served from the sandbox world."""

    async def handle(self, request: WireRequest) -> WireResponse:
        """Answer one request."""
        ...


def wire_request_from_url(
    method: str, url: str, headers: Mapping[str, str], body: bytes
) -> WireRequest:
    """Build a `WireRequest` from a raw URL (query parsed, header names lower-cased)."""
    parts = urlsplit(url)
    return WireRequest(
        method=method.upper(),
        path=parts.path or "/",
        query=tuple(parse_qsl(parts.query, keep_blank_values=True)),
        headers={k.lower(): v for k, v in headers.items()},
        body=body,
    )


class RouterTransport(httpx.AsyncBaseTransport):
    """An httpx transport that answers from a `WireRouter` in process."""

    def __init__(self, router: WireRouter) -> None:
        self._router = router

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Route the request to the sandbox server."""
        body = await request.aread()
        wire = wire_request_from_url(request.method, str(request.url), request.headers, body)
        answer = await self._router.handle(wire)
        return httpx.Response(answer.status, headers=dict(answer.headers), content=answer.body)
