"""Ack latency of `billing-triage serve`: N concurrent signed `/billing help` requests.

Starts `serve` as a real subprocess on a free loopback port (SQLite, sandbox providers, Slack's
Web API answered by the local stand-in in this process), fires the requests, prints p50/p99/max
of the time until Slack would get its HTTP 200 (the ack).

    python bench/ack.py [--requests 500] [--concurrency 50] [--text help] [--vs-bare] [--rounds 3]

`--vs-bare` also serves `bench/bare_bolt.py` (a Bolt app that only acks, with Bolt's defaults)
and runs the same load against both, round by round (A B A B …), printing each one's figures and
the ratio of our p99 to the bare app's.

Budgets: issue 2, p99 under 50 ms at 50 concurrent requests on a 2-core machine; issue 11, p99
under 100 ms at 200 concurrent slash commands and at most 0.8x the bare Bolt app's p99.
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


async def load(
    base: str, args: argparse.Namespace, slack: LocalSlack
) -> tuple[list[float], dict[int, int], float]:
    """Warm up, then `args.requests` signed commands from `args.concurrency` closed-loop workers;
    the latencies (s), the status counts and the elapsed time."""
    # aiohttp as the load generator: much less CPU per request than httpx, so the figures
    # measure the server, not the client sharing its two cores.
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    async with aiohttp.ClientSession(base, connector=connector) as client:

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
            async with client.post("/slack/events", data=body, headers=signed(body)) as response:
                await response.read()
            latencies.append(time.perf_counter() - started)
            statuses[response.status] = statuses.get(response.status, 0) + 1

        async def run(total: int) -> None:
            # A closed loop: `concurrency` workers, each sending its next request as soon as the
            # previous one is answered. Bodies are built up front so the load generator's own
            # work is not charged to the server.
            queue = iter([body_for(i) for i in range(total)])

            async def worker() -> None:
                for body in queue:
                    await one(body)

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))

        await run(args.concurrency * 4)  # warm up (the first request runs auth.test)
        latencies.clear()
        statuses.clear()
        began = time.perf_counter()
        await run(args.requests)
        elapsed = time.perf_counter() - began
    return latencies, statuses, elapsed


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def figures(latencies: list[float]) -> tuple[float, float, float, float]:
    """p50, p90, p99 and max in milliseconds."""
    ms = sorted(x * 1000 for x in latencies)
    p = statistics.quantiles(ms, n=100, method="inclusive")
    return p[49], p[89], p[98], ms[-1]


async def wait_up(base: str, proc: subprocess.Popen[bytes], path: str) -> None:
    """Poll until the server answers on `path` (any status)."""
    async with aiohttp.ClientSession(base) as client:
        for _ in range(300):
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}")
            try:
                async with client.get(path) as response:
                    await response.read()
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
    raise SystemExit("server did not come up")


async def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--text", default="help")
    parser.add_argument("--vs-bare", action="store_true", help="compare with a bare Bolt app")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    async with LocalSlack(token=TOKEN) as slack:
        tmp = tempfile.mkdtemp()
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SLACK_", "STRIPE_", "ORB_", "METRONOME_"))
        }
        port = free_port()
        env = {
            **clean,
            "SLACK_BOT_TOKEN": TOKEN,
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": slack.base_url,
            "DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/bench.db",
            "LOG_LEVEL": "WARNING",
            # The periodic scan is measured by bench/scan.py; here it would only share the CPU.
            "SCAN_INTERVAL_MINUTES": "0",
        }
        ours = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, not awaited
            [sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=REPO,
        )
        servers = {"billing-triage": (f"http://127.0.0.1:{port}", ours)}
        if args.vs_bare:
            bare_port = free_port()
            bare = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, not awaited
                [sys.executable, str(REPO / "bench" / "bare_bolt.py"), str(bare_port), SECRET,
                 slack.base_url],
                env=clean,
                cwd=REPO,
            )  # fmt: skip
            servers["bare bolt"] = (f"http://127.0.0.1:{bare_port}", bare)
        try:
            for name, (base, proc) in servers.items():
                await wait_up(base, proc, "/healthz" if name == "billing-triage" else "/")
            p99s: dict[str, list[float]] = {name: [] for name in servers}
            rounds = args.rounds if args.vs_bare else 1
            print(f"requests={args.requests} concurrency={args.concurrency} text={args.text!r}")
            for r in range(rounds):
                for name, (base, proc) in servers.items():
                    cpu = cpu_seconds(proc.pid)
                    latencies, statuses, elapsed = await load(base, args, slack)
                    # Warm-up included: CPU per request of the whole round, server side only.
                    per = (cpu_seconds(proc.pid) - cpu) / (args.requests + args.concurrency * 4)
                    p50, p90, p99, worst = figures(latencies)
                    p99s[name].append(p99)
                    print(
                        f"round {r + 1} {name:>14}: p50={p50:.1f} p90={p90:.1f} p99={p99:.1f} "
                        f"max={worst:.1f} ms, {args.requests / elapsed:.0f} req/s, "
                        f"server CPU {per * 1000:.3f} ms/request, "
                        f"statuses={statuses}"
                    )
            if args.vs_bare:
                ratios = [
                    a / b for a, b in zip(p99s["billing-triage"], p99s["bare bolt"], strict=True)
                ]
                shown = ", ".join(f"{x:.2f}" for x in ratios)
                median = statistics.median(ratios)
                print(f"p99 ratio ours / bare bolt, per round: {shown} (median {median:.2f})")
        finally:
            for _base, proc in servers.values():
                proc.terminate()
                proc.wait(timeout=20)


if __name__ == "__main__":
    asyncio.run(main())
