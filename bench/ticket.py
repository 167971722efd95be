"""`/billing ticket` latency (issue 12): p95 under 2 s with 100 ms per Zendesk call and 400 ms
per billing provider call, measured end to end over real loopback HTTP: a signed slash command
into the served app, the real Zendesk client to the fake Zendesk, the real provider clients to
the fake providers, until the final answer reaches the response URL.

    python bench/ticket.py [--runs 5] [--zendesk-latency 0.1] [--provider-latency 0.4]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lookup import start_fakes
from bot.app import build_app
from integrations.http import RetryPolicy
from integrations.sandbox.slack import LocalSlack
from tests.support.app import serve_app
from tests.support.slack import (
    BOT_TOKEN,
    BOT_USER_ID,
    FORM,
    TEAM_ID,
    signed_headers,
    slash_command_body,
)
from tests.support.zendesk import ACCOUNT_FIELD, start_fake_zendesk

#: The sandbox tickets that resolve to an account, each by a different path.
TICKETS = (1001, 1002, 1003, 1004, 1007, 1009)


async def one(running: object, ticket: int, key: str) -> tuple[float, int]:
    """Seconds until the final answer of `/billing ticket N`, and the Zendesk calls it made."""
    app = running  # RunningApp
    body = slash_command_body(f"ticket {ticket}", response_url=app.slack.response_url(key))  # type: ignore[attr-defined]
    started = time.perf_counter()
    response = await app.post_slack(body, signed_headers(body, content_type=FORM))  # type: ignore[attr-defined]
    assert response.status_code == 200
    while True:
        replies = [c.args for c in app.slack.responses_to(key)]  # type: ignore[attr-defined]
        if replies and replies[-1].get("replace_original"):
            break
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    assert "matched by" in str(replies[-1]), replies[-1]
    return elapsed, 0


async def main(runs: int, zendesk_latency: float, provider_latency: float) -> None:
    fakes = await start_fakes()
    zendesk = await start_fake_zendesk(fakes.world)
    fakes.set_latency(provider_latency)
    zendesk.server.latency = zendesk_latency
    slack = LocalSlack(token=BOT_TOKEN, team_id=TEAM_ID, bot_user_id=BOT_USER_ID)
    await slack.start()
    times: list[float] = []
    per_ticket: dict[int, list[float]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            build = functools.partial(build_app, tickets=zendesk.client(policy=RetryPolicy()))
            async with serve_app(
                slack,
                f"sqlite+aiosqlite:///{tmp}/bench.db",
                providers=fakes.clients(RetryPolicy()),
                build=build,
                zendesk_account_field=ACCOUNT_FIELD,
            ) as running:
                n = 0
                for _ in range(runs):
                    for ticket in TICKETS:
                        n += 1
                        zendesk.server.requests.clear()
                        seconds, _ = await one(running, ticket, f"k{n}")
                        calls = len(zendesk.server.requests)
                        times.append(seconds)
                        per_ticket.setdefault(ticket, []).append(seconds)
                        if n <= len(TICKETS):
                            print(
                                f"  ticket {ticket}: {seconds * 1000:6.0f} ms "
                                f"({calls} Zendesk calls)"
                            )
                await running.settle()
    finally:
        await slack.stop()
        await zendesk.server.stop()
        for server in fakes.servers().values():
            await server.stop()
    times.sort()
    p95 = times[max(0, round(0.95 * len(times)) - 1)]
    print(
        f"/billing ticket, {len(times)} answers ({zendesk_latency * 1000:.0f} ms per Zendesk call, "
        f"{provider_latency * 1000:.0f} ms per provider call): "
        f"p50 {statistics.median(times) * 1000:.0f} ms, "
        f"p95 {p95 * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms (budget p95 < 2000 ms)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--zendesk-latency", type=float, default=0.1)
    parser.add_argument("--provider-latency", type=float, default=0.4)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.zendesk_latency, args.provider_latency))
