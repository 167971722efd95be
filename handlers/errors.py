"""The one error handler: known errors become short ephemeral text; anything else becomes
"something went wrong (ref …)" with the reference and traceback only in the log."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from bot.deps import Deps
from bot.errors import BotError, ProviderAuthError, ProviderError
from handlers import views

log = logging.getLogger("handlers.errors")


def reply_for(error: BaseException) -> tuple[views.Reply, str | None]:
    """The reply for `error`, and the reference when it was unknown."""
    if isinstance(error, ProviderAuthError) and error.provider == "zendesk":
        # A wrong token does not get better in a minute: say what to fix instead.
        return views.error_reply(f"{error.message}."), None
    if isinstance(error, ProviderError):
        return views.error_reply(f"{error.message}. Try again in a minute."), None
    if isinstance(error, BotError):
        return views.error_reply(error.message), None
    ref = secrets.token_hex(3)
    return views.unknown_error_reply(ref), ref


def note(error: BaseException, deps: Deps) -> views.Reply:
    """Record `error` (metrics, log, outcome) and return what to tell the user."""
    deps.observer.errors.append(error)
    reply, ref = reply_for(error)
    if ref is not None:
        deps.metrics.inc("billing_triage_errors_total", kind="unknown")
        log.error("unhandled error ref=%s", ref, exc_info=error, extra={"ref": ref})
    else:
        deps.metrics.inc("billing_triage_errors_total", kind=getattr(error, "code", "bot"))
        log.info("user-facing error", extra={"code": getattr(error, "code", "")})
    return reply


async def report(
    error: BaseException,
    *,
    deps: Deps,
    body: dict[str, Any],
    context: dict[str, Any],
    client: AsyncWebClient,
    respond: AsyncRespond | None,
) -> None:
    """Tell the user about `error` (known: its message; unknown: a reference in the log)."""
    reply = note(error, deps)
    try:
        await _deliver(reply, body, context, client, respond)
    except Exception:
        log.exception("could not deliver the error message")


@asynccontextmanager
async def guarded(
    deps: Deps,
    *,
    body: dict[str, Any],
    context: dict[str, Any],
    client: AsyncWebClient,
    respond: AsyncRespond | None,
) -> AsyncIterator[None]:
    """Count the body as running work and report any error it raises to the user."""
    async with deps.inflight.track():
        try:
            yield
        except Exception as error:
            await report(
                error, deps=deps, body=body, context=context, client=client, respond=respond
            )


def after_ack(
    deps: Deps,
    work: Callable[[], Awaitable[None]],
    *,
    body: dict[str, Any],
    context: dict[str, Any],
    client: AsyncWebClient,
    respond: AsyncRespond | None,
) -> None:
    """Run a listener's slow part in the background once Slack has its ack.

    The app runs with `process_before_response=True`, so Bolt answers Slack as soon as the
    listener returns; the work goes on as a task we hold (drained on shutdown), and any
    error in it is reported to the user like every other error.
    """

    async def run() -> None:
        async with guarded(deps, body=body, context=context, client=client, respond=respond):
            await work()

    deps.inflight.spawn(run())


def register(app: AsyncApp, deps: Deps) -> None:
    """Register the `@app.error` handler for errors that escape a listener or middleware."""

    @app.error
    async def handle_errors(
        error: BaseException,
        body: dict[str, Any],
        context: dict[str, Any],
        client: AsyncWebClient,
        respond: AsyncRespond | None,
    ) -> None:
        await report(error, deps=deps, body=body, context=context, client=client, respond=respond)


async def _deliver(
    reply: views.Reply,
    body: dict[str, Any],
    context: dict[str, Any],
    client: AsyncWebClient,
    respond: AsyncRespond | None,
) -> None:
    """Say it where the request came from: response_url, else the mention's thread."""
    if respond is not None:
        await respond(
            text=reply.text,
            blocks=reply.blocks,
            response_type="ephemeral",
            # Replace our own "Looking up…" message; never a shared message with buttons.
            replace_original=bool(context.get("progress_posted")),
        )
        return
    event = body.get("event") or {}
    channel = event.get("channel")
    if channel:
        await client.chat_postMessage(
            channel=channel,
            text=reply.text,
            blocks=reply.blocks,
            thread_ts=event.get("thread_ts") or event.get("ts"),
        )
