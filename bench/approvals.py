"""Approval budgets of issue 8, measured over real loopback HTTP: the app served as in
production (HTTP mode, the outbox worker, Slack's one-post-per-second pacing), the fake Slack,
and the Stripe sandbox with a fixed latency on every request.

1. Click → provider refund → message updated: p50/p99 from the signed Approve click to the
   `chat.update` that shows Stripe's refund ID, with a 400 ms provider (each refund is two
   Stripe calls: the payment is read, then refunded). Budget: p99 under 1 s. Clicks are spaced
   so that Slack's pacing of one message per channel per second does not count.
2. 100 requests from 100 requesters, each approved once, all at the same time: every one
   executed, and Stripe holds exactly one refund per request (counted through its API).

    python bench/approvals.py [--latency 0.4] [--samples 30] [--concurrent 100]
                              [--database-url postgresql+asyncpg://…]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from bot.domain.approvals import RequestState
from handlers.approval_views import APPROVE_ACTION
from integrations.http import RetryPolicy
from integrations.sandbox.slack import LocalSlack, SlackCall
from tests.support.app import RunningApp, serve_app
from tests.support.providers import KEYS, FakeProviders
from tests.support.slack import (
    BOT_TOKEN,
    BOT_USER_ID,
    FORM,
    TEAM_ID,
    block_actions_body,
    signed_headers,
    slash_command_body,
)

FINANCE = "C0FINANCE"
REQUEST_RE = re.compile(r"REQ-[A-Z2-7]{8}")


async def start_fakes() -> FakeProviders:
    """The sandbox providers on loopback (only Stripe is given latency)."""
    from integrations.sandbox.metronome_server import MetronomeSandboxServer
    from integrations.sandbox.orb_server import OrbSandboxServer
    from integrations.sandbox.stripe_server import StripeSandboxServer
    from tests.support.fakeserver import FakeProviderServer
    from tests.support.providers import small_world

    world = small_world()
    fakes = FakeProviders(
        world,
        FakeProviderServer(StripeSandboxServer(world, api_key=KEYS["stripe"])),
        FakeProviderServer(OrbSandboxServer(world, api_key=KEYS["orb"])),
        FakeProviderServer(MetronomeSandboxServer(world, api_key=KEYS["metronome"])),
    )
    for server in fakes.servers().values():
        await server.start()
    return fakes


class Updates:
    """When the fake Slack saw each `chat.update` (monotonic seconds), by message ts."""

    def __init__(self) -> None:
        self.at: dict[str, list[tuple[float, str]]] = {}

    def __call__(self, call: SlackCall) -> None:
        if call.method == "chat.update" and call.ok:
            text = str(call.args.get("text") or "")
            self.at.setdefault(str(call.args.get("ts")), []).append((time.monotonic(), text))

    def executed_at(self, ts: str) -> float | None:
        for when, text in self.at.get(ts, []):
            if "(executed)" in text:
                return when
        return None


async def make_request(app: RunningApp, text: str, user: str, key: str) -> str:
    """A request through `/billing`; its ID once the approval message is posted."""
    body = slash_command_body(text, user_id=user, response_url=app.slack.response_url(key))
    response = await app.post_slack(body, signed_headers(body, content_type=FORM))
    assert response.status_code == 200
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for reply in app.responses(key):
            found = REQUEST_RE.search(str(reply.get("text") or ""))
            if found:
                return found.group(0)
            if "Sent to finance" not in str(reply.get("text")) and "Checking" not in str(reply):
                raise AssertionError(f"refused: {reply.get('text')}")
        await asyncio.sleep(0.01)
    raise AssertionError("no answer")


def message_ts(slack: LocalSlack, request_id: str) -> str | None:
    for message in slack.messages:
        if message.channel == FINANCE and request_id in (message.text or ""):
            return message.ts
    return None


async def click(app: RunningApp, request_id: str, ts: str, user: str) -> None:
    body = block_actions_body(
        APPROVE_ACTION, request_id, user_id=user, channel_id=FINANCE, message_ts=ts,
        response_url=app.slack.response_url(f"click-{request_id}"),
    )  # fmt: skip
    response = await app.post_slack(body, signed_headers(body, content_type=FORM))
    assert response.status_code == 200


async def wait_posted(app: RunningApp, ids: list[str], timeout: float = 300) -> dict[str, str]:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while True:
        found = {i: message_ts(app.slack, i) for i in ids}
        if all(found.values()):
            return {i: str(ts) for i, ts in found.items()}
        assert time.monotonic() < deadline, "approval messages were not all posted"
        await asyncio.sleep(0.05)


async def click_to_update(app: RunningApp, fakes: FakeProviders, updates: Updates,
                          latency: float, samples: int) -> None:  # fmt: skip
    """Budget 1."""
    ids = [
        await make_request(
            app, f"refund acct_globex {i + 1}.00 latency sample", f"U0REQ{i:03d}", f"make{i}"
        )
        for i in range(samples)
    ]
    posted = await wait_posted(app, ids)
    await asyncio.sleep(1.1)  # the last post's pacing slot has passed
    fakes.stripe.latency = latency
    seconds: list[float] = []
    for request_id in ids:
        ts = posted[request_id]
        started = time.monotonic()
        await click(app, request_id, ts, "U0FINANCE")
        while (done := updates.executed_at(ts)) is None:
            assert time.monotonic() - started < 30, f"{request_id} was not updated"
            await asyncio.sleep(0.002)
        seconds.append(done - started)
        await asyncio.sleep(max(0.0, 1.05 - (time.monotonic() - done)))  # Slack's pacing
    fakes.stripe.latency = 0.0
    quantiles = statistics.quantiles(seconds, n=100, method="inclusive")
    print(f"click → Stripe refund → message updated, Stripe latency {latency * 1000:.0f} ms, "
          f"{len(seconds)} clicks:")  # fmt: skip
    print(f"  p50 {statistics.median(seconds) * 1000:6.0f} ms   p99 {quantiles[98] * 1000:6.0f} ms"
          f"   max {max(seconds) * 1000:6.0f} ms   (budget: p99 < 1000 ms)")  # fmt: skip


async def refunds_by_request(fakes: FakeProviders) -> Counter[str]:
    """Stripe's refunds counted per request ID, read through its API."""
    counts: Counter[str] = Counter()
    async with httpx.AsyncClient(base_url=fakes.stripe.url) as http:
        after: str | None = None
        while True:
            params = {"limit": "100", **({"starting_after": after} if after else {})}
            auth = {"Authorization": f"Bearer {KEYS['stripe']}"}
            page = (await http.get("/v1/refunds", params=params, headers=auth)).json()
            for refund in page["data"]:
                counts[str(refund["metadata"].get("request_id"))] += 1
            if not page.get("has_more") or not page["data"]:
                return counts
            after = page["data"][-1]["id"]


