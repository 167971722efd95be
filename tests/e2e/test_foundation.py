"""The app served over HTTP: signed requests in, the local Slack stand-in records what the bot
says. Signature checks, help, argument errors, the error handler, event dedupe, health."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import httpx
import pytest

from integrations.sandbox.slack import LocalSlack
from tests.support.app import RunningApp, serve_app, wait_until
from tests.support.slack import (
    FORM,
    app_mention,
    signed_headers,
    slash_command_body,
)


def _texts(args: dict[str, Any]) -> str:
    blocks = args.get("blocks") or []
    if isinstance(blocks, str):
        blocks = json.loads(blocks)
    return (args.get("text") or "") + json.dumps(blocks)


async def test_bad_signature_is_refused_and_nothing_runs(running_app: RunningApp) -> None:
    """A request signed with the wrong secret gets 401 and the bot does nothing."""
    body = slash_command_body("help", response_url=running_app.slack.response_url("cmd"))
    response = await running_app.post_slack(body, signed_headers(body, secret="wrong-secret"))
    assert response.status_code == 401
    await running_app.settle()
    assert running_app.slack.calls == []


async def test_stale_timestamp_is_refused(running_app: RunningApp) -> None:
    """A correctly signed request older than 5 minutes (replay) gets 401."""
    body = slash_command_body("help", response_url=running_app.slack.response_url("cmd"))
    old = int(time.time()) - 301
    response = await running_app.post_slack(
        body, signed_headers(body, timestamp=old, content_type=FORM)
    )
    assert response.status_code == 401
    await running_app.settle()
    assert running_app.slack.calls == []


async def test_missing_signature_headers_are_refused(running_app: RunningApp) -> None:
    """No signature at all is a 401, not a crash."""
    body = slash_command_body("help")
    response = await running_app.post_slack(body, {"content-type": FORM})
    assert response.status_code == 401


@pytest.mark.parametrize("text", ["", "help"])
async def test_help_answers_with_usage_and_examples(running_app: RunningApp, text: str) -> None:
    """`/billing` and `/billing help` answer ephemerally with usage and examples."""
    reply = await running_app.answer(text)
    assert reply.get("response_type", "ephemeral") == "ephemeral"
    content = _texts(reply)
    for sub in ("explain", "draft", "refund", "credit", "alerts", "history"):
        assert f"/billing {sub}" in content
    assert "Examples" in content


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("status", "Which account?"),
        ("explain", "Which account?"),
        ("draft", "Which account?"),
        ("refund acct_1 abc dup", "not an amount"),
        ("refund acct_1 -5 dup", "negative"),
        ("credit acct_1 0 outage", "more than zero"),
        ("alerts please", "takes `open`, `all` or `stats`"),
        ("history", "one account or request ID"),
        ("frobnicate x y", "Unknown subcommand"),
        ("status jane@", "not a valid email"),
    ],
)
async def test_argument_errors_are_told_ephemerally(
    running_app: RunningApp, text: str, fragment: str
) -> None:
    """Each subcommand's argument errors reach the user as a short ephemeral message."""
    reply = await running_app.answer(text)
    assert reply.get("response_type", "ephemeral") == "ephemeral"
    assert fragment in reply["text"]
    assert "Traceback" not in _texts(reply)


async def test_a_refund_without_a_finance_channel_says_it_is_not_set_up(
    running_app: RunningApp,
) -> None:
    """A well-formed refund request with no FINANCE_CHANNEL configured is refused with what to
    set, before any account is looked up."""
    reply = await running_app.answer("refund acct_1 $25 ch_3Mml duplicate charge")
    assert "FINANCE_CHANNEL is not configured" in reply["text"]


