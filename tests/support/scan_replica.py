"""One app replica with its periodic jobs running, as `serve` runs them but without the HTTP
listener: the scan job (exclusive, by lease), the scan worker that helps with any running scan's
pages (PostgreSQL), and the outbox worker that posts alerts. Several of these on one PostgreSQL
database are "several replicas" for the two-process scan tests.

    python -m tests.support.scan_replica [--scan-every S] [--worker-every S]

Settings come from the environment as for `serve` (DATABASE_URL, the provider variables printed
by `tests.support.provider_process`, SLACK_BOT_TOKEN and SLACK_API_URL of a local Slack,
ONCALL_CHANNEL, SCAN_PAGE_SIZE, SCAN_LEASE_SECONDS; SCAN_INTERVAL_MINUTES must be set so the scan
jobs exist). Only the jobs' intervals are shortened here. Once built it prints one JSON line
`{"holder": …, "pid": …}` and reads one line from stdin: the wall-clock time (epoch seconds) of
its first scan tick, so replicas that took different times to start tick together; then the scan
runs every `--scan-every` seconds and the worker every `--worker-every` seconds. SIGTERM stops it
gracefully (SIGKILL is the crash the tests want).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
import time

from bot.app import build_app, deps_of, shutdown, startup
from bot.settings import Settings


async def run(*, scan_every: float, worker_every: float) -> None:
    """Build the replica, report its holder name, wait for the time of its first scan, run
    until SIGTERM."""
    app = build_app(Settings.load())
    deps = deps_of(app)
    scheduler = deps.scheduler
    assert scheduler is not None
    jobs = scheduler.jobs
    if "scan" not in jobs:
        raise SystemExit("SCAN_INTERVAL_MINUTES must be set: the scan jobs are not registered")
    print(json.dumps({"holder": scheduler.holder, "pid": os.getpid()}), flush=True)
    loop = asyncio.get_running_loop()
    scan_at = float(await loop.run_in_executor(None, sys.stdin.readline))
    jobs["scan"] = dataclasses.replace(
        jobs["scan"], every=scan_every, first_delay=max(0.0, scan_at - time.time())
    )
    if "scan-worker" in jobs:
        jobs["scan-worker"] = dataclasses.replace(
            jobs["scan-worker"], every=worker_every, first_delay=0.0
        )
    await startup(app)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await shutdown(app, drain_timeout=5)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scan-every", type=float, default=3.0)
    parser.add_argument("--worker-every", type=float, default=0.3)
    args = parser.parse_args(argv)
    asyncio.run(run(scan_every=args.scan_every, worker_every=args.worker_every))
    return 0


if __name__ == "__main__":
    sys.exit(main())
