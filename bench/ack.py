"""Ack latency of `billing-triage serve`: N concurrent signed `/billing help` requests.

Starts `serve` as a real subprocess on a free loopback port (SQLite, sandbox providers, Slack's
Web API answered by the local stand-in in this process), fires the requests, prints p50/p99/max
of the time until Slack would get its HTTP 200 (the ack).

    python bench/ack.py [--requests 500] [--concurrency 50] [--text help]

Budget (issue 2): p99 under 50 ms at 50 concurrent requests on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
from slack_sdk.signature import SignatureVerifier

from integrations.sandbox.slack import LocalSlack

REPO = Path(__file__).resolve().parents[1]
SECRET = "bench-signing-secret"
TOKEN = "xoxb-bench-0000"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def signed(body: str) -> dict[str, str]:
    """Slack's signature headers for `body`."""
    ts = str(int(time.time()))
    sig = SignatureVerifier(SECRET).generate_signature(timestamp=ts, body=body)
    return {
        "content-type": "application/x-www-form-urlencoded",
        "x-slack-request-timestamp": ts,
        "x-slack-signature": sig,
    }


async def wait_healthy(client: aiohttp.ClientSession, proc: subprocess.Popen[bytes]) -> None:
    """Poll /healthz until the server answers."""
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit(f"serve exited with {proc.returncode}")
        try:
            async with client.get("/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("serve did not become healthy")


async def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--text", default="help")
    args = parser.parse_args()

    async with LocalSlack(token=TOKEN) as slack:
        port = free_port()
        tmp = tempfile.mkdtemp()
        env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("SLACK_", "STRIPE_", "ORB_", "METRONOME_"))
            },
            "SLACK_BOT_TOKEN": TOKEN,
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": slack.base_url,
            "DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/bench.db",
            "LOG_LEVEL": "WARNING",
        }
        proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, not awaited
            [sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=REPO,
        )
        # aiohttp as the load generator: much less CPU per request than httpx, so the
        # figures measure the server, not the client sharing its two cores.
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        try:
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession(base, connector=connector) as client:
                await wait_healthy(client, proc)
                latencies: list[float] = []
                starts: list[float] = []
                statuses: dict[int, int] = {}

                def body_for(i: int) -> str:
                    return urlencode(
                        {
                            "command": "/billing",
                            "text": args.text,
                            "user_id": "U0BENCH",
                            "team_id": "T0BILLING",
                            "channel_id": "C0BENCH",
                            "response_url": slack.response_url(f"b{i}"),
                            "trigger_id": f"t{i}",
                        }
                    )

                async def one(body: str) -> None:
                    started = time.perf_counter()
                    async with client.post(
                        "/slack/events", data=body, headers=signed(body)
                    ) as response:
                        await response.read()
                    latencies.append(time.perf_counter() - started)
                    starts.append(started)
                    statuses[response.status] = statuses.get(response.status, 0) + 1

                async def run(total: int) -> None:
                    # A closed loop: `concurrency` workers, each sending its next request as
                    # soon as the previous one is answered. Bodies are built up front so the
                    # load generator's own work is not charged to the server.
                    bodies = [body_for(i) for i in range(total)]
                    queue = iter(bodies)

                    async def worker() -> None:
                        for body in queue:
                            await one(body)

                    await asyncio.gather(*(worker() for _ in range(args.concurrency)))

                # Warm up (the first request runs auth.test), then measure.
                await run(args.concurrency * 4)
                latencies.clear()
                starts.clear()
                statuses.clear()
                began = time.perf_counter()
                await run(args.requests)
                elapsed = time.perf_counter() - began
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    if os.environ.get("BENCH_DEBUG"):
        t0 = min(starts)
        worst = sorted(zip(latencies, starts, strict=True), reverse=True)[:10]
        print("worst:", [(round(lat * 1000), round((st - t0) * 1000)) for lat, st in worst])
    ms = sorted(x * 1000 for x in latencies)
    p = statistics.quantiles(ms, n=100, method="inclusive")
    print(
        f"requests={args.requests} concurrency={args.concurrency} text={args.text!r} "
        f"statuses={statuses}"
    )
    print(f"ack latency ms: p50={p[49]:.1f} p90={p[89]:.1f} p99={p[98]:.1f} max={ms[-1]:.1f}")
    print(f"throughput: {args.requests / elapsed:.0f} req/s")


if __name__ == "__main__":
    asyncio.run(main())
