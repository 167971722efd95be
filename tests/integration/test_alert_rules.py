"""The alert rules of `bot.services.alerts` on their own, over real storage (SQLite and
PostgreSQL): dedupe on (account, kind, period), re-notifying only when worse than what on-call
was told (severity, or 1.25× the impact in the same currency), reopening acknowledged alerts that
got worse, quiet snoozes that remind when they end, and "not an anomaly" until the pattern
resurfaces."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from bot.domain.anomalies import AlertKind, Anomaly, Severity
from bot.domain.money import Money
from bot.services.alerts import Recorded, apply_feedback, is_worse, record_anomaly
from bot.storage.db import Database

pytestmark = pytest.mark.postgres
NOW = datetime(2026, 11, 20, 6, tzinfo=UTC)
ONCALL = "C0ONCALL"


def dispute(amount: str = "450.00", *, currency: str = "usd", severity: str = "medium") -> Anomaly:
    """A dispute alert on acct_rules of `amount`."""
    money = Money(Decimal(amount), currency)
    return Anomaly(
        account_id="acct_rules", kind=AlertKind.DISPUTE_OPENED, severity=Severity(severity),
        period=date(2026, 11, 18), expected=Money(Decimal(0), currency), actual=money,
        impact=money, impact_pct=None, summary=f"Dispute of {money.format()}",
        why="Rule: a dispute was opened.", drivers=(), provider="stripe", refs=("dp_1",),
        series=(), fingerprint="dispute_opened:fraudulent", magnitude=money.amount,
    )  # fmt: skip


async def record(db: Database, anomaly: Anomaly, *, at: datetime = NOW,
                 channel: str | None = ONCALL) -> Recorded:  # fmt: skip
    async with db.uow() as uow:
        done = await record_anomaly(uow, anomaly, source="scan", now=at, channel=channel)
        await uow.commit()
    return done


async def status(db: Database, alert_id: int) -> str:
    async with db.uow() as uow:
        alert = await uow.alerts.get(alert_id)
    assert alert is not None
    return alert.status


async def press(db: Database, alert_id: int, action: str, *, at: datetime = NOW) -> None:
    async with db.uow() as uow:
        await apply_feedback(uow, alert_id, action, user_id="U0ONCALL", now=at)  # type: ignore[arg-type]
        await uow.commit()


def test_worse_means_higher_severity_or_a_quarter_more_in_the_same_currency() -> None:
    """1.25× the told impact is worse, 1.2× is not (whatever the severity); another currency is
    never compared, unless the severity rose; never told is always worse."""
    told = {"notified_severity": "medium", "notified_impact": Decimal(100)}
    assert is_worse("medium", Decimal(125), **told, currency="usd", notified_currency="usd")
    assert not is_worse("medium", Decimal(120), **told, currency="usd", notified_currency="usd")
    assert not is_worse("medium", Decimal(9000), **told, currency="eur", notified_currency="usd")
    assert is_worse("high", Decimal(1), **told, currency="eur", notified_currency="usd")
    assert is_worse("low", Decimal(1000), **told, currency="usd", notified_currency="usd")
    assert is_worse("low", Decimal(1), notified_severity=None, notified_impact=None)


async def test_a_repeat_is_deduplicated_and_only_a_worse_one_renotifies(
    migrated_db: Database,
) -> None:
    """The same (account, kind, period) is one alert: posted once, quiet when no worse, told
    again (update and thread reply) at 1.25× the impact or a higher severity."""
    first = await record(migrated_db, dispute("400.00"))
    assert first.new and first.notified == "post"
    same = await record(migrated_db, dispute("480.00"))  # 1.2×: not worse
    assert (same.alert_id, same.new, same.notified) == (first.alert_id, False, None)
    bigger = await record(migrated_db, dispute("500.00"))  # 1.25× the 400 told
    assert bigger.notified == "escalate"
    again = await record(migrated_db, dispute("600.00"))  # 1.2× the 500 told now
    assert again.notified is None
    severer = await record(migrated_db, dispute("600.00", severity="high"))
    assert severer.notified == "escalate"


async def test_a_currency_change_is_not_worse_unless_the_severity_rose(
    migrated_db: Database,
) -> None:
    """Told of USD 100, the same alert now at EUR 5,000 is not compared and stays quiet; at a
    higher severity it is told; afterwards it compares in euros."""
    told = await record(migrated_db, dispute("100.00", severity="low"))
    euros = await record(migrated_db, dispute("5000.00", currency="eur", severity="low"))
    assert euros.notified is None
    severer = await record(migrated_db, dispute("5000.00", currency="eur", severity="high"))
    assert severer.notified == "escalate"
    async with migrated_db.uow() as uow:
        alert = await uow.alerts.get(told.alert_id)
    assert alert is not None
    assert (alert.notified_impact, alert.notified_currency) == (Decimal("5000.00"), "eur")
    assert (await record(migrated_db, dispute("6250.00", currency="eur", severity="high"))).notified


async def test_acknowledged_reopens_when_worse_and_a_snooze_is_quiet_then_reminds(
    migrated_db: Database,
) -> None:
    """An acknowledged alert that gets worse opens again and is told; a snoozed one stays quiet
    however bad it gets until the snooze ends, then opens again with a reminder."""
    alert_id = (await record(migrated_db, dispute("400.00"))).alert_id
    await press(migrated_db, alert_id, "acknowledge")
    assert (await record(migrated_db, dispute("450.00"))).notified is None
    assert await status(migrated_db, alert_id) == "acknowledged"
    assert (await record(migrated_db, dispute("600.00"))).notified == "escalate"
    assert await status(migrated_db, alert_id) == "open"

    await press(migrated_db, alert_id, "snooze")
    worst = dispute("9000.00", severity="high")
    assert (await record(migrated_db, worst, at=NOW + timedelta(hours=23))).notified is None
    assert await status(migrated_db, alert_id) == "snoozed"
    assert (await record(migrated_db, worst, at=NOW + timedelta(hours=25))).notified == "remind"
    assert await status(migrated_db, alert_id) == "open"


async def test_not_an_anomaly_stays_quiet_until_it_resurfaces(migrated_db: Database) -> None:
    """After "Not an anomaly" the same alert seen again is quiet; once the detectors say it
    resurfaced (grew past the suppression) it opens again and on-call is told."""
    alert_id = (await record(migrated_db, dispute("400.00"))).alert_id
    await press(migrated_db, alert_id, "not_anomaly")
    async with migrated_db.uow() as uow:
        assert len(await uow.alerts.suppressions(["acct_rules"])) == 1
    assert (await record(migrated_db, dispute("900.00"))).notified is None
    assert await status(migrated_db, alert_id) == "not_anomaly"
    back = dataclasses.replace(dispute("900.00"), resurfaced=True)
    assert (await record(migrated_db, back)).notified == "escalate"
    assert await status(migrated_db, alert_id) == "open"


async def test_a_scan_that_does_not_post_stores_and_the_next_posting_one_tells(
    migrated_db: Database,
) -> None:
    """Without a channel the alert is stored and nobody is told; the first posting scan posts
    it (once)."""
    quiet = await record(migrated_db, dispute("400.00"), channel=None)
    assert quiet.new and quiet.notified is None
    told = await record(migrated_db, dispute("400.00"))
    assert (told.new, told.notified) == (False, "post")
    assert (await record(migrated_db, dispute("400.00"))).notified is None
