"""The one global middleware: inject the dependencies into `context`, drop Events API retries of
events already processed (Bolt does not deduplicate; keyed by team and event_id), and refuse
everyone outside VIEWERS (`handlers.access`), for every kind of request."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.middleware.async_middleware import AsyncMiddleware
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse

from bot.deps import Deps
from handlers.access import refuse_non_viewer

log = logging.getLogger("handlers.middleware")


#: Processed event IDs are kept this long (Slack retries within minutes), pruned every N events.
KEEP_EVENTS = timedelta(days=2)
PRUNE_EVERY = 500


async def _prune(deps: Deps) -> None:
    """Drop processed-event IDs older than KEEP_EVENTS (best effort, off the ack path)."""
    try:
        async with deps.database.uow() as uow:
            removed = await uow.events.prune(datetime.now(UTC) - KEEP_EVENTS)
            await uow.commit()
        log.info("pruned processed events", extra={"removed": removed})
    except Exception:
        log.warning("pruning processed events failed", exc_info=True)


async def _duplicate(deps: Deps, body: dict[str, Any]) -> BoltResponse | None:
    """The answer for an Events API delivery already processed (a retry), else None."""
    if body.get("type") != "event_callback" or not body.get("event_id"):
        return None
    source = f"slack:{body.get('team_id') or '-'}"
    try:
        async with deps.database.uow() as uow:
            first = await uow.events.mark_processed(source, str(body["event_id"]))
            await uow.commit()
    except Exception:
        # Fail open: answering twice beats losing a mention when the database hiccups.
        log.warning("event dedupe unavailable", exc_info=True)
        first = True
    deps.metrics.inc("billing_triage_slack_events_total")
    seen = deps.metrics.value("billing_triage_slack_events_total")
    if int(seen) % PRUNE_EVERY == 0:
        deps.inflight.spawn(_prune(deps))
    if first:
        return None
    deps.metrics.inc("billing_triage_slack_duplicate_events_total")
    log.info("duplicate event dropped", extra={"event_id": body["event_id"]})
    return BoltResponse(status=200, body="")


class EdgeMiddleware(AsyncMiddleware):
    """Dependencies into the context, event retries dropped, non-viewers refused.

    One class-based middleware rather than one decorated function per concern: Bolt builds a
    function middleware's keyword arguments on every request, which measured as the costliest
    step of an ack; a class's `async_process` is called as it is."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    async def async_process(
        self,
        *,
        req: AsyncBoltRequest,
        resp: BoltResponse,
        next: Callable[[], Awaitable[BoltResponse]],
    ) -> BoltResponse:
        """Answer retries and refusals here; hand everything else on."""
        deps = self.deps
        req.context["deps"] = deps
        answered = await _duplicate(deps, req.body)
        if answered is None:
            answered = await refuse_non_viewer(deps, req.body, req.context.client)
        if answered is not None:
            return answered
        return await next()


def register(app: AsyncApp, deps: Deps) -> None:
    """Add the one global middleware to `app`."""
    app.middleware(EdgeMiddleware(deps))
