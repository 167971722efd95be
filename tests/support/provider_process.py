"""Serve the sandbox's Stripe, Orb and Metronome over loopback HTTP in a process of their own,
so several app processes can share ONE stateful provider (a two-process exactly-once test).

    python -m tests.support.provider_process [--ordinary N] [--write-delay S] [--now ISO]
        [--latency S] [--warm] [--fault PROVIDER:STATUS:PATH:TIMES:RETRY_AFTER]…

prints one JSON line once the servers listen, then serves until SIGTERM or SIGINT:

    {"stripe": "http://127.0.0.1:P1", "orb": "http://127.0.0.1:P2/v1",
     "metronome": "http://127.0.0.1:P3", "keys": {...}, "metronome_credit_product_id": "…",
     "env": {"STRIPE_API_KEY": …, "STRIPE_API_BASE": …, "ORB_API_KEY": …, …}}

Point each app process at it with the variables under `env` (real-provider mode, not the
in-process sandbox, whose servers would be private to each process).

`--latency` adds seconds to every request (a scan then lasts long enough to kill a replica in the
middle of it); each `--fault` scripts answers before the sandbox sees the request, e.g.
`stripe:429:/v1/charges:20:1` (twenty 429s with `Retry-After: 1` on Stripe's charges) or
`orb:429:/v1/invoices:forever:0` (Orb never recovers). `TIMES` is a count or `forever`;
`RETRY_AFTER` may be empty (no header).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from datetime import datetime

from integrations.sandbox.metronome_server import SANDBOX_CREDIT_PRODUCT_ID, MetronomeSandboxServer
from integrations.sandbox.orb_server import OrbSandboxServer
from integrations.sandbox.providers import SANDBOX_KEYS
from integrations.sandbox.stripe_server import StripeSandboxServer
from integrations.sandbox.world import build_world
from tests.support.fakeserver import FakeProviderServer


def parse_fault(text: str) -> tuple[str, int, str, int | None, str | None]:
    """`PROVIDER:STATUS:PATH:TIMES:RETRY_AFTER` → its parts (`forever` → None times)."""
    provider, status, path, times, retry_after = text.split(":", 4)
    return (
        provider,
        int(status),
        path,
        None if times == "forever" else int(times),
        retry_after or None,
    )


async def serve(
    *,
    ordinary: int,
    write_delay: float,
    now: datetime | None,
    latency: float = 0.0,
    warm: bool = False,
    faults: tuple[str, ...] = (),
    population: bool = True,
) -> None:
    """Start the three servers, print where they are, serve until told to stop. `latency` adds
    that many seconds to every request; `warm` generates every account before serving, so a
    benchmark does not time the generator; `faults` are scripted as `parse_fault` reads them."""
    world = build_world(ordinary_accounts=ordinary, now=now, population=population)
    if warm:
        for account in world.accounts:
            world.bundle(account.account_id)
    servers = {
        "stripe": FakeProviderServer(
            StripeSandboxServer(world, api_key=SANDBOX_KEYS["stripe"], write_delay=write_delay),
            latency=latency,
        ),
        "orb": FakeProviderServer(
            OrbSandboxServer(world, api_key=SANDBOX_KEYS["orb"], write_delay=write_delay),
            latency=latency,
        ),
        "metronome": FakeProviderServer(
            MetronomeSandboxServer(
                world, api_key=SANDBOX_KEYS["metronome"], write_delay=write_delay
            ),
            latency=latency,
        ),
    }
    for fault in faults:
        provider, status, path, times, retry_after = parse_fault(fault)
        servers[provider].fail(status, retry_after=retry_after, times=times, path=path)
    for server in servers.values():
        server.latency = latency
        await server.start()
    urls = {
        "stripe": servers["stripe"].url,
        "orb": servers["orb"].url + "/v1",
        "metronome": servers["metronome"].url,
    }
    env = {
        "STRIPE_API_KEY": SANDBOX_KEYS["stripe"], "STRIPE_API_BASE": urls["stripe"],
        "ORB_API_KEY": SANDBOX_KEYS["orb"], "ORB_API_BASE": urls["orb"],
        "METRONOME_API_KEY": SANDBOX_KEYS["metronome"], "METRONOME_API_BASE": urls["metronome"],
    }  # fmt: skip
    ready = {
        **urls,
        "keys": SANDBOX_KEYS,
        "env": env,
        "metronome_credit_product_id": SANDBOX_CREDIT_PRODUCT_ID,
    }
    print(json.dumps(ready), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for server in servers.values():
            await server.stop()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and serve."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ordinary", type=int, default=20, help="ordinary accounts (default 20)")
    parser.add_argument("--write-delay", type=float, default=0.0, help="seconds per write")
    parser.add_argument(
        "--now",
        type=datetime.fromisoformat,
        default=None,
        help="the world's now (aware ISO 8601); default today's midnight UTC",
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    parser.add_argument("--warm", action="store_true", help="generate every account first")
    parser.add_argument(
        "--fault", action="append", default=[], help="PROVIDER:STATUS:PATH:TIMES:RETRY_AFTER"
    )
    parser.add_argument(
        "--no-population", action="store_true", help="without the labelled population"
    )
    args = parser.parse_args(argv)
    asyncio.run(
        serve(
            ordinary=args.ordinary, write_delay=args.write_delay, now=args.now,
            latency=args.latency, warm=args.warm, faults=tuple(args.fault),
            population=not args.no_population,
        )
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
