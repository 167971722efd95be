"""A fake OpenAI chat-completions server over real HTTP on 127.0.0.1, for tests.

Speaks the wire format of `POST /v1/chat/completions` (id, object "chat.completion", created,
model, choices[{index, message{role, content}, finish_reason}], usage), records every request,
and is scriptable: the reply (a string or a function of the request), error statuses with
OpenAI's error body, a delay, malformed JSON, a dropped connection. Queue one-off behaviours with
`script(...)`; set the defaults as attributes.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

Reply = str | Callable[[dict[str, Any]], str]


@dataclass
class Step:
    """One scripted answer: a status with an error body, a delay, malformed JSON, or a drop."""

    reply: Reply | None = None
    status: int = 200
    delay: float = 0.0
    malformed: bool = False
    drop: bool = False
    finish_reason: str = "stop"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class RecordedRequest:
    """A request the fake received: its JSON body and headers."""

    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def system(self) -> str:
        """The system message's content."""
        return str(next(m["content"] for m in self.body["messages"] if m["role"] == "system"))

    @property
    def user(self) -> str:
        """The user message's content."""
        return str(next(m["content"] for m in self.body["messages"] if m["role"] == "user"))


_ERRORS = {
    400: ("invalid_request_error", "Bad request."),
    401: ("invalid_request_error", "Incorrect API key provided."),
    429: ("rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", "The server had an error while processing your request."),
    503: ("server_error", "The engine is currently overloaded."),
}


class FakeOpenAI:
    """The fake server's state and script. `base_url` ends in `/v1`, as the SDK expects."""

    def __init__(self) -> None:
        self.reply: Reply = "All good."
        self.status = 200
        self.delay = 0.0
        self.malformed = False
        self.drop = False
        self.finish_reason = "stop"
        self.requests: list[RecordedRequest] = []
        self._steps: list[Step] = []
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def script(self, *steps: Step) -> None:
        """Queue answers used once each, in order, before falling back to the defaults."""
        self._steps.extend(steps)

    @property
    def last(self) -> RecordedRequest:
        """The most recent request."""
        return self.requests[-1]

    async def start(self) -> None:
        """Listen on 127.0.0.1 on a free port."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}/v1"

    async def close(self) -> None:
        """Wake any delayed handler and stop the server."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "invalid_request_error", "We could not parse the JSON body.")
        self.requests.append(RecordedRequest(body=body, headers=dict(request.headers)))
        step = self._steps.pop(0) if self._steps else self._default()
        if step.delay:
            # Wakes early when the fixture closes, so a slow answer never holds up teardown.
            with suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), step.delay)
        if step.drop:
            transport = request.transport
            if transport is not None:
                transport.abort()
            return web.Response(status=204)
        if step.status != 200:
            code, message = _ERRORS.get(step.status, ("server_error", "Error."))
            return _error(step.status, code, message, step.headers)
        if step.malformed:
            return web.Response(
                text='{"id": "chatcmpl-1", "choices": [', content_type="application/json"
            )
        reply = step.reply if step.reply is not None else self.reply
        content = reply(body) if callable(reply) else reply
        payload = {
            "id": f"chatcmpl-fake{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake-model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": step.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": len(json.dumps(body["messages"])) // 4,
                "completion_tokens": len(content or "") // 4,
                "total_tokens": (len(json.dumps(body["messages"])) + len(content or "")) // 4,
            },
        }
        return web.json_response(payload, headers=step.headers)

    def _default(self) -> Step:
        return Step(
            reply=self.reply,
            status=self.status,
            delay=self.delay,
            malformed=self.malformed,
            drop=self.drop,
            finish_reason=self.finish_reason,
        )


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": code, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def closed_port_url() -> str:
    """A `/v1` base URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@asynccontextmanager
async def running_fake_openai() -> AsyncIterator[FakeOpenAI]:
    """A started `FakeOpenAI`, closed on exit."""
    server = FakeOpenAI()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    """A fake OpenAI server on 127.0.0.1 for one test."""
    async with running_fake_openai() as server:
        yield server