async def test_unknown_errors_show_only_a_reference_that_is_in_the_log(
    running_app: RunningApp, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected error shows "something went wrong (ref …)"; the traceback is only logged."""

    async def explode(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("secret internal detail sk_live_abc123")

    running_app.deps.lookup.snapshot = explode  # type: ignore[method-assign]
    caplog.set_level(logging.ERROR)
    await running_app.command("status acct_1")
    await running_app.settle()
    replies = running_app.responses()
    final = replies[-1]
    assert "Something went wrong (ref " in final["text"]
    assert "secret internal detail" not in _texts(final)
    ref = final["text"].split("(ref ")[1].split(")")[0]
    logged = [r for r in caplog.records if ref in r.getMessage()]
    assert logged and logged[0].exc_info is not None


async def test_mentions_are_answered_in_a_thread(running_app: RunningApp) -> None:
    """`@Billing Triage help` answers in the mention's thread."""
    event = app_mention("<@UBOTTRIAGE> help", ts="1700000000.000200")
    response = await running_app.event(event, event_id="EvHelp1")
    assert response.status_code == 200
    posts = await running_app.slack.wait_for("chat.postMessage")
    assert posts[0].args["thread_ts"] == "1700000000.000200"
    assert "/billing explain" in _texts(posts[0].args)


async def test_event_retries_are_processed_once(running_app: RunningApp) -> None:
    """Slack's retries of the same event_id (X-Slack-Retry-Num) do not answer twice."""
    event = app_mention("<@UBOTTRIAGE> help", ts="1700000000.000300")
    first = await running_app.event(event, event_id="EvDup1")
    retry = await running_app.event(event, event_id="EvDup1", retry_num=1)
    assert first.status_code == retry.status_code == 200
    await running_app.settle()
    await running_app.slack.wait_for("chat.postMessage")
    other = await running_app.event(event, event_id="EvDup2")
    assert other.status_code == 200
    await wait_until(lambda: len(running_app.slack.calls_to("chat.postMessage")) == 2)
    await running_app.settle()
    assert len(running_app.slack.calls_to("chat.postMessage")) == 2


async def test_mention_errors_are_said_in_the_thread(running_app: RunningApp) -> None:
    """A mention without an account gets the how-to in its thread, not silence."""
    event = app_mention("<@UBOTTRIAGE> why is this so expensive?", ts="1700000000.000400")
    await running_app.event(event, event_id="EvErr1")
    posts = await running_app.slack.wait_for("chat.postMessage")
    assert posts[0].args["thread_ts"] == "1700000000.000400"
    assert "couldn't find an account" in posts[0].args["text"]


async def test_healthz_is_ok_when_the_database_answers(running_app: RunningApp) -> None:
    """GET /healthz answers 200 {"ok": true} with a working database."""
    response = await running_app.http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True}


async def test_healthz_is_503_when_the_database_is_down(local_slack: LocalSlack) -> None:
    """GET /healthz answers 503 when the database does not answer."""
    url = "postgresql+asyncpg://nobody:pw@127.0.0.1:9/none"
    async with serve_app(local_slack, url, auto_migrate=False) as running:
        response = await running.http.get("/healthz")
        assert response.status_code == 503
        assert response.json() == {"ok": False}


async def test_metrics_are_exposed_in_prometheus_format(running_app: RunningApp) -> None:
    """GET /metrics shows request counts and ack latency after a command."""
    await running_app.command("help")
    await running_app.settle()
    text = (await running_app.http.get("/metrics")).text
    assert "billing_triage_ack_seconds_count 1" in text
    assert 'billing_triage_slack_requests_total{status="200"} 1' in text


async def test_the_ack_comes_before_slow_work(local_slack: LocalSlack, tmp_path: Any) -> None:
    """A slow lookup does not delay Slack's 200: the answer arrives later via response_url."""
    import asyncio

    from bot.domain.models import AccountRef, BillingSnapshot

    async with serve_app(local_slack, f"sqlite+aiosqlite:///{tmp_path}/a.db") as running:
        gate = asyncio.Event()

        async def slow(*_a: Any, **_k: Any) -> BillingSnapshot:
            await gate.wait()
            return BillingSnapshot(account=AccountRef("acct_1", {}), providers=())

        running.deps.lookup.snapshot = slow  # type: ignore[method-assign]
        response = await asyncio.wait_for(running.command("status acct_1"), timeout=2.5)
        assert response.status_code == 200
        assert "Looking up" in running.responses()[0]["text"] if running.responses() else True
        gate.set()
        await running.settle()
        assert "acct_1" in _texts(running.responses()[-1])


async def test_unknown_paths_are_404(running_app: RunningApp) -> None:
    """Only the documented endpoints answer."""
    response = await running_app.http.get("/nope")
    assert response.status_code == 404
    assert isinstance(response, httpx.Response)


async def test_old_processed_event_ids_are_pruned(running_app: RunningApp) -> None:
    """Event IDs older than the keep window are dropped, so a retry seen long ago is new again."""
    from datetime import UTC, datetime, timedelta

    from handlers import middleware

    async with running_app.deps.database.uow() as uow:
        assert await uow.events.mark_processed("slack:T0BILLING", "EvOld")
        await uow.commit()
    await middleware._prune(running_app.deps)  # nothing is old enough yet
    async with running_app.deps.database.uow() as uow:
        assert not await uow.events.mark_processed("slack:T0BILLING", "EvOld")
    later = datetime.now(UTC) + middleware.KEEP_EVENTS + timedelta(minutes=1)
    async with running_app.deps.database.uow() as uow:
        assert await uow.events.prune(later) == 1
        await uow.commit()
