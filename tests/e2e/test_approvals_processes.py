"""Exactly once with real processes (issue 8 "Done when"): `billing-triage serve` SIGKILLed after
Stripe accepted the refund and before the commit, then restarted, ends the request executed with
one refund; two `serve` processes on one PostgreSQL, the approvers' clicks split between them,
make one refund. The provider is the Stripe sandbox over loopback in the test process (so its
state outlives the app), the Slack Web API the fake Slack."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.domain.approvals import ApprovalRequest, RequestState
from bot.storage.db import Database
from handlers.approval_views import APPROVE_ACTION
from integrations.sandbox.slack import LocalSlack
from integrations.sandbox.stripe_server import StripeSandboxServer
from tests.support.fakeserver import FakeProviderServer
from tests.support.providers import KEYS, small_world
from tests.support.slack import (
    BOT_TOKEN,
    FORM,
    SIGNING_SECRET,
    block_actions_body,
    signed_headers,
    slash_command_body,
)

ROOT = Path(__file__).resolve().parents[2]
FINANCE = "C0FINANCE"
APPROVERS = [f"U0APPROVER{i:02d}" for i in range(20)]
REQUEST_RE = re.compile(r"REQ-[A-Z2-7]{8}")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AppProcess:
    """`python -m bot serve` on a port of its own."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.port = _port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1", "--port", str(self.port),
            env=self.env, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient() as http:
            while True:
                try:
                    if (await http.get(f"{self.url}/healthz", timeout=1)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if self.proc.returncode is not None or time.monotonic() > deadline:
                    err = await self.proc.stderr.read() if self.proc.stderr else b""
                    raise AssertionError(f"serve did not come up: {err.decode()[-3000:]}")
                await asyncio.sleep(0.1)

    async def post(self, body: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as http:
            return await http.post(
                "/slack/events",
                content=body.encode(),
                headers=signed_headers(body, content_type=FORM),
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            if self.proc is not None:
                await self.proc.wait()
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


@asynccontextmanager
async def stripe_server(write_delay: float = 0.0) -> AsyncIterator[FakeProviderServer]:
    """The Stripe sandbox over loopback, in this process."""
    router = StripeSandboxServer(small_world(), api_key=KEYS["stripe"], write_delay=write_delay)
    async with FakeProviderServer(router) as server:
        yield server


def _env(slack: LocalSlack, database_url: str, stripe: FakeProviderServer) -> dict[str, str]:
    foreign = ("SLACK_", "STRIPE_", "ORB_", "METRONOME_", "OPENAI_")
    keep = {k: v for k, v in os.environ.items() if not k.startswith(foreign)}
    return {
        **keep,
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack.base_url,
        "DATABASE_URL": database_url,
        "STRIPE_API_KEY": KEYS["stripe"],
        "STRIPE_API_BASE": stripe.url,
        "FINANCE_CHANNEL": FINANCE,
        "FINANCE_APPROVERS": ",".join(APPROVERS),
        "APPROVALS_RECONCILE_SECONDS": "0.5",
        "APPROVALS_LEASE_SECONDS": "1",
        "LOG_LEVEL": "WARNING",
    }


def _charge(account: str) -> str:
    data = small_world().stripe(account)
    assert data is not None
    return str(next(c for c in data.charges if c["status"] == "succeeded")["id"])


async def _request(app: AppProcess, slack: LocalSlack, text: str) -> str:
    """Make a request through `app` and wait for its approval message; its ID."""
    body = slash_command_body(text, user_id="U0SUPPORT", response_url=slack.response_url("cmd"))
    assert (await app.post(body)).status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for message in slack.messages:
            found = REQUEST_RE.search(message.text or "")
            if message.channel == FINANCE and found:
                return found.group(0)
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"no approval message; said: {[c.args for c in slack.responses_to('cmd')]}"
    )


async def _click(app: AppProcess, slack: LocalSlack, request_id: str, user: str) -> None:
    [message] = [m for m in slack.messages if request_id in (m.text or "")]
    body = block_actions_body(
        APPROVE_ACTION, request_id, user_id=user, channel_id=FINANCE, message_ts=message.ts,
        response_url=slack.response_url(f"click-{user}"),
    )  # fmt: skip
    assert (await app.post(body)).status_code == 200


async def _stored(database_url: str, request_id: str) -> ApprovalRequest:
    db = Database(database_url)
    try:
        async with db.uow() as uow:
            found = await uow.requests.get(request_id)
    finally:
        await db.dispose()
    assert found is not None
    return found


async def _until(
    database_url: str,
    request_id: str,
    state: RequestState,
    timeout: float,  # noqa: ASYNC109 - one deadline for the whole wait
) -> ApprovalRequest:
    deadline = time.monotonic() + timeout
    while True:
        request = await _stored(database_url, request_id)
        if request.state is state:
            return request
        assert time.monotonic() < deadline, f"{request_id} is {request.state}, not {state}"
        await asyncio.sleep(0.2)


async def _refunds(stripe: FakeProviderServer, charge: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=stripe.url) as http:
        page = await http.get(
            "/v1/refunds", params={"charge": charge},
            headers={"Authorization": f"Bearer {KEYS['stripe']}"},
        )  # fmt: skip
    return list(page.json()["data"])


async def test_a_process_killed_after_stripe_refunded_finishes_it_after_restart(
    local_slack: LocalSlack, database_url: str
) -> None:
    """Stripe performed the refund and the app was SIGKILLed before it could commit: restarted,
    its reconciler ends the request executed, and Stripe holds exactly one refund."""
    charge = _charge("acct_globex")
    async with stripe_server() as stripe:
        env = _env(local_slack, database_url, stripe)
        first = AppProcess(env)
        await first.start()
        try:
            request_id = await _request(first, local_slack, f"refund acct_globex 25 {charge} dup")
            # Stripe refunds, then the answer never comes back: the app waits, and dies.
            stripe.fail_after("hang", path=r"^/v1/refunds$", method="POST", times=None)
            await _click(first, local_slack, request_id, APPROVERS[0])
            deadline = time.monotonic() + 30
            while not await _refunds(stripe, charge):
                assert time.monotonic() < deadline, "Stripe never got the refund"
                await asyncio.sleep(0.05)
            first.kill()
            await first.stop()
        finally:
            await first.stop()
        left = await _stored(database_url, request_id)
        assert left.state is RequestState.EXECUTING  # the outcome was never committed
        stripe.clear_faults()

        second = AppProcess(env)
        await second.start()
        try:
            done = await _until(database_url, request_id, RequestState.EXECUTED, 30)
        finally:
            await second.stop()
        refunds = await _refunds(stripe, charge)
        assert [r["id"] for r in refunds] == [done.provider_object_id]
        assert refunds[0]["metadata"]["request_id"] == request_id
        db = Database(database_url)
        try:
            async with db.uow() as uow:
                trail = await uow.audit.list(f"request:{request_id}")
        finally:
            await db.dispose()
        actions = [(e.action, e.detail.get("outcome")) for e in trail]
        assert ("request.takeover", None) in actions  # the restarted process took it over
        assert actions[-2] == ("provider.result", "found")  # found by request ID, not re-sent


@pytest.mark.postgres
async def test_two_processes_on_one_postgres_make_one_refund_from_twenty_clicks(
    local_slack: LocalSlack, postgres_database_url: str
) -> None:
    """Two `serve` replicas on one PostgreSQL; twenty approvers click at once, the clicks split
    between the replicas: one approval wins and Stripe makes one refund."""
    charge = _charge("acct_initech")
    async with stripe_server(write_delay=0.2) as stripe:
        env = _env(local_slack, postgres_database_url, stripe)
        one, two = AppProcess(env), AppProcess(env)
        await asyncio.gather(one.start(), two.start())
        try:
            request_id = await _request(one, local_slack, f"refund acct_initech 12 {charge} dup")
            await asyncio.gather(
                *(_click(one if i % 2 else two, local_slack, request_id, user)
                  for i, user in enumerate(APPROVERS))
            )  # fmt: skip
            done = await _until(postgres_database_url, request_id, RequestState.EXECUTED, 30)
        finally:
            await asyncio.gather(one.stop(), two.stop())
        assert done.approval_count == 1
        refunds = [r for r in await _refunds(stripe, charge)
                   if r["metadata"].get("request_id") == request_id]  # fmt: skip
        assert [r["id"] for r in refunds] == [done.provider_object_id]
        posts = stripe.requests_to(r"^/v1/refunds$")
        assert {p.headers.get("idempotency-key") for p in posts} == {f"bt:{request_id}:refund"}
