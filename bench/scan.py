"""Benchmarks of the anomaly scan and the webhooks (issue 9 budgets), printed as figures.

    python bench/scan.py                       # everything: quality, 1k and 10k, webhooks
    python bench/scan.py quality [--now DATE] [--seed N]   # precision/recall, misses, false alarms
    python bench/scan.py throughput --accounts 1000 10000
    python bench/scan.py webhooks --events 40

- **quality**: the real scan service (work items, one scan per account, SQLite) over the sandbox
  world with its labelled population, through the real provider clients on the sandbox
  transport; alerts read back from the database are scored against
  `integrations.sandbox.labels.expected_alerts`. Prints precision and recall overall and per
  kind, then every miss and every false alarm (account, kind, period, summary). `--now` and
  `--seed` build the world at another date or seed. Budget: precision and recall ≥ 0.95
  overall and ≥ 0.9 per kind.
- **throughput**: N accounts served by fake Stripe, Orb and Metronome servers on loopback
  (one separate process, each provider limited to 100 requests/s: above it, 429 with
  `Retry-After`), scanned by a separate process (so its peak RSS is the scan's alone) with the
  real clients, the default HTTP policy and each client paced at the providers' 100 requests/s
  (as the composition root paces real providers at their documented limits; the scan's
  adaptive window and the 429s do the rest). Prints accounts scanned and failed, each
  provider's accepted requests/s as a share of its limit (budget: the busiest ≥ 85%, no account
  dropped), the CPU seconds per account of the scanner and of the fake providers, and both
  processes' peak RSS (budget: the scanner's flat from 1,000 to 10,000 accounts).
- **webhooks**: the app served over HTTP with the local Slack; signed Stripe
  `charge.dispute.created` deliveries, one every 1.05 s (the outbox posts at most one message a
  second per channel, as Slack allows); time from sending the webhook to the alert's
  `chat.postMessage` reaching Slack. Budget: p99 < 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RATE_LIMIT = 100.0
FIXED_NOW = datetime(2026, 11, 20, tzinfo=UTC)
BUDGET_OVERALL = 0.95
BUDGET_PER_KIND = 0.9


# --- quality --------------------------------------------------------------------------------


def report(quality: Any, found: dict[str, list[Any]]) -> list[str]:
    """The printed report: figures per kind and overall, then every miss and false alarm."""
    from integrations.sandbox.labels import KINDS

    summaries = {
        (acct, a.kind.value, a.period): a.summary for acct, items in found.items() for a in items
    }
    lines = [f"{'kind':18} {'hits':>5} {'false':>6} {'missed':>7} {'precision':>10} {'recall':>7}"]
    for kind in (*KINDS, "overall"):
        s = quality.overall if kind == "overall" else quality.per_kind[kind]
        lines.append(
            f"{kind:18} {s.hits:5d} {s.false_alarms:6d} {s.misses:7d} "
            f"{s.precision:10.3f} {s.recall:7.3f}"
        )
    lines.append(f"misses ({len(quality.misses)}):")
    lines.extend(f"  {acct} {kind} {period}" for acct, kind, period in quality.misses)
    lines.append(f"false alarms ({len(quality.false_alarms)}):")
    lines.extend(
        f"  {acct} {kind} {period}: {summaries.get((acct, kind, period), '')}"
        for acct, kind, period in quality.false_alarms
    )
    return lines


def within_budget(quality: Any) -> bool:
    """Precision and recall ≥ 0.95 overall and ≥ 0.9 for every kind."""
    o = quality.overall
    if o.precision < BUDGET_OVERALL or o.recall < BUDGET_OVERALL:
        return False
    return all(
        s.precision >= BUDGET_PER_KIND and s.recall >= BUDGET_PER_KIND
        for s in quality.per_kind.values()
    )


async def quality(*, now: datetime | None = None, seed: int = 7) -> bool:
    """Scan the sandbox world with the real scan service; print figures, misses, false alarms."""
    from bot.domain.alert_payload import anomaly_from_payload
    from bot.domain.anomalies import DetectorConfig
    from bot.services.scan import ScanService, usage_days_needed
    from bot.storage.db import Database
    from bot.storage.migrate import upgrade
    from integrations.sandbox.labels import expected_alerts, score
    from integrations.sandbox.providers import sandbox_providers
    from integrations.sandbox.world import build_world

    world = build_world(now=now, seed=seed)
    config = DetectorConfig()
    providers = sandbox_providers(
        world, usage_days=usage_days_needed(config), clock=lambda: world.now
    )
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/quality.db"
        await upgrade(url)
        db = Database(url)
        service = ScanService(
            store=db, providers=providers, config=config, holder="bench", channel=None,
            clock=lambda: world.now.replace(hour=6),
        )  # fmt: skip
        started = time.perf_counter()
        summary = await service.run(post=False, today=world.now.date())
        elapsed = time.perf_counter() - started
        found: dict[str, list[Any]] = {}
        after = 0
        while True:
            async with db.uow() as uow:
                page = await uow.alerts.for_run(summary.run_id, after_id=after, limit=500)
            if not page:
                break
            for alert in page:
                after = alert.id
                found.setdefault(alert.account_id, []).append(anomaly_from_payload(alert.payload))
        await db.dispose()
    for p in providers.values():
        await p.aclose()
    expected = expected_alerts(
        world, usage_days_back=config.usage_days_back, invoice_days_back=config.invoice_days_back
    )
    raised = {acct: {(a.kind.value, a.period) for a in items} for acct, items in found.items()}
    q = score(raised, expected)
    print(f"== quality: world {world.now.date()} seed {seed}, {len(world.accounts)} accounts, "
          f"{sum(len(v) for v in expected.values())} labelled alerts on {len(expected)} "
          "accounts")  # fmt: skip
    print("\n".join(report(q, found)))
    print(f"scan: {summary.accounts} accounts in {elapsed:.1f} s, {summary.alerts} alerts, "
          f"complete={summary.complete}")  # fmt: skip
    ok = within_budget(q)
    print(f"quality budget (≥ {BUDGET_OVERALL} overall, ≥ {BUDGET_PER_KIND} per kind): "
          f"{'met' if ok else 'NOT met'}")  # fmt: skip
    return ok


# --- throughput -------------------------------------------------------------------------------


async def _serve(accounts: int) -> None:
    """Child process: the three fake providers, rate limited, until stdin closes."""
    from integrations.sandbox.metronome_server import MetronomeSandboxServer
    from integrations.sandbox.orb_server import OrbSandboxServer
    from integrations.sandbox.stripe_server import StripeSandboxServer
    from integrations.sandbox.world import build_world
    from tests.support.fakeserver import FakeProviderServer
    from tests.support.providers import KEYS

    # The scan lists at most a few pages ahead of its workers, so 1,000 accounts generated and
    # indexed at a time cover what it is working on (each is generated again if asked later).
    world = build_world(now=FIXED_NOW, ordinary_accounts=max(0, accounts - 12),
                        population=False, max_cached=1000)  # fmt: skip
    # The fake providers hold a big, long-lived heap of generated accounts: full collections
    # of it would stall every request for seconds (and turn the pacing into 429 bursts), so
    # only the young generations are collected (evicted accounts go by reference counting).
    gc.freeze()
    gc.set_threshold(700, 10, 1_000_000)
    servers = {
        "stripe": FakeProviderServer(
            StripeSandboxServer(world, api_key=KEYS["stripe"], max_loaded=1000),
            rate_limit=RATE_LIMIT, record=False,
        ),
        "orb": FakeProviderServer(OrbSandboxServer(world, api_key=KEYS["orb"]),
                                  rate_limit=RATE_LIMIT, record=False),
        "metronome": FakeProviderServer(MetronomeSandboxServer(world, api_key=KEYS["metronome"]),
                                        rate_limit=RATE_LIMIT, record=False),
    }  # fmt: skip
    for server in servers.values():
        await server.start()
    print(json.dumps({n: s.url for n, s in servers.items()}), flush=True)
    cpu = time.process_time()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    cpu = time.process_time() - cpu
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "providers": {n: {"served": s.served, "limited": s.limited} for n, s in servers.items()},
        "cpu": cpu, "rss_mb": rss,
    }), flush=True)  # fmt: skip
    for server in servers.values():
        await server.stop()


async def _scan(urls: dict[str, str]) -> None:
    """Child process: one scan against the fake providers; prints its figures as JSON."""
    from bot.domain.anomalies import DetectorConfig
    from bot.services.scan import ScanOptions, ScanService, usage_days_needed
    from bot.storage.db import Database
    from bot.storage.migrate import upgrade
    from integrations.metronome import MetronomeBillingProvider
    from integrations.orb import OrbBillingProvider
    from integrations.stripe import StripeBillingProvider
    from tests.support.providers import KEYS

    days = usage_days_needed(DetectorConfig())

    def clock() -> datetime:
        return FIXED_NOW

    # Paced at the providers' limit, as the composition root paces real ones at theirs; the
    # scan's adaptive window and the 429s do the rest.
    rate = RATE_LIMIT
    providers: dict[str, Any] = {
        "stripe": StripeBillingProvider(KEYS["stripe"], base_url=urls["stripe"], clock=clock,
                                        usage_days=days, rate_limit=rate),
        "orb": OrbBillingProvider(KEYS["orb"], base_url=urls["orb"] + "/v1", clock=clock,
                                  usage_days=days, rate_limit=rate),
        "metronome": MetronomeBillingProvider(KEYS["metronome"], base_url=urls["metronome"],
                                              clock=clock, usage_days=days, rate_limit=rate),
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/scan.db"
        await upgrade(url)
        db = Database(url)
        service = ScanService(
            store=db, providers=providers, config=DetectorConfig(), holder="bench",
            channel=None, options=ScanOptions(),
            clock=lambda: FIXED_NOW.replace(hour=6),
        )  # fmt: skip
        cpu = time.process_time()
        summary = await service.run(post=False, today=FIXED_NOW.date())
        cpu = time.process_time() - cpu
        await db.dispose()
    for p in providers.values():
        await p.aclose()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "accounts": summary.accounts, "failed": len(summary.failed_accounts),
        "list_failures": dict(summary.list_failures), "seconds": summary.seconds,
        "calls": dict(summary.calls), "throttled": dict(summary.throttled), "rss_mb": rss,
        "cpu": cpu,
        "alerts": summary.alerts, "windows": {n: round(lim.peak, 1)
                                              for n, lim in service.limiters.items()},
    }), flush=True)  # fmt: skip


def throughput(sizes: list[int]) -> bool:
    """Run a server process and a scanner process per size; print the figures."""
    ok = True
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for n in sizes:
        server = subprocess.Popen(
            [sys.executable, __file__, "_serve", str(n)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert server.stdout is not None and server.stdin is not None
        urls = json.loads(server.stdout.readline())
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        scan = subprocess.run(
            [sys.executable, __file__, "_scan", json.dumps(urls)],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        wall = time.perf_counter() - started
        load_after = os.getloadavg()[0]
        server.stdin.close()
        served = json.loads(server.stdout.readline())
        counts = served["providers"]
        server.wait(timeout=30)
        if scan.returncode != 0:
            print(scan.stderr[-3000:])
            return False
        figures = json.loads(scan.stdout.strip().splitlines()[-1])
        seconds = figures["seconds"]
        print(f"== throughput: {n} accounts, each provider limited to {RATE_LIMIT:.0f} req/s")
        print(f"scanned {figures['accounts']} accounts in {seconds:.1f} s (wall {wall:.1f} s), "
              f"{figures['failed']} failed, listing failures {figures['list_failures'] or 'none'}, "
              f"{figures['alerts']} alerts")  # fmt: skip
        busiest = 0.0
        for name, c in counts.items():
            rate = c["served"] / seconds
            share = rate / RATE_LIMIT
            busiest = max(busiest, share)
            print(f"  {name:9} {c['served']:6d} accepted, {c['limited']:5d} answered 429: "
                  f"{rate:6.1f} req/s = {share * 100:5.1f}% of the limit; peak window "
                  f"{figures['windows'].get(name)}")  # fmt: skip
        print(f"  busiest provider at {busiest * 100:.1f}% of its limit")
        scanned = max(1, figures["accounts"])
        print(f"  scanner: {figures['cpu']:.1f} s CPU ({figures['cpu'] / scanned * 1000:.1f} ms "
              f"per account), peak RSS {figures['rss_mb']:.0f} MB; fake providers: "
              f"{served['cpu']:.1f} s CPU ({served['cpu'] / scanned * 1000:.1f} ms per account), "
              f"peak RSS {served['rss_mb']:.0f} MB")  # fmt: skip
        print(
            f"  {os.cpu_count()} CPUs, load average {load_before:.1f} at the start and "
            f"{load_after:.1f} at the end (other processes compete for the same cores)"
        )
        if busiest < 0.85 or figures["failed"] or figures["accounts"] < n:
            ok = False
    return ok


# --- webhooks -------------------------------------------------------------------------------


async def webhooks(events: int) -> bool:
    """Webhook received → alert posted, on loopback."""
    import httpx
    from slack_sdk.web.async_client import AsyncWebClient

    from bot.app import build_app
    from bot.domain.webhooks import sign_stripe
    from bot.server import HttpServer
    from bot.settings import Settings
    from integrations.sandbox.slack import LocalSlack, SlackCall

    secret = "whsec_bench_0000"
    posted: dict[str, float] = {}

    def on_call(call: SlackCall) -> None:
        if call.method == "chat.postMessage":
            text = str(call.args.get("text") or "")
            for word in text.split():
                if word.startswith("cus_bench"):
                    posted.setdefault(word, time.perf_counter())

    slack = LocalSlack(on_call=on_call)
    await slack.start()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.load(
            slack_bot_token=slack.token, slack_signing_secret="bench", slack_api_url=slack.base_url,
            database_url=f"sqlite+aiosqlite:///{tmp}/hooks.db", oncall_channel="C0ONCALL",
            stripe_webhook_secret=secret, scan_interval_minutes=0,
        )  # fmt: skip
        client = AsyncWebClient(token=slack.token, base_url=slack.base_url)
        app = build_app(settings, slack_client=client, providers={})
        server = HttpServer(app, host="127.0.0.1", port=0)
        await server.start()
        sent: dict[str, float] = {}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            for i in range(events):
                customer = f"cus_bench{i:04d}"
                event = {
                    "id": f"evt_bench_{i}", "object": "event", "type": "charge.dispute.created",
                    "created": int(time.time()),
                    "data": {"object": {
                        "id": f"dp_bench{i}", "object": "dispute", "amount": 12000 + i,
                        "currency": "usd", "reason": "fraudulent", "status": "needs_response",
                        "charge": f"ch_bench{i}", "customer": customer, "created": int(time.time()),
                        "evidence_details": {"due_by": int(time.time()) + 7 * 86400},
                    }},
                }  # fmt: skip
                body = json.dumps(event).encode()
                signature = sign_stripe(body, secret, timestamp=int(time.time()))
                headers = {"Stripe-Signature": signature, "Content-Type": "application/json"}
                sent[customer] = time.perf_counter()
                response = await http.post("/webhooks/stripe", content=body, headers=headers)
                assert response.status_code == 200, response.text
                await asyncio.sleep(1.05)
            deadline = time.perf_counter() + 10
            while len(posted) < events and time.perf_counter() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await server.stop()
    await slack.stop()
    latencies = sorted(posted[c] - sent[c] for c in sent if c in posted)
    if not latencies:
        print("no alert was posted")
        return False
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"== webhooks: {events} signed Stripe disputes, one every 1.05 s; "
          f"{len(latencies)} alerts posted")  # fmt: skip
    print(f"webhook → alert posted: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
          f"max {latencies[-1] * 1000:.0f} ms")  # fmt: skip
    return p99 < 1.0 and len(latencies) == events


def main() -> int:
    """Run the chosen benchmarks; exit 1 when a budget is not met."""
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        asyncio.run(_serve(int(sys.argv[2])))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_scan":
        asyncio.run(_scan(json.loads(sys.argv[2])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="*", default=["quality", "throughput", "webhooks"],
                        choices=["quality", "throughput", "webhooks"])  # fmt: skip
    parser.add_argument("--accounts", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--events", type=int, default=40)
    parser.add_argument("--now", type=date.fromisoformat, default=None,
                        help="quality: the world's date (default today)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=7, help="quality: the world's seed")
    args = parser.parse_args()
    ok = True
    if "quality" in args.what:
        now = datetime.combine(args.now, datetime.min.time(), UTC) if args.now else None
        ok &= asyncio.run(quality(now=now, seed=args.seed))
    if "throughput" in args.what:
        ok &= throughput(args.accounts)
    if "webhooks" in args.what:
        ok &= asyncio.run(webhooks(args.events))
    print(f"budgets: {'all met' if ok else 'NOT all met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
