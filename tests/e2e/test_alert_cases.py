"""Anomaly alerts are cases (DESIGN §11): each new alert is recorded with its kind, its
feedback when on-call answers, and the report's alerts section shows the precision."""

from __future__ import annotations

from datetime import timedelta

from bot.services.report import build_report
from handlers.alert_views import ACK_ACTION, NOT_ANOMALY_ACTION
from tests.e2e.test_alerts import Scanning, _alert_ids, _click, scanning  # noqa: F401
from tests.support.providers import FIXED_NOW


async def test_alerts_and_their_feedback_are_in_the_report(scanning: Scanning) -> None:  # noqa: F811
    """A scan's alerts are cases by kind; Acknowledge counts as right, Not an anomaly as wrong;
    a rescan adds no case."""
    running = scanning.running
    await scanning.scan()
    await scanning.scan()
    ids = await _alert_ids(running)
    await _click(running, ACK_ACTION, ids[("acct_fabrikam", "dispute_opened")], "U0ONCALL1")
    await _click(running, NOT_ANOMALY_ACTION, ids[("acct_globex", "duplicate_charge")], "U0ONCALL1")
    report = await build_report(running.deps.database, days=7, now=FIXED_NOW + timedelta(days=1))
    alerts = report.to_json()["alerts"]
    assert sum(a["alerts"] for a in alerts.values()) == len(ids)
    assert alerts["dispute_opened"]["precision"] == "1.00"
    assert alerts["duplicate_charge"]["precision"] == "0.00"
    assert alerts["payment_failed"]["precision"] is None
