"""The anomaly detectors on the sandbox world, measured against its labels: every account's
snapshot through the real Stripe, Orb and Metronome clients (the lookup service over the sandbox
transport, as a scan takes them), `detect` on each, compared with `expected_alerts`.

The world here has every story, the whole labelled population and the first 100 ordinary
accounts, to keep the suite fast; `bench/scan.py quality` measures the default world (all 300)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from bot.domain.anomalies import Anomaly, DetectorConfig, detect
from bot.domain.identifiers import classify_account
from bot.services.lookup import LookupService
from integrations.sandbox.labels import KINDS, Quality, expected_alerts, score
from integrations.sandbox.population import POPULATION
from integrations.sandbox.providers import sandbox_providers
from integrations.sandbox.world import SandboxWorld, build_world

NOW = datetime(2026, 11, 20, tzinfo=UTC)
CONFIG = DetectorConfig()
#: The issue's assertion; the bench (`bench/scan.py quality`) holds the 0.95 target.
FLOOR = 0.9


async def _scan(world: SandboxWorld) -> dict[str, list[Anomaly]]:
    days = CONFIG.lookback_days + CONFIG.usage_days_back + 1
    providers = sandbox_providers(world, usage_days=days, clock=lambda: world.now)
    lookup = LookupService(providers, clock=lambda: world.now, deadline=120.0)
    gate = asyncio.Semaphore(16)

    async def one(account_id: str) -> tuple[str, list[Anomaly]]:
        async with gate:
            snapshot = await lookup.snapshot(classify_account(account_id))
        assert not snapshot.failures, f"{account_id}: {snapshot.failures}"
        found = detect(snapshot, config=CONFIG, today=world.now.date())
        return account_id, list(found.anomalies)

    try:
        return dict(await asyncio.gather(*(one(a.account_id) for a in world.accounts)))
    finally:
        for provider in providers.values():
            await provider.aclose()


@pytest.fixture(scope="module")
def world() -> SandboxWorld:
    """The stories, 100 ordinary accounts and the labelled population, at a fixed date."""
    return build_world(now=NOW, ordinary_accounts=100)


@pytest.fixture(scope="module")
def scanned(world: SandboxWorld) -> dict[str, list[Anomaly]]:
    """Every account's anomalies (one scan for the module)."""
    return asyncio.run(_scan(world))


@pytest.fixture(scope="module")
def quality(world: SandboxWorld, scanned: dict[str, list[Anomaly]]) -> Quality:
    """The scan against the labels."""
    raised = {acct: {(a.kind.value, a.period) for a in items} for acct, items in scanned.items()}
    expected = expected_alerts(
        world, usage_days_back=CONFIG.usage_days_back, invoice_days_back=CONFIG.invoice_days_back
    )
    return score(raised, expected)


def _figures(quality: Quality) -> str:
    rows = [
        f"{s.kind}: precision {s.precision:.3f} recall {s.recall:.3f} "
        f"({s.hits} hits, {s.false_alarms} false, {s.misses} missed)"
        for s in (*quality.per_kind.values(), quality.overall)
    ]
    rows += [f"missed {a} {k} {p}" for a, k, p in quality.misses]
    rows += [f"false alarm {a} {k} {p}" for a, k, p in quality.false_alarms]
    return "\n".join(rows)


def test_precision_and_recall_on_the_labelled_population(quality: Quality) -> None:
    """Precision and recall are at least 0.9 overall (per-kind figures shown on failure)."""
    overall = quality.overall
    assert overall.hits + overall.misses >= 45, "the population lost its labels"
    assert overall.precision >= FLOOR and overall.recall >= FLOOR, _figures(quality)


def test_every_kind_is_planted_and_measured(quality: Quality) -> None:
    """Each alert kind has planted anomalies in the population, so each figure means something."""
    for kind in KINDS:
        s = quality.per_kind[kind]
        assert s.hits + s.misses >= 4, f"{kind} has too few labelled alerts"


def test_the_existing_stories_come_out_of_a_scan(scanned: dict[str, list[Anomaly]]) -> None:
    """northwind's spike, globex's duplicate, contoso's dunning and fabrikam's dispute alert."""
    got = {acct: {a.kind.value for a in items} for acct, items in scanned.items()}
    assert "usage_spike" in got["acct_northwind"]
    assert "duplicate_charge" in got["acct_globex"]
    assert "payment_failed" in got["acct_contoso"]
    assert "dispute_opened" in got["acct_fabrikam"]


def test_tricky_accounts_and_calm_stories_stay_quiet(scanned: dict[str, list[Anomaly]]) -> None:
    """Growth, weekend-heavy usage, planned upgrades, retried payments, one-off credits, usual
    peaks, new accounts, noise and the plan-change, coupon, add-on, tax and commit stories raise
    nothing."""
    quiet = [p.account_id for p in POPULATION if not p.expected]
    quiet += ["acct_initech", "acct_hooli", "acct_tyrell", "acct_soylent", "acct_cyberdyne"]
    noisy = {a: [x.summary for x in scanned[a]] for a in quiet if scanned[a]}
    assert not noisy


def test_alerts_carry_what_an_alert_shows(scanned: dict[str, list[Anomaly]]) -> None:
    """Every alert has a one-line summary, a why, drivers, a positive impact, a fingerprint, and a
    sparkline for usage and invoice kinds."""
    alerts = [a for items in scanned.values() for a in items]
    assert alerts
    for a in alerts:
        assert a.summary and "\n" not in a.summary
        assert a.why and a.drivers and a.fingerprint.startswith(a.kind.value)
        assert a.impact.amount > 0
        if a.kind.value in ("usage_spike", "invoice_jump"):
            assert 0 < len(a.sparkline()) <= 60