async def hundred_at_once(app: RunningApp, fakes: FakeProviders, latency: float, n: int) -> None:
    """Budget 2."""
    before = await refunds_by_request(fakes)
    started = time.monotonic()
    ids = await asyncio.gather(
        *(make_request(app, f"refund acct_initech {1 + i / 100:.2f} concurrent", f"U0CONC{i:03d}",
                       f"conc{i}") for i in range(n))
    )  # fmt: skip
    made = time.monotonic() - started
    posted = await wait_posted(app, list(ids))
    fakes.stripe.latency = latency
    clicked = time.monotonic()
    await asyncio.gather(
        *(click(app, i, posted[i], f"U0APPROVER{k % 5}") for k, i in enumerate(ids))
    )
    assert app.deps.approvals is not None
    deadline = time.monotonic() + 300
    states: Counter[RequestState] = Counter()
    while time.monotonic() < deadline:
        states = Counter()
        for request_id in ids:
            request = await app.deps.approvals.get(request_id)
            assert request is not None
            states[request.state] += 1
        if states[RequestState.EXECUTED] == n:
            break
        await asyncio.sleep(0.1)
    executed_in = time.monotonic() - clicked
    fakes.stripe.latency = 0.0
    counts = await refunds_by_request(fakes)
    mine = {i: counts[i] - before[i] for i in ids}
    print(f"{n} requests from {n} requesters, each approved once, all at once "
          f"(Stripe latency {latency * 1000:.0f} ms):")  # fmt: skip
    print(f"  made in {made:.1f} s; all approved → {states[RequestState.EXECUTED]} executed in "
          f"{executed_in:.1f} s; refunds at Stripe per request: "
          f"{dict(Counter(mine.values()))} (want {{1: {n}}})")  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.4)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--concurrent", type=int, default=100)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    fakes = await start_fakes()
    updates = Updates()
    slack = LocalSlack(token=BOT_TOKEN, team_id=TEAM_ID, bot_user_id=BOT_USER_ID, on_call=updates)
    await slack.start()
    approvers = ",".join(["U0FINANCE", *(f"U0APPROVER{k}" for k in range(5))])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            url = args.database_url or f"sqlite+aiosqlite:///{tmp}/bench.db"
            async with serve_app(
                slack, url, providers=fakes.clients(RetryPolicy()), finance_channel=FINANCE,
                finance_approvers=approvers,
            ) as app:  # fmt: skip
                await click_to_update(app, fakes, updates, args.latency, args.samples)
                await hundred_at_once(app, fakes, args.latency, args.concurrent)
    finally:
        await slack.stop()
        for server in fakes.servers().values():
            await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
