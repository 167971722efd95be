"""The web routes of HTTP mode: Bolt at `POST /slack/events`, `GET /healthz`, `GET /metrics`
(the process that serves them is `bot.server`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from slack_bolt.app.async_server import AsyncSlackAppServer
from slack_bolt.async_app import AsyncApp

from bot.deps import Deps
from handlers import zendesk_webhook
from handlers.webhooks import add_webhook_routes

log = logging.getLogger("handlers.web")

SLACK_PATH = "/slack/events"


def build_web_app(app: AsyncApp, deps: Deps) -> web.Application:
    """The aiohttp application serving Slack, health and metrics."""
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

    async def healthz(request: web.Request) -> web.Response:
        # Exactly {"ok": true} while all is well (the contract); Slack deliveries that failed
        # for good are added when there are any, and always with ?verbose=1.
        ok = await deps.database.ping()
        body: dict[str, object] = {"ok": ok}
        if ok and deps.delivery is not None:
            try:
                delivery = await deps.delivery.health()
            except Exception:  # health details must never turn a healthy answer into an error
                log.warning("could not read the outbox for /healthz", exc_info=True)
            else:
                if delivery.get("failed") or request.query.get("verbose") in ("1", "true"):
                    body["slack_delivery"] = delivery
        return web.json_response(body, status=200 if ok else 503)

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(text=deps.metrics.render(), content_type="text/plain", charset="utf-8")

    web_app = web.Application(middlewares=[timing], client_max_size=1024 * 1024)
    web_app.router.add_post(SLACK_PATH, bolt_server.handle_post_requests)
    web_app.router.add_get("/healthz", healthz)
    web_app.router.add_get("/metrics", metrics)
    zendesk_webhook.add_routes(web_app, deps)
    add_webhook_routes(web_app, deps)
    return web_app
