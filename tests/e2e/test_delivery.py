"""The outbox worker against the fake Slack Web API: messages go out once, in order, paced,
through 429s, and permanent failures are reported instead of retried forever."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest_asyncio
from slack_sdk.web.async_client import AsyncWebClient

from bot.domain.records import OutgoingMessage, RenderedMessage, SkipMessage
from bot.metrics import Metrics
from bot.storage.db import Database
from handlers.delivery import Delivery
from integrations.sandbox.slack import LocalSlack
from tests.support.slack import BOT_TOKEN


class Clock:
    """A movable "now" for the worker (retry times are in the database)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest_asyncio.fixture
async def worker(
    migrated_db: Database, local_slack: LocalSlack
) -> AsyncIterator[tuple[Delivery, Clock]]:
    """A worker on a fresh database posting to the fake Slack, with no pacing delay."""
    clock = Clock()
    client = AsyncWebClient(token=BOT_TOKEN, base_url=local_slack.base_url)
    delivery = Delivery(
        migrated_db, client, metrics=Metrics(), holder="test", pace=0.0, clock=clock
    )
    yield delivery, clock


async def _enqueue(db: Database, *messages: OutgoingMessage) -> None:
    async with db.uow() as uow:
        for message in messages:
            await uow.outbox.enqueue(message, now=datetime.now(UTC) - timedelta(seconds=1))
        await uow.commit()


def _blocks(call_args: Mapping[str, Any]) -> list[dict[str, Any]]:
    blocks = call_args.get("blocks")
    return json.loads(blocks) if isinstance(blocks, str) else list(blocks or [])


