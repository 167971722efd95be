"""Lookup budgets of issue 3, measured over real loopback HTTP against the fake providers.

1. Concurrency: with each fake provider adding 300 ms per request, a lookup of an account in all
   three providers should end within 1.3x the slowest single provider's chain of calls.
2. Faults: with one provider answering 500 forever and another 429 forever, under the production
   retry policy, the answer should still come within 20 s, naming the failed providers.
3. The ack stays fast while lookups run: p99 of `/billing help` acks during concurrent lookups.

    python bench/lookup.py [--latency 0.3] [--account acct_wonka]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.domain.identifiers import classify_account
from bot.services.lookup import LookupService
from integrations.http import RetryPolicy
from tests.support.app import serve_app
from tests.support.fakeserver import Fault
from tests.support.providers import FakeProviders, small_world
from tests.support.slack import FORM, signed_headers, slash_command_body


async def start_fakes() -> FakeProviders:
    """The three fake providers on loopback."""
    from integrations.sandbox.metronome_server import MetronomeSandboxServer
    from integrations.sandbox.orb_server import OrbSandboxServer
    from integrations.sandbox.stripe_server import StripeSandboxServer
    from tests.support.fakeserver import FakeProviderServer
    from tests.support.providers import KEYS

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


async def timed_lookup(service: LookupService, account: str) -> tuple[float, str]:
    """Seconds for one snapshot, and which providers failed."""
    started = time.perf_counter()
    snap = await service.snapshot(classify_account(account))
    failed = ", ".join(f"{f.provider}: {f.reason}" for f in snap.failures) or "none"
    return time.perf_counter() - started, failed


async def concurrency(fakes: FakeProviders, account: str, latency: float) -> None:
    """Budget 1: all providers at once vs. the slowest provider alone."""
    fakes.set_latency(latency)
    policy = RetryPolicy()
    single: dict[str, float] = {}
    for name in ("stripe", "orb", "metronome"):
        clients = fakes.clients(policy)
        alone = LookupService({name: clients[name]})
        seconds, _ = await timed_lookup(alone, account)
        requests = sum(len(s.requests) for s in fakes.servers().values())
        single[name] = seconds
        print(f"  {name:9s} alone: {seconds * 1000:7.0f} ms")
        for c in clients.values():
            await c.aclose()
        for s in fakes.servers().values():
            s.requests.clear()
        del requests
    clients = fakes.clients(policy)
    both = LookupService(clients)
    seconds, failed = await timed_lookup(both, account)
    calls = {n: len(s.requests) for n, s in fakes.servers().items()}
    for c in clients.values():
        await c.aclose()
    slowest = max(single.values())
    ratio = seconds / slowest
    verdict = "OK" if ratio <= 1.3 else "OVER BUDGET"
    print(
        f"  all three:       {seconds * 1000:7.0f} ms  "
        f"(requests per provider {calls}, failed: {failed})"
    )
    print(f"  ratio to slowest single provider: {ratio:.2f} (budget 1.30) {verdict}")
    fakes.set_latency(0.0)


async def faults(fakes: FakeProviders, account: str) -> None:
    """Budget 2: Orb 500 forever, Stripe 429 forever, production retry policy."""
    fakes.orb.add_fault(Fault("status", status=500, times=None))
    fakes.stripe.add_fault(Fault("status", status=429, headers={"Retry-After": "2"}, times=None))
    clients = fakes.clients(RetryPolicy())
    service = LookupService(clients)
    seconds, failed = await timed_lookup(service, account)
    for c in clients.values():
        await c.aclose()
    verdict = "OK" if seconds < 20 else "OVER BUDGET"
    print(f"  answer after {seconds:.1f} s (budget 20 s) {verdict}; failed providers: {failed}")
    fakes.orb.clear_faults()
    fakes.stripe.clear_faults()


async def ack_under_load(fakes: FakeProviders, account: str, latency: float) -> None:
    """Budget 3: `/billing help` acks while 20 lookups at a time are running."""
    from integrations.sandbox.slack import LocalSlack
    from tests.support.slack import BOT_TOKEN

    fakes.set_latency(latency)
    tmp = tempfile.mkdtemp()
    async with LocalSlack(token=BOT_TOKEN) as slack:
        clients = fakes.clients(RetryPolicy())
        async with serve_app(slack, f"sqlite+aiosqlite:///{tmp}/b.db", providers=clients) as app:
            lookups = [app.command(account, key=f"l{i}") for i in range(20)]
            lookup_tasks = [asyncio.create_task(c) for c in lookups]
            await asyncio.sleep(0.05)
            latencies = []
            for i in range(200):
                body = slash_command_body("help", response_url=slack.response_url(f"h{i}"))
                started = time.perf_counter()
                response = await app.post_slack(body, signed_headers(body, content_type=FORM))
                latencies.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200
            await asyncio.gather(*lookup_tasks)
            await app.settle(60)
            done = sum(1 for i in range(20) if app.responses(f"l{i}"))
    ms = sorted(latencies)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    print(
        f"  help ack while 20 lookups run: p50={q[49]:.1f} ms p99={q[98]:.1f} ms; "
        f"lookups answered: {done}/20"
    )
    fakes.set_latency(0.0)


async def main() -> None:
    """Run the three measurements."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--account", default="acct_wonka")
    args = parser.parse_args()
    fakes = await start_fakes()
    try:
        print(f"1. concurrency ({args.latency * 1000:.0f} ms added per request, {args.account})")
        await concurrency(fakes, args.account, args.latency)
        print("2. faults (Orb 500 forever, Stripe 429 forever with Retry-After: 2)")
        await faults(fakes, args.account)
        print("3. ack latency during lookups")
        await ack_under_load(fakes, args.account, args.latency)
    finally:
        for server in fakes.servers().values():
            await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
