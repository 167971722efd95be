"""Lookup budgets of issue 3, measured over real loopback HTTP against the fake providers.

1. Concurrency: with each fake provider adding 300 ms per request, a lookup of an account in all
   three providers should end within 1.3x the slowest single provider's chain of calls.
2. Faults: with one provider answering 500 forever and another 429 forever, under the production
   retry policy, the answer should still come within 20 s, naming the failed providers.
3. The ack stays fast while lookups run: p99 of `/billing help` acks during concurrent lookups.
4. The curve (issue 11): 1, 10, 40 and 100 concurrent lookups of DIFFERENT accounts, 300 ms per
   provider call, clients paced at production rates (Stripe's live 100/s; Orb and Metronome
   publish none, 100/s):
   p99 at 40 ≤ 3x a single lookup, at 100 ≤ 6x, every answer complete, no provider named as
   failing.

    python bench/lookup.py [--latency 0.3] [--account acct_wonka] [--only curve]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.domain.identifiers import classify_account
from bot.services.lookup import LookupService
from integrations.http import RetryPolicy
from integrations.sandbox.world import SandboxWorld
from tests.support.app import serve_app
from tests.support.fakeserver import Fault
from tests.support.providers import FakeProviders, small_world
from tests.support.slack import FORM, signed_headers, slash_command_body


async def start_fakes(world: SandboxWorld | None = None) -> FakeProviders:
    """The three fake providers on loopback (over `world`, default the small test world)."""
    from integrations.sandbox.metronome_server import MetronomeSandboxServer
    from integrations.sandbox.orb_server import OrbSandboxServer
    from integrations.sandbox.stripe_server import StripeSandboxServer
    from tests.support.fakeserver import FakeProviderServer
    from tests.support.providers import KEYS

    world = world or small_world()
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


REPO = Path(__file__).resolve().parents[1]
PRODUCTION_RATES = {"stripe": 100.0, "orb": 100.0, "metronome": 100.0}


def _p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(sorted(values), n=100, method="inclusive")[98]


async def curve(latency: float) -> None:
    """Budget 4: p99 of N concurrent lookups of different accounts against one lookup alone.

    The providers run in a process of their own (warmed: every account generated first), so
    the figures measure the app's lookups, not the fake servers sharing its event loop."""
    import json
    import subprocess

    from integrations.metronome import MetronomeBillingProvider
    from integrations.orb import OrbBillingProvider
    from integrations.stripe import StripeBillingProvider
    from tests.support.providers import FIXED_NOW

    proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child
        [sys.executable, "-m", "tests.support.provider_process", "--ordinary", "120",
         "--latency", str(latency), "--warm", "--now", FIXED_NOW.isoformat()],
        stdout=subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    assert proc.stdout is not None
    ready = json.loads(await asyncio.to_thread(proc.stdout.readline))
    keys = ready["keys"]

    def clients() -> dict[str, Any]:
        def clock() -> Any:
            return FIXED_NOW

        return {
            "stripe": StripeBillingProvider(keys["stripe"], base_url=ready["stripe"],
                                            rate_limit=PRODUCTION_RATES["stripe"], clock=clock),
            "orb": OrbBillingProvider(keys["orb"], base_url=ready["orb"],
                                      rate_limit=PRODUCTION_RATES["orb"], clock=clock),
            "metronome": MetronomeBillingProvider(keys["metronome"], base_url=ready["metronome"],
                                                  rate_limit=PRODUCTION_RATES["metronome"],
                                                  clock=clock),
        }  # fmt: skip

    from integrations.sandbox.world import build_world

    world = build_world(now=FIXED_NOW, ordinary_accounts=120)
    accounts = [
        a.account_id
        for a in world.accounts
        if a.plant is None and "aperture" not in a.account_id and a.story is None
    ][:100]
    try:
        alone: list[float] = []
        for account in accounts[:12]:
            batch = clients()
            seconds, _ = await timed_lookup(LookupService(batch), account)
            alone.append(seconds)
            for c in batch.values():
                await c.aclose()
        single = _p99(alone)
        print(f"  one lookup alone: p50={statistics.median(alone):.2f} s p99={single:.2f} s "
              f"(12 accounts, one at a time)")  # fmt: skip
        for n, budget in ((10, None), (40, 3.0), (100, 6.0)):
            batch = clients()
            service = LookupService(batch)
            cpu = time.process_time()
            results = await asyncio.gather(*(timed_lookup(service, a) for a in accounts[:n]))
            cpu = time.process_time() - cpu
            calls = {name: c.http.calls for name, c in batch.items()}
            for c in batch.values():
                await c.aclose()
            seconds = [r[0] for r in results]
            failed = [r[1] for r in results if r[1] != "none"]
            ratio = _p99(seconds) / single
            verdict = "" if budget is None else (" OK" if ratio <= budget else " OVER BUDGET")
            shown = "" if budget is None else f", budget {budget:.0f}x"
            print(
                f"  {n:3d} concurrent: p50={statistics.median(seconds):5.2f} s "
                f"p99={_p99(seconds):5.2f} s ({ratio:4.2f}x one lookup{shown}){verdict}; "
                f"answers naming a failing provider: {len(failed)}; app CPU {cpu:.1f} s; "
                f"calls {calls}"
            )
            for reason in sorted(set(failed))[:3]:
                print(f"      e.g. {reason}")
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 20)


async def main() -> None:
    """Run the measurements."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--account", default="acct_wonka")
    parser.add_argument("--only", choices=["concurrency", "faults", "ack", "curve"])
    args = parser.parse_args()
    fakes = await start_fakes()
    try:
        if args.only in (None, "concurrency"):
            print(
                f"1. concurrency ({args.latency * 1000:.0f} ms added per request, {args.account})"
            )
            await concurrency(fakes, args.account, args.latency)
        if args.only in (None, "faults"):
            print("2. faults (Orb 500 forever, Stripe 429 forever with Retry-After: 2)")
            await faults(fakes, args.account)
        if args.only in (None, "ack"):
            print("3. ack latency during lookups")
            await ack_under_load(fakes, args.account, args.latency)
    finally:
        for server in fakes.servers().values():
            await server.stop()
    if args.only in (None, "curve"):
        print(
            f"4. concurrent lookups of different accounts ({args.latency * 1000:.0f} ms per call)"
        )
        await curve(args.latency)


if __name__ == "__main__":
    asyncio.run(main())