async def test_a_rendered_post_and_its_update_edit_one_message(
    worker: tuple[Delivery, Clock], migrated_db: Database, local_slack: LocalSlack
) -> None:
    """The renderer builds blocks from current state at delivery time; the update edits the
    message the post created (found by its ref), never a new one."""
    delivery, _ = worker
    state = {"status": "pending"}

    async def render(payload: Mapping[str, Any]) -> RenderedMessage:
        text = f"Request {payload['id']}: {state['status']}"
        return RenderedMessage(
            text, [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
        )

    delivery.register_renderer("request", render)
    await _enqueue(
        migrated_db,
        OutgoingMessage("r1:post", "post", "C0FINANCE", ref="request:R1", render="request",
                        payload={"id": "R1"}),
    )  # fmt: skip
    assert await delivery.drain()
    state["status"] = "approved"
    await _enqueue(
        migrated_db,
        OutgoingMessage("r1:approved", "update", ref="request:R1", render="request",
                        payload={"id": "R1"}),
    )  # fmt: skip
    assert await delivery.drain()

    posts = local_slack.calls_to("chat.postMessage")
    updates = local_slack.calls_to("chat.update")
    assert len(posts) == 1 and len(updates) == 1
    assert updates[0].args["ts"] == posts[0].response["ts"]
    message = local_slack.find_message("C0FINANCE", posts[0].response["ts"])
    assert message is not None and message.text == "Request R1: approved"


async def test_a_429_waits_for_retry_after_and_nothing_is_lost(
    worker: tuple[Delivery, Clock], migrated_db: Database, local_slack: LocalSlack
) -> None:
    """Rate-limited by Slack, the message waits for `Retry-After` and is then posted once."""
    delivery, clock = worker
    local_slack.fail_next("chat.postMessage", error="ratelimited", retry_after=30)
    await _enqueue(migrated_db, OutgoingMessage("a1", "post", "C0ONCALL", payload={"text": "hi"}))

    assert await delivery.drain()
    assert [c.ok for c in local_slack.calls_to("chat.postMessage")] == [False]
    clock.now += timedelta(seconds=10)
    await delivery.drain()
    assert len(local_slack.calls_to("chat.postMessage")) == 1  # still waiting
    clock.now += timedelta(seconds=25)
    await delivery.drain()

    calls = local_slack.calls_to("chat.postMessage")
    assert [c.ok for c in calls] == [False, True]
    async with migrated_db.uow() as uow:
        assert (await uow.outbox.stats())["sent"] == 1


async def test_a_permanent_error_fails_the_message_and_shows_on_health(
    worker: tuple[Delivery, Clock], migrated_db: Database, local_slack: LocalSlack
) -> None:
    """`not_in_channel` is not retried: the entry fails, is counted, and health says so."""
    delivery, _ = worker
    local_slack.fail_next("chat.postMessage", error="not_in_channel", times=2)
    await _enqueue(
        migrated_db,
        OutgoingMessage("x1", "post", "C0NOTJOINED", payload={"text": "a"}),
        OutgoingMessage("x2", "post", "C0NOTJOINED", payload={"text": "b"}),
    )

    assert await delivery.drain()
    await delivery.drain()

    assert len(local_slack.calls_to("chat.postMessage")) == 2
    assert delivery.permanent_failures == {"not_in_channel": 2}
    health = await delivery.health()
    assert health["failed"] == 2 and health["pending"] == 0
    assert health["recent_failures"][0]["error"] == "not_in_channel"


async def test_a_direct_message_opens_the_conversation_first(
    worker: tuple[Delivery, Clock], migrated_db: Database, local_slack: LocalSlack
) -> None:
    """A DM to a user goes to the IM channel `conversations.open` returns."""
    delivery, _ = worker
    await _enqueue(migrated_db, OutgoingMessage("dm1", "dm", "U0REQUESTER", payload={"text": "ok"}))

    assert await delivery.drain()

    opened = local_slack.calls_to("conversations.open")
    post = local_slack.calls_to("chat.postMessage")[0]
    assert opened and post.args["channel"] == opened[0].response["channel"]["id"]


async def test_a_burst_sharing_a_digest_key_becomes_one_message(
    worker: tuple[Delivery, Clock], migrated_db: Database, local_slack: LocalSlack
) -> None:
    """Six alerts due together become one digest message; a lone one would go out as is."""
    delivery, _ = worker

    async def digest(payloads: Sequence[Mapping[str, Any]]) -> RenderedMessage:
        return RenderedMessage(f"{len(payloads)} alerts: " + ", ".join(p["text"] for p in payloads))

    delivery.register_digest("oncall:", digest)
    await _enqueue(
        migrated_db,
        *(
            OutgoingMessage(f"al{i}", "post", "C0ONCALL", ref=f"alert:{i}",
                            payload={"text": f"a{i}"}, digest_key="oncall:C0ONCALL")
            for i in range(6)
        ),
    )  # fmt: skip

    assert await delivery.drain()

    posts = local_slack.calls_to("chat.postMessage")
    assert len(posts) == 1 and posts[0].args["text"].startswith("6 alerts:")
    async with migrated_db.uow() as uow:
        for i in range(6):  # every alert's ref points at the digest, for later updates
            posted = await uow.outbox.posted(f"alert:{i}")
            assert posted is not None and posted.ts == posts[0].response["ts"]


async def test_a_thread_reply_waits_for_its_parent_and_a_skipped_message_is_settled(
    worker: tuple[Delivery, Clock], migrated_db: Database, local_slack: LocalSlack
) -> None:
    """A reply goes into its parent's thread; a renderer that says "no longer wanted" settles
    the entry without posting."""
    delivery, _ = worker

    async def gone(_payload: Mapping[str, Any]) -> RenderedMessage:
        raise SkipMessage()

    delivery.register_renderer("gone", gone)
    await _enqueue(
        migrated_db,
        OutgoingMessage("p", "post", "C0TRIAGE", ref="card:1", payload={"text": "card"}),
        OutgoingMessage("t", "post", "C0TRIAGE", thread_ref="card:1", payload={"text": "more"}),
        OutgoingMessage("g", "post", "C0TRIAGE", render="gone"),
    )

    assert await delivery.drain()
    await delivery.drain()

    posts = local_slack.calls_to("chat.postMessage")
    assert [p.args["text"] for p in posts] == ["card", "more"]
    assert posts[1].args["thread_ts"] == posts[0].response["ts"]
    async with migrated_db.uow() as uow:
        assert (await uow.outbox.stats())["sent"] == 3


async def test_what_the_worker_remembers_stays_bounded(
    worker: tuple[Delivery, Clock], migrated_db: Database, local_slack: LocalSlack
) -> None:
    """Pacing state and the log-once set stay bounded however many channels a long-running
    process posts to (the rest of its memory is the database's)."""
    import handlers.delivery as module

    delivery, _ = worker
    module.MAX_TRACKED, saved = 5, module.MAX_TRACKED
    try:
        local_slack.fail_next("chat.postMessage", error="channel_not_found", times=12)
        await _enqueue(
            migrated_db,
            *(OutgoingMessage(f"m{i}", "post", f"C0CHAN{i:03d}", payload={"text": "x"})
              for i in range(12)),
        )  # fmt: skip
        assert await delivery.drain()
        assert len(delivery._logged) <= 5
        assert len(delivery._last_post) <= 5 + 1
    finally:
        module.MAX_TRACKED = saved
