"""The outbox worker: delivers the durable outgoing Slack messages (approval messages, decisions,
DMs, alerts, triage cards, reports) that services enqueue in the same transaction as the state
change they announce.

Delivery is at least once and never loses a message: an entry stays `pending` until Slack has
accepted it. A 429 waits for Slack's `Retry-After`; other transient faults back off
exponentially; permanent errors (`not_in_channel`, `channel_not_found`, `token_revoked`,
`invalid_auth`, …) mark the entry `failed`, are logged once, counted, and shown on `/healthz`.
Messages to one channel are paced (about one per second, Slack's posting limit); entries naming
the same message (`ref`) go out in order. Renderers registered here build text and blocks at
delivery time from current state; digest renderers merge a burst of entries sharing a
`digest_key` into one message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.domain.records import (
    DigestRenderer,
    MessageRenderer,
    OutboxEntry,
    PostedMessage,
    RenderedMessage,
    SkipMessage,
    Store,
)
from bot.domain.retry import parse_retry_after
from bot.metrics import Metrics

log = logging.getLogger("handlers.delivery")

#: Slack errors that no retry can fix: the entry fails and is shown on /healthz.
PERMANENT_ERRORS = frozenset(
    {
        "not_in_channel", "channel_not_found", "is_archived", "token_revoked", "invalid_auth",
        "account_inactive", "not_authed", "missing_scope", "no_permission", "user_not_found",
        "cannot_dm_bot", "invalid_blocks", "invalid_blocks_format", "msg_too_long",
        "msg_blocks_too_long", "message_not_found", "cant_update_message", "edit_window_closed",
        "team_access_not_granted", "restricted_action", "invalid_arguments",
    }
)  # fmt: skip
MAX_ATTEMPTS = 12  # transient faults: about an hour of exponential backoff capped at 5 minutes
BACKOFF_CAP = 300.0
CLAIM_LEASE = 60.0
BATCH = 20
#: Channels (pacing) and error/channel pairs (log once) one process remembers at most.
MAX_TRACKED = 2000


Rendered = RenderedMessage
Skip = SkipMessage


@dataclass
class _Digest:
    render: DigestRenderer
    min_batch: int


class Delivery:
    """The outbox worker. `start()` runs it in the background; `drain()` delivers what is due."""

    def __init__(
        self,
        store: Store,
        client: AsyncWebClient,
        *,
        metrics: Metrics,
        holder: str,
        poll: float = 2.0,
        pace: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._client = client
        self._metrics = metrics
        self._holder = holder
        self._poll = poll
        self._pace = pace
        self._clock = clock
        self._renderers: dict[str, MessageRenderer] = {}
        self._digests: dict[str, _Digest] = {}
        self._last_post: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: Permanent failures seen by this process: error code -> count (also in /metrics).
        self.permanent_failures: dict[str, int] = {}
        self._logged: set[str] = set()

    # -- registration ------------------------------------------------------------------------

    def register_renderer(self, name: str, render: MessageRenderer) -> None:
        """Build messages whose entry names `render=name`."""
        self._renderers[name] = render

    def register_digest(self, prefix: str, render: DigestRenderer, *, min_batch: int = 3) -> None:
        """Merge `min_batch` or more due entries whose `digest_key` starts with `prefix`."""
        self._digests[prefix] = _Digest(render, min_batch)

    # -- running -----------------------------------------------------------------------------

    def wake(self) -> None:
        """Something was enqueued: deliver soon."""
        self._wake.set()

    async def start(self) -> None:
        """Deliver in the background until `stop()`."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._loop(), name="outbox")

    async def stop(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - a bounded wait
        """Stop after the entry in hand (bounded); undelivered entries stay for the next start."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                async with asyncio.timeout(timeout):
                    await task
            except TimeoutError:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                await self.run_once()
            except Exception:
                log.exception("outbox pass failed")
            try:
                async with asyncio.timeout(self._poll):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def drain(self, timeout: float = 10.0) -> bool:  # noqa: ASYNC109 - a bounded wait
        """Deliver everything due now (entries waiting for a later retry are left)."""
        try:
            async with asyncio.timeout(timeout):
                while await self.run_once():
                    pass
        except TimeoutError:
            return False
        return True

    async def run_once(self) -> int:
        """Claim and deliver one batch of due entries; the number handled."""
        async with self._lock:
            async with self._store.uow() as uow:
                entries = await uow.outbox.claim_due(
                    now=self._clock(), holder=self._holder, lease=CLAIM_LEASE, limit=BATCH
                )
                await uow.commit()
            handled = 0
            done: set[int] = set()
            for entry in entries:
                if entry.id in done or self._stopping:
                    continue
                done.update(await self._deliver(entry))
                handled += 1
            return handled

    # -- one entry ---------------------------------------------------------------------------

    def _digest_for(self, entry: OutboxEntry) -> _Digest | None:
        key = entry.message.digest_key
        if not key:
            return None
        return next((d for p, d in self._digests.items() if key.startswith(p)), None)

    async def _deliver(self, entry: OutboxEntry) -> set[int]:
        """Deliver `entry` (or its digest); the IDs of every entry it settled."""
        group = [entry]
        digest = self._digest_for(entry)
        if digest is not None and entry.message.digest_key:
            async with self._store.uow() as uow:
                group = await uow.outbox.claim_digest(
                    entry.message.digest_key,
                    now=self._clock(),
                    holder=self._holder,
                    lease=CLAIM_LEASE,
                )
                await uow.commit()
            if entry.id not in {e.id for e in group}:
                group = [entry, *group]
            if len(group) < digest.min_batch:
                # Too few for a digest: hand the others back at once (their claim would
                # otherwise hold them for the whole lease).
                extras = [e for e in group if e.id != entry.id]
                if extras:
                    async with self._store.uow() as uow:
                        for e in extras:
                            await uow.outbox.retry_later(e.id, at=self._clock(), error="")
                        await uow.commit()
                group = [entry]
        ids = [e.id for e in group]
        try:
            if len(group) > 1 and digest is not None:
                rendered = await digest.render([e.message.payload for e in group])
            else:
                rendered = await self._render(entry)
            posted = await self._send(entry, rendered)
        except Skip:
            await self._settle(ids, posted=None, refs=[])
            return set(ids)
        except SlackApiError as exc:
            await self._slack_failure(group, exc)
            return set(ids)
        except _NotYet as exc:
            await self._later(entry, str(exc), attempts=entry.attempts)
            return {entry.id}
        except Exception as exc:  # connection errors, renderer bugs: retried, then failed
            log.warning("delivery failed", extra={"key": entry.message.key}, exc_info=True)
            for e in group:
                await self._later(e, f"{type(exc).__name__}", attempts=e.attempts)
            return set(ids)
        refs = [e.message.ref for e in group if e.message.ref and e.message.op != "update"]
        await self._settle(ids, posted=posted, refs=refs)
        self._metrics.inc("billing_triage_slack_deliveries_total", float(len(ids)), outcome="sent")
        return set(ids)

    async def _render(self, entry: OutboxEntry) -> Rendered:
        msg = entry.message
        if msg.render:
            render = self._renderers.get(msg.render)
            if render is None:
                raise _NotYet(f"no renderer {msg.render!r} registered yet")
            return await render(msg.payload)
        payload = msg.payload
        return Rendered(
            text=str(payload.get("text") or ""), blocks=list(payload.get("blocks") or [])
        )

    async def _send(self, entry: OutboxEntry, rendered: Rendered) -> PostedMessage | None:
        msg = entry.message
        if msg.op == "update":
            assert msg.ref is not None, "an update names the message it edits"
            async with self._store.uow() as uow:
                target = await uow.outbox.posted(msg.ref)
                failed = target is None and await uow.outbox.has_failed_post(msg.ref)
            if target is None:
                if failed:
                    raise Skip()  # the message never existed; its failure is already reported
                raise _NotYet(f"message {msg.ref} not posted yet")
            await self._paced(target.channel)
            await self._client.chat_update(
                channel=target.channel, ts=target.ts, text=rendered.text, blocks=_blocks(rendered)
            )
            await self._upload(target.channel, target.ts, rendered)
            return None
        channel = msg.channel
        if not channel:
            raise Skip()
        if msg.op == "dm":
            opened = await self._client.conversations_open(users=channel)
            channel = str((opened.get("channel") or {}).get("id") or channel)
        thread_ts: str | None = None
        if msg.thread_ref:
            async with self._store.uow() as uow:
                parent = await uow.outbox.posted(msg.thread_ref)
            if parent is None:
                raise _NotYet(f"thread {msg.thread_ref} not posted yet")
            thread_ts = parent.ts
        await self._paced(channel)
        response = await self._client.chat_postMessage(
            channel=channel,
            text=rendered.text,
            blocks=_blocks(rendered) or None,
            thread_ts=thread_ts,
            reply_broadcast=True if rendered.broadcast and thread_ts else None,
        )
        ts = str(response.get("ts") or "")
        posted_channel = str(response.get("channel") or channel)
        await self._upload(posted_channel, ts, rendered)
        return PostedMessage(ref=msg.ref or msg.key, channel=posted_channel, ts=ts)

    async def _upload(self, channel: str, ts: str, rendered: Rendered) -> None:
        for filename, title, content in rendered.files:
            try:
                await self._client.files_upload_v2(
                    channel=channel, thread_ts=ts, filename=filename, title=title, content=content
                )
            except Exception:  # the message itself is out; a chart that fails is only logged
                self._metrics.inc("billing_triage_slack_uploads_failed_total")
                log.warning("file upload failed", extra={"file": filename}, exc_info=True)

    async def _paced(self, channel: str) -> None:
        last = self._last_post.get(channel)
        if last is not None:
            wait = self._pace - (time.monotonic() - last)
            if wait > 0:
                await asyncio.sleep(wait)
        elif len(self._last_post) >= MAX_TRACKED:
            # Bounded: forget channels not posted to for longer than the pace (most of them).
            cutoff = time.monotonic() - self._pace
            self._last_post = {c: at for c, at in self._last_post.items() if at > cutoff}
        self._last_post[channel] = time.monotonic()

    # -- outcomes ----------------------------------------------------------------------------

    async def _settle(
        self, ids: Sequence[int], *, posted: PostedMessage | None, refs: Sequence[str]
    ) -> None:
        now = self._clock()
        async with self._store.uow() as uow:
            if posted is not None:
                for ref in refs or [posted.ref]:
                    await uow.outbox.remember_post(
                        PostedMessage(ref=ref, channel=posted.channel, ts=posted.ts), now=now
                    )
            await uow.outbox.mark_sent(ids, now=now)
            await uow.commit()

    async def _later(self, entry: OutboxEntry, error: str, *, attempts: int,
                     retry_after: float | None = None) -> None:  # fmt: skip
        now = self._clock()
        if attempts + 1 >= MAX_ATTEMPTS:
            await self._fail(entry, error)
            return
        delay = retry_after if retry_after is not None else min(BACKOFF_CAP, 2.0**attempts)
        async with self._store.uow() as uow:
            await uow.outbox.retry_later(entry.id, at=now + timedelta(seconds=delay), error=error)
            await uow.commit()
        self._metrics.inc("billing_triage_slack_deliveries_total", outcome="retry")

    async def _fail(self, entry: OutboxEntry, error: str) -> None:
        async with self._store.uow() as uow:
            await uow.outbox.mark_failed(entry.id, now=self._clock(), error=error)
            await uow.commit()
        self.permanent_failures[error] = self.permanent_failures.get(error, 0) + 1
        self._metrics.inc("billing_triage_slack_deliveries_total", outcome="failed")
        self._metrics.inc("billing_triage_slack_delivery_failures_total", error=error)
        where = f"{error}:{entry.message.channel}"
        if where not in self._logged:  # once per error and channel, not once per message
            if len(self._logged) >= MAX_TRACKED:
                self._logged.clear()  # bounded: a long-lived process logs a repeat now and then
            self._logged.add(where)
            log.error(
                "Slack refused a message for good",
                extra={"error": error, "channel": entry.message.channel, "key": entry.message.key},
            )

    async def _slack_failure(self, group: Sequence[OutboxEntry], exc: SlackApiError) -> None:
        response = exc.response
        error = str(response.get("error") or "unknown_error") if response is not None else "error"
        status = getattr(response, "status_code", None)
        for entry in group:
            if error in PERMANENT_ERRORS:
                await self._fail(entry, error)
            elif status == 429 or error == "ratelimited":
                headers = getattr(response, "headers", None) or {}
                after = parse_retry_after(headers)
                if after is None:
                    after = 1.0
                await self._later(entry, "ratelimited", attempts=entry.attempts, retry_after=after)
            else:
                await self._later(entry, error, attempts=entry.attempts)

    async def health(self) -> dict[str, Any]:
        """Delivery state for /healthz: counts by status and the latest permanent failures."""
        async with self._store.uow() as uow:
            stats = dict(await uow.outbox.stats())
            failures = await uow.outbox.failures(5)
        return {
            "pending": stats.get("pending", 0),
            "failed": stats.get("failed", 0),
            "recent_failures": [
                {"error": f.last_error, "channel": f.message.channel, "key": f.message.key}
                for f in failures
            ],
        }


def _blocks(rendered: RenderedMessage) -> list[dict[str, Any]]:
    return [dict(block) for block in rendered.blocks]


class _NotYet(Exception):
    """The entry cannot go out yet (its message or thread is not posted); retried later."""
