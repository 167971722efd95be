"""The long-running processes: HTTP mode (`serve`) and Socket Mode (`socket`), each with a graceful
shutdown on SIGINT/SIGTERM that stops taking work, drains running listener work and closes
every client."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from typing import Any

from aiohttp import web
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot.app import deps_of, shutdown, startup
from bot.errors import ConfigError
from handlers.web import build_web_app

log = logging.getLogger("bot.server")


def settle_heap() -> None:
    """Move everything alive after start-up (modules, the sandbox index, settings, the app) out
    of the garbage collector's sight (`gc.freeze`): a long-running server's collections then
    scan only what requests allocate, instead of walking the whole start-up heap again and
    again, which showed as ack-latency spikes under load."""
    gc.collect()
    gc.freeze()


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
        settle_heap()
        self._runner = web.AppRunner(
            build_web_app(self.app, deps_of(self.app)), access_log=None, shutdown_timeout=5
        )
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
