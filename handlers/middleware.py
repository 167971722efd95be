"""Global middleware: inject the dependencies into `context`, and drop Events API retries of
events already processed (Bolt does not deduplicate; keyed by team and event_id)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.response import BoltResponse

from bot.deps import Deps

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


def register(app: AsyncApp, deps: Deps) -> None:
    """Add the middleware to `app`."""

    @app.middleware
    async def inject_deps(
        context: dict[str, Any],
        next: Callable[[], Awaitable[None]],
    ) -> None:
        context["deps"] = deps
        await next()

    @app.middleware
    async def dedupe_events(
        body: dict[str, Any],
        next: Callable[[], Awaitable[None]],
    ) -> BoltResponse | None:
        if body.get("type") != "event_callback" or not body.get("event_id"):
            await next()
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
        if not first:
            deps.metrics.inc("billing_triage_slack_duplicate_events_total")
            log.info("duplicate event dropped", extra={"event_id": body["event_id"]})
            return BoltResponse(status=200, body="")
        await next()
        return None
