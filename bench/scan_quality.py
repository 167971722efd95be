"""Quality of the anomaly detectors on the sandbox's labelled population.

Builds the sandbox world (stories, 300 ordinary accounts, the labelled population), takes every
account's billing snapshot through the real Stripe, Orb and Metronome clients over the sandbox
transport (the lookup service, as a scan would), runs `detect` on each, and compares the alerts
with `integrations.sandbox.labels.expected_alerts`. Prints precision and recall overall and per
kind, then every miss and every false alarm with its account, kind, period and summary, and the
time taken.

    python bench/scan_quality.py [--now 2026-11-20] [--seed 7] [--concurrency 16]

Budget (detectors issue): precision and recall ≥ 0.95 overall and ≥ 0.9 per kind.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, date, datetime

from bot.domain.anomalies import Anomaly, DetectorConfig, detect
from bot.domain.identifiers import classify_account
from bot.services.lookup import LookupService
from integrations.sandbox.labels import KINDS, Quality, expected_alerts, score
from integrations.sandbox.providers import sandbox_providers
from integrations.sandbox.world import SandboxWorld, build_world

BUDGET_OVERALL = 0.95
BUDGET_PER_KIND = 0.9


def usage_days(config: DetectorConfig) -> int:
    """Days of usage a snapshot needs for `config`: the baseline, the checked days and today."""
    return config.lookback_days + config.usage_days_back + 1


async def scan_world(
    world: SandboxWorld, config: DetectorConfig, *, concurrency: int = 16
) -> tuple[dict[str, list[Anomaly]], float, float]:
    """account ID → its anomalies, plus (seconds of snapshots, CPU seconds of `detect`)."""
    providers = sandbox_providers(world, usage_days=usage_days(config), clock=lambda: world.now)
    lookup = LookupService(providers, clock=lambda: world.now, deadline=120.0)
    gate = asyncio.Semaphore(concurrency)
    today = world.now.date()
    detect_cpu = 0.0

    async def one(account_id: str) -> tuple[str, list[Anomaly]]:
        nonlocal detect_cpu
        async with gate:
            snapshot = await lookup.snapshot(classify_account(account_id))
        started = time.process_time()
        result = detect(snapshot, config=config, today=today)
        detect_cpu += time.process_time() - started
        return account_id, list(result.anomalies)

    started = time.perf_counter()
    try:
        pairs = await asyncio.gather(*(one(a.account_id) for a in world.accounts))
    finally:
        for provider in providers.values():
            await provider.aclose()
    return dict(pairs), time.perf_counter() - started, detect_cpu


def report(quality: Quality, found: dict[str, list[Anomaly]]) -> list[str]:
    """The printed report: figures per kind and overall, then every miss and false alarm."""
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


def within_budget(quality: Quality) -> bool:
    """Precision and recall ≥ 0.95 overall and ≥ 0.9 for every kind."""
    o = quality.overall
    if o.precision < BUDGET_OVERALL or o.recall < BUDGET_OVERALL:
        return False
    return all(
        s.precision >= BUDGET_PER_KIND and s.recall >= BUDGET_PER_KIND
        for s in quality.per_kind.values()
    )


def main() -> int:
    """Scan the world, print the figures; exit 1 when the budget is not met."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--now", type=date.fromisoformat, default=None, help="the world's date")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    now = None
    if args.now is not None:
        now = datetime(args.now.year, args.now.month, args.now.day, tzinfo=UTC)
    world = build_world(seed=args.seed, now=now)
    config = DetectorConfig()
    found, elapsed, cpu = asyncio.run(scan_world(world, config, concurrency=args.concurrency))
    expected = expected_alerts(
        world, usage_days_back=config.usage_days_back, invoice_days_back=config.invoice_days_back
    )
    raised = {acct: {(a.kind.value, a.period) for a in items} for acct, items in found.items()}
    quality = score(raised, expected)
    labelled = sum(len(v) for v in expected.values())
    print(
        f"world {world.now.date()} seed {args.seed}: {len(world.accounts)} accounts, "
        f"{labelled} labelled alerts on {len(expected)} accounts"
    )
    print("\n".join(report(quality, found)))
    print(
        f"time: {elapsed:.1f} s for all snapshots and detection "
        f"({elapsed / len(world.accounts) * 1000:.0f} ms per account wall, concurrency "
        f"{args.concurrency}); detect alone {cpu:.2f} s CPU "
        f"({cpu / len(world.accounts) * 1000:.1f} ms per account)"
    )
    ok = within_budget(quality)
    print(f"budget (≥ {BUDGET_OVERALL} overall, ≥ {BUDGET_PER_KIND} per kind): "
          f"{'met' if ok else 'NOT met'}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
