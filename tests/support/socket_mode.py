"""A fake of Slack's side of Socket Mode, on 127.0.0.1: the `apps.connections.open` Web API method
and the WebSocket it hands out, plus envelope builders shaped like the ones Slack sends.

Wire format (slackapi/python-slack-sdk `slack_sdk/socket_mode/`, `tests/slack_sdk/socket_mode/
mock_socket_mode_server.py`; docs.slack.dev "Using Socket Mode"):

- `apps.connections.open`, called with the app-level `xapp-` token, answers
  `{"ok": true, "url": "wss://…/link/?ticket=…&app_id=…"}` (here `ws://127.0.0.1:<port>/link/…`);
- on connect the server sends `{"type": "hello", "num_connections", "debug_info",
  "connection_info": {"app_id"}}`;
- then envelopes `{"envelope_id", "type": "slash_commands"|"events_api"|"interactive", "payload",
  "accepts_response_payload"}`, events also with `"retry_attempt"` and `"retry_reason"` (0 and ""
  on a first delivery);
- the client acknowledges each with `{"envelope_id", "payload"?}` on the same socket; a slash
  command's `payload` is what the user sees.

The app's bot-token Web API calls (`chat.postMessage`, `response_url`) still go to `LocalSlack`;
this server answers only `apps.connections.open` and refuses every other method, so a test notices
if the Socket Mode client's Web API client is used for anything else.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import Callable
from typing import Any, Self
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

from tests.support.slack import API_APP_ID, event_body, slash_command_body

APP_TOKEN = "xapp-1-A0BILLING-0000-test"


class FakeSocketModeServer:
    """Slack's Socket Mode endpoint on 127.0.0.1:<random>: push envelopes, read the acks."""

    def __init__(self, *, app_token: str = APP_TOKEN, app_id: str = API_APP_ID) -> None:
        self.app_token = app_token
        self.app_id = app_id
        #: Tokens `apps.connections.open` was called with, in order.
        self.connections_opened: list[str] = []
        #: Every message the client sent over any socket (the acks), parsed, in order.
        self.received: list[dict[str, Any]] = []
        self._tickets: set[str] = set()
        self._sockets: list[web.WebSocketResponse] = []
        self._changed = asyncio.Condition()
        self._envelope_ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on 127.0.0.1 on a free port."""
        app = web.Application()
        app.router.add_post("/api/{method}", self._handle_api)
        app.router.add_get("/link/", self._handle_link)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Close any socket still open (close the client first, or it reconnects), then stop."""
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """The Web API base URL for the Socket Mode client's `AsyncWebClient(base_url=...)`."""
        if self._port is None:
            raise RuntimeError("FakeSocketModeServer is not started")
        return f"http://127.0.0.1:{self._port}/api/"

    @property
    def open_sockets(self) -> int:
        """WebSocket connections open now."""
        return sum(1 for ws in self._sockets if not ws.closed)

    # -- the test's side -----------------------------------------------------------------------

    async def wait_connected(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until a client holds an open socket (and has been sent `hello`)."""
        await self._wait(lambda: self.open_sockets > 0, timeout, "no Socket Mode connection")

    async def send(self, envelope: dict[str, Any]) -> str:
        """Deliver `envelope` over the open socket; return its `envelope_id`."""
        sockets = [ws for ws in self._sockets if not ws.closed]
        assert sockets, "no client is connected"
        envelope = dict(envelope)
        envelope.setdefault("envelope_id", f"env-{next(self._envelope_ids):04d}-{uuid.uuid4()}")
        # Slack sends each payload to exactly one of the app's connections (no broadcast).
        await sockets[-1].send_str(json.dumps(envelope))
        return str(envelope["envelope_id"])

    async def ack_for(self, envelope_id: str, timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109
        """Wait for the client's acknowledgement of `envelope_id` and return it."""
        await self._wait(
            lambda: self.acks_for(envelope_id) != [], timeout, f"no ack for {envelope_id}"
        )
        return self.acks_for(envelope_id)[0]

    async def deliver(self, envelope: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109
        """Send `envelope` and return the client's acknowledgement."""
        return await self.ack_for(await self.send(envelope), timeout)

    def acks_for(self, envelope_id: str) -> list[dict[str, Any]]:
        """Every message the client sent for `envelope_id` (more than one is a bug)."""
        return [m for m in self.received if m.get("envelope_id") == envelope_id]

    async def _wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    await self._changed.wait_for(predicate)
        except TimeoutError:
            raise AssertionError(f"{what} within {timeout}s; received: {self.received}") from None

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- HTTP and WebSocket --------------------------------------------------------------------

    async def _handle_api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        form = await request.post()
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip() or str(form.get("token") or "")
        if method != "apps.connections.open":
            # Only the app-level token's one method lives here; bot calls belong on LocalSlack.
            return web.json_response({"ok": False, "error": "unknown_method"})
        if not token:
            return web.json_response({"ok": False, "error": "not_authed"})
        if not token.startswith("xapp-"):
            return web.json_response({"ok": False, "error": "not_allowed_token_type"})
        if token != self.app_token:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        self.connections_opened.append(token)
        ticket = str(uuid.uuid4())
        self._tickets.add(ticket)
        url = f"ws://127.0.0.1:{self._port}/link/?ticket={ticket}&app_id={self.app_id}"
        return web.json_response({"ok": True, "url": url})

    async def _handle_link(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self._tickets:
            raise web.HTTPUnauthorized(text="unknown or used ticket")
        self._tickets.discard(ticket)  # a URL from apps.connections.open is good for one connect
        ws = web.WebSocketResponse()  # autoping on: the SDK's keep-alive pings get their pongs
        await ws.prepare(request)
        self._sockets.append(ws)
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": self.open_sockets,
                "debug_info": {
                    "host": "applink-local",
                    "build_number": 1,
                    "approximate_connection_time": 18060,
                },
                "connection_info": {"app_id": self.app_id},
            }
        )
        await self._notify()
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    self.received.append(json.loads(message.data))
                    await self._notify()
        finally:
            self._sockets.remove(ws)
            await self._notify()
        return ws


# ---------------------------------------------------------------------------------------------
# Envelopes


def slash_command_envelope(text: str, **fields: Any) -> dict[str, Any]:
    """A `slash_commands` envelope; `fields` as for `tests.support.slack.slash_command_body`.

    Over Socket Mode the payload is a JSON object of the same (string) fields the HTTP form has.
    """
    payload = dict(parse_qsl(slash_command_body(text, **fields), keep_blank_values=True))
    return {"type": "slash_commands", "payload": payload, "accepts_response_payload": True}


def events_api_envelope(
    event: dict[str, Any],
    *,
    event_id: str,
    retry_attempt: int = 0,
    retry_reason: str = "",
) -> dict[str, Any]:
    """An `events_api` envelope around an `event_callback`; a redelivery has `retry_attempt` ≥ 1."""
    return {
        "type": "events_api",
        "payload": json.loads(event_body(event, event_id=event_id, event_time=int(time.time()))),
        "accepts_response_payload": False,
        "retry_attempt": retry_attempt,
        "retry_reason": retry_reason,
    }
