"""Two replicas on one PostgreSQL (issue 11): a Slack event delivered to both (a retry that
reaches the other replica) is answered once; a request that expires with both replicas' periodic
jobs running expires once, with one message update and one DM; the approval messages that
requests on either replica enqueue are each posted once. Real `serve` processes, the fake Slack
and the Stripe sandbox over loopback in this process."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from bot.domain.approvals import RequestState
from bot.storage.db import Database
from integrations.sandbox.slack import LocalSlack
from tests.e2e.test_approvals_processes import (
    FINANCE,
    AppProcess,
    _env,
    _request,
    _until,
    stripe_server,
)
from tests.support.slack import JSON, app_mention, event_body, signed_headers

pytestmark = pytest.mark.postgres


async def _post_event(app: AppProcess, body: str, retry: int | None) -> httpx.Response:
    headers = signed_headers(body, content_type=JSON)
    if retry is not None:
        headers["X-Slack-Retry-Num"] = str(retry)
        headers["X-Slack-Retry-Reason"] = "http_timeout"
    async with httpx.AsyncClient(base_url=app.url, timeout=10) as http:
        return await http.post("/slack/events", content=body.encode(), headers=headers)


async def test_an_event_retried_to_the_other_replica_is_answered_once(
    local_slack: LocalSlack, postgres_database_url: str
) -> None:
    """Slack's retry of a mention lands on the other replica at the same time: one answer."""
    async with stripe_server() as stripe:
        env = _env(local_slack, postgres_database_url, stripe)
        one, two = AppProcess(env), AppProcess(env)
        await asyncio.gather(one.start(), two.start())
        try:
            mention = app_mention("<@UBOTTRIAGE> status acct_initech", ts="1700000000.000777")
            body = event_body(mention, event_id="EvReplicas01")
            answers = await asyncio.gather(
                _post_event(one, body, None), _post_event(two, body, 1), _post_event(one, body, 2)
            )
            assert [a.status_code for a in answers] == [200, 200, 200]
            deadline = time.monotonic() + 30
            while not local_slack.calls_to("chat.postMessage"):
                assert time.monotonic() < deadline, "nobody answered the mention"
                await asyncio.sleep(0.1)
            await asyncio.sleep(2)  # time for a second answer, were there one
        finally:
            await asyncio.gather(one.stop(), two.stop())
    replies = [
        c for c in local_slack.calls_to("chat.postMessage")
        if c.args.get("thread_ts") == "1700000000.000777"
    ]  # fmt: skip
    assert len(replies) == 1


async def test_a_request_expires_once_with_two_replicas_running_the_job(
    local_slack: LocalSlack, postgres_database_url: str
) -> None:
    """Both replicas run the approvals job every half second: a request that times out is
    expired by one of them, its message updated once and its requester told once; requests
    made on either replica get exactly one approval message each."""
    async with stripe_server() as stripe:
        env = {**_env(local_slack, postgres_database_url, stripe), "REQUEST_TTL_HOURS": "0.001"}
        one, two = AppProcess(env), AppProcess(env)
        await asyncio.gather(one.start(), two.start())
        try:
            first = await _request(one, local_slack, "credit acct_initech 10 goodwill")
            expired = await _until(postgres_database_url, first, RequestState.EXPIRED, 30)
            await asyncio.sleep(1.5)  # both jobs tick again: nothing may happen twice
        finally:
            await asyncio.gather(one.stop(), two.stop())
    assert expired.state is RequestState.EXPIRED
    posts = [
        c for c in local_slack.calls_to("chat.postMessage")
        if c.args.get("channel") == FINANCE and first in str(c.args.get("text"))
    ]  # fmt: skip
    assert len(posts) == 1
    updates = [c for c in local_slack.calls_to("chat.update") if first in str(c.args.get("text"))]
    assert len(updates) == 1
    dms = [
        c for c in local_slack.calls_to("chat.postMessage")
        if str(c.args.get("channel", "")).startswith("D") and first in str(c.args.get("text"))
    ]  # fmt: skip
    assert len(dms) == 1
    db = Database(postgres_database_url)
    try:
        async with db.uow() as uow:
            trail = await uow.audit.list(f"request:{first}")
    finally:
        await db.dispose()
    assert [e.action for e in trail].count("request.expired") <= 1
    assert sum(1 for e in trail if e.detail.get("to") == "expired") == 1
