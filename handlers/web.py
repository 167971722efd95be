"""HTTP mode: one aiohttp server with Bolt at `POST /slack/events`, `GET /healthz`, `GET /metrics`;
graceful shutdown drains running listener work. Socket Mode runner for development."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from slack_bolt.app.async_server import AsyncSlackAppServer
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot.app import deps_of, shutdown, startup
from bot.errors import ConfigError

log = logging.getLogger("handlers.web")

SLACK_PATH = "/slack/events"


def build_web_app(app: AsyncApp) -> web.Application:
    """The aiohttp application serving Slack, health and metrics."""
    deps = deps_of(app)
    bolt_server = AsyncSlackAppServer(port=0, path=SLACK_PATH, app=app)

    @web.middleware
    async def timing(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        started = time.perf_counter()
        response = await handler(request)
        if request.path == SLACK_PATH:
            deps.metrics.observe_ack(time.perf_counter() - started)
            deps.metrics.inc("billing_triage_slack_requests_total", status=str(response.status))
        return response

    async def healthz(_request: web.Request) -> web.Response:
        ok = await deps.database.ping()
        return web.json_response({"ok": ok}, status=200 if ok else 503)

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(text=deps.metrics.render(), content_type="text/plain", charset="utf-8")

    web_app = web.Application(middlewares=[timing], client_max_size=1024 * 1024)
    web_app.router.add_post(SLACK_PATH, bolt_server.handle_post_requests)
    web_app.router.add_get("/healthz", healthz)
    web_app.router.add_get("/metrics", metrics)
    return web_app


class HttpServer:
    """The running HTTP mode: start, then `stop()` drains and closes everything."""

    def __init__(self, app: AsyncApp, *, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Migrate (unless disabled), bind and serve."""
        await startup(self.app)
        self._runner = web.AppRunner(build_web_app(self.app), access_log=None, shutdown_timeout=5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if self.port == 0 and server is not None:
            sockets = getattr(server, "sockets", None) or []
            self.port = int(sockets[0].getsockname()[1])
        log.info("serving", extra={"host": self.host, "port": self.port})

    async def stop(self) -> None:
        """Stop accepting requests, let running work finish, close clients."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await shutdown(self.app)


async def _wait_for_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_forever(app: AsyncApp, *, host: str, port: int) -> None:
    """Run HTTP mode until SIGINT/SIGTERM, then shut down gracefully."""
    server = HttpServer(app, host=host, port=port)
    await server.start()
    try:
        await _wait_for_signal()
    finally:
        log.info("shutting down")
        await server.stop()


class SocketModeRunner:
    """The running Socket Mode: `start()` connects, `stop()` disconnects, drains and closes."""

    def __init__(
        self, app: AsyncApp, app_token: str, *, web_client: AsyncWebClient | None = None
    ) -> None:
        self.app = app
        self.app_token = app_token
        self.web_client = web_client
        self.handler: Any = None

    async def start(self) -> None:
        """Migrate, get a socket URL (a refused token is a configuration error), connect."""
        from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
        from slack_sdk.errors import SlackApiError

        await startup(self.app)
        handler = AsyncSocketModeHandler(self.app, self.app_token, web_client=self.web_client)
        try:
            # connect() would retry a refused apps.connections.open forever; ask once first.
            handler.client.wss_uri = await handler.client.issue_new_wss_url()
        except SlackApiError as exc:
            await handler.close_async()  # type: ignore[no-untyped-call]
            await shutdown(self.app)
            error = exc.response.get("error") if exc.response is not None else "refused"
            raise ConfigError(f"SLACK_APP_TOKEN was refused by Slack: {error}") from None
        self.handler = handler
        await handler.connect_async()  # type: ignore[no-untyped-call]
        log.info("connected to Slack in Socket Mode")

    async def stop(self) -> None:
        """Disconnect, let running work finish, close clients."""
        if self.handler is not None:
            await self.handler.close_async()
            self.handler = None
        await shutdown(self.app)


async def socket_forever(app: AsyncApp, app_token: str) -> None:
    """Run Socket Mode until SIGINT/SIGTERM."""
    runner = SocketModeRunner(app, app_token)
    await runner.start()
    try:
        await _wait_for_signal()
    finally:
        await runner.stop()
