"""Cases and the recurring-issue report on SQLite and PostgreSQL: what a case stores, the
report's counts, ranking, previous-window comparison, recurrence and waves, requests and alerts,
the exact `--json` shape, and the windows that are refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from bot.cli import main
from bot.domain.money import Money
from bot.errors import UsageError
from bot.services.cases import record_alert_feedback, record_case, record_request_outcome
from bot.services.report import build_report, check_days, parse_window
from bot.storage.db import Database

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


def usd(amount: str) -> Money:
    """Dollars."""
    return Money(Decimal(amount), "usd")


async def seed(db: Database) -> None:
    """A known set of cases around NOW (see the assertions below)."""

    def ago(days: float) -> datetime:
        return NOW - timedelta(days=days)

    # acct_a: usage growth on two invoices (recurring); one invoice explained on two days.
    await record_case(
        db,
        source="command",
        kind="explain",
        account_id="acct_a",
        findings=[("usage_growth", usd("120.00")), ("tax_change", usd("9.60"))],
        invoice_id="in_a1",
        at=ago(2),
    )
    await record_case(
        db,
        source="command",
        kind="explain",
        account_id="acct_a",
        findings=[("usage_growth", usd("120.00"))],
        invoice_id="in_a1",
        at=ago(3),
    )
    await record_case(
        db,
        source="ticket",
        kind="ticket",
        account_id="acct_a",
        findings=[("usage_growth", usd("80.50"))],
        ticket_id=1001,
        invoice_id="in_a2",
        at=ago(20),
    )
    # One expired discount behind three accounts at once (a wave).
    for n, account in enumerate(("acct_b", "acct_c", "acct_d")):
        await record_case(
            db,
            source="ticket",
            kind="ticket",
            account_id=account,
            findings=[("discount_ended", usd("50.00"))],
            ticket_id=2000 + n,
            at=ago(1 + n),
        )
    await record_case(
        db,
        source="mention",
        kind="draft",
        account_id="acct_e",
        findings=[("duplicate_charge", usd("3918.56"))],
        invoice_id="in_e1",
        at=ago(4),
    )
    await record_case(db, source="command", kind="status", account_id="acct_f", at=ago(5))
    await record_case(db, source="command", kind="status", account_id="acct_g", at=ago(6))
    # Refunds and credits.
    await record_case(
        db,
        source="command",
        kind="refund",
        account_id="acct_e",
        request_id="REQ-1",
        request_kind="refund",
        request_reason="Duplicate charge",
        request_status="requested",
        request_amount=usd("100.00"),
        at=ago(4),
    )
    await record_case(
        db,
        source="command",
        kind="credit",
        account_id="acct_b",
        request_id="REQ-2",
        request_kind="credit",
        request_reason="goodwill",
        request_status="requested",
        request_amount=usd("25.00"),
        at=ago(3),
    )
    await record_case(
        db,
        source="command",
        kind="refund",
        account_id="acct_c",
        request_id="REQ-3",
        request_kind="refund",
        request_reason="duplicate charge",
        request_status="requested",
        request_amount=usd("50.00"),
        at=ago(2),
    )
    assert await record_request_outcome(
        db, "REQ-1", status="approved", decided_at=ago(4) + timedelta(hours=2)
    )
    assert await record_request_outcome(
        db, "REQ-2", status="denied", decided_at=ago(3) + timedelta(hours=4)
    )
    # Alerts: three usage spikes (two right, one wrong), one failed payment without feedback.
    for n, feedback in enumerate(("acknowledged", "acknowledged", "not_an_anomaly")):
        await record_case(
            db,
            source="alert",
            kind="alert",
            account_id="acct_h",
            alert_id=f"AL-{n}",
            alert_kind="usage_spike",
            at=ago(n + 1),
        )
        assert await record_alert_feedback(db, f"AL-{n}", feedback=feedback)
    await record_case(
        db,
        source="alert",
        kind="alert",
        account_id="acct_c",
        alert_id="AL-9",
        alert_kind="payment_failed",
        at=ago(2),
    )
    # The previous window: usage growth once on another account; and far outside both windows.
    await record_case(
        db,
        source="command",
        kind="explain",
        account_id="acct_x",
        findings=[("usage_growth", usd("10.00"))],
        invoice_id="in_x1",
        at=ago(45),
    )
    await record_case(
        db,
        source="command",
        kind="explain",
        account_id="acct_x",
        findings=[("usage_growth", usd("999.00"))],
        invoice_id="in_x0",
        at=ago(100),
    )


@pytest.mark.postgres
async def test_the_report_counts_ranks_and_compares_windows(migrated_db: Database) -> None:
    """Cases per cause with accounts, money and the previous window's count; ranked by cases."""
    await seed(migrated_db)
    report = await build_report(migrated_db, days=30, now=NOW)
    data = report.to_json()
    assert data["window_days"] == 30
    assert data["cases"] == 16
    causes = {c["cause"]: c for c in data["causes"]}
    assert [c["cause"] for c in data["causes"]][:2] == ["usage_growth", "discount_ended"]
    assert causes["usage_growth"] == {
        "cause": "usage_growth",
        "cases": 3,
        "accounts": 1,
        "amount": "320.50",
        "currency": "usd",
        "previous_cases": 1,
    }
    assert causes["discount_ended"]["accounts"] == 3
    assert causes["discount_ended"]["previous_cases"] == 0
    assert causes["duplicate_charge"]["amount"] == "3918.56"
    assert causes["tax_change"]["amount"] == "9.60"


@pytest.mark.postgres
async def test_recurring_needs_the_same_cause_on_two_subjects(migrated_db: Database) -> None:
    """acct_a's usage growth on two invoices recurs; one invoice looked at twice does not."""
    await seed(migrated_db)
    report = await build_report(migrated_db, days=30, now=NOW)
    assert report.to_json()["recurring"] == [
        {"account": "acct_a", "cause": "usage_growth", "cases": 2}
    ]
    assert set(report.recurring[0].examples) == {"in_a1", "in_a2"}
    narrow = await build_report(migrated_db, days=7, now=NOW)
    assert narrow.to_json()["recurring"] == []  # in_a2 is 20 days old


@pytest.mark.postgres
async def test_a_cause_behind_many_accounts_at_once_is_a_wave(migrated_db: Database) -> None:
    """Three accounts with an expired discount this window and none before: a wave."""
    await seed(migrated_db)
    report = await build_report(migrated_db, days=30, now=NOW)
    (wave,) = [w for w in report.waves if w.cause == "discount_ended"]
    assert wave.accounts == 3 and wave.previous_accounts == 0
    assert set(wave.examples) == {"acct_b", "acct_c", "acct_d"}


@pytest.mark.postgres
async def test_requests_and_alerts_sections(migrated_db: Database) -> None:
    """Requests by outcome with the approved amount; alerts by kind with feedback precision."""
    await seed(migrated_db)
    report = await build_report(migrated_db, days=30, now=NOW)
    data = report.to_json()
    assert data["requests"] == {
        "requested": 3,
        "approved": 1,
        "denied": 1,
        "amount_approved": "100.00",
    }
    assert data["alerts"] == {
        "usage_spike": {"alerts": 3, "precision": "0.67"},
        "payment_failed": {"alerts": 1, "precision": None},
    }
    assert report.median_hours == Decimal("3.0")
    duplicate = next(r for r in report.reasons if r.reason == "duplicate charge")
    assert (duplicate.requested, duplicate.approved) == (2, 1)


@pytest.mark.postgres
async def test_the_json_has_exactly_the_contract_shape(migrated_db: Database) -> None:
    """Top-level and nested keys are exactly DESIGN §11's, amounts decimal strings."""
    await seed(migrated_db)
    data = (await build_report(migrated_db, days=30, now=NOW)).to_json()
    assert list(data) == ["window_days", "cases", "causes", "recurring", "requests", "alerts"]
    for cause in data["causes"]:
        assert list(cause) == ["cause", "cases", "accounts", "amount", "currency", "previous_cases"]
        assert isinstance(cause["amount"], str) and Decimal(cause["amount"]) >= 0
    for item in data["recurring"]:
        assert list(item) == ["account", "cause", "cases"]
    assert list(data["requests"]) == ["requested", "approved", "denied", "amount_approved"]
    for tally in data["alerts"].values():
        assert list(tally) == ["alerts", "precision"]
    json.dumps(data)


@pytest.mark.postgres
async def test_a_repeated_case_is_stored_once(migrated_db: Database) -> None:
    """The same lookup again that day (or a Slack retry) is one case, not two."""
    for _ in range(3):
        await record_case(
            migrated_db,
            source="command",
            kind="explain",
            account_id="acct_z",
            findings=[("usage_growth", usd("1.00"))],
            invoice_id="in_z",
            at=NOW,
        )
    report = await build_report(migrated_db, days=7, now=NOW + timedelta(hours=1))
    assert report.cases == 1


@pytest.mark.postgres
async def test_a_case_stores_ids_kinds_and_amounts_only(migrated_db: Database) -> None:
    """No customer text goes into the case tables: only IDs, kinds, amounts (and the short
    request reason)."""
    await record_case(
        migrated_db,
        source="ticket",
        kind="ticket",
        account_id="acct_q",
        findings=[("duplicate_charge", usd("12.00"))],
        ticket_id=77,
        at=NOW,
    )
    from sqlalchemy import text

    async with migrated_db.engine.connect() as conn:
        case_columns = (await conn.execute(text("SELECT * FROM cases"))).keys()
        cause_columns = (await conn.execute(text("SELECT * FROM case_causes"))).keys()
    assert set(case_columns) == {
        "id",
        "created_at",
        "source",
        "kind",
        "account_id",
        "ticket_id",
        "invoice_id",
        "request_id",
        "request_kind",
        "request_reason",
        "request_status",
        "request_amount_minor",
        "request_currency",
        "decided_at",
        "alert_id",
        "alert_kind",
        "alert_feedback",
        "dedupe_key",
    }
    assert set(cause_columns) == {
        "case_id",
        "cause",
        "currency",
        "amount_minor",
        "account_id",
        "subject",
        "created_at",
    }


@pytest.mark.parametrize("text", ["5d", "abc", "0d", "365d", "7", "-7d"])
def test_bad_slack_report_windows_are_refused(text: str) -> None:
    """Only 7d, 30d and 90d: anything else says which windows exist."""
    with pytest.raises(UsageError, match="7d"):
        parse_window(text)


@pytest.mark.parametrize("days", [0, -1, 366, 100000])
def test_bad_day_counts_are_refused(days: int) -> None:
    """--days outside 1…365 is refused with the range."""
    with pytest.raises(UsageError, match="between 1 and 365"):
        check_days(days)


@pytest.mark.parametrize(
    "argv", [["--days", "0"], ["--days", "100000"], ["--days", "abc"], ["--json", "--csv"]]
)
def test_the_cli_refuses_bad_windows_with_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`billing-triage report` with a bad window is a usage error (exit 2), said plainly."""
    with pytest.raises(SystemExit) as caught:
        main(["report", *argv])
    assert caught.value.code == 2
    assert "usage: billing-triage report" in capsys.readouterr().err


def test_the_cli_prints_json_csv_and_a_table(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`report --json` prints one JSON object; `--csv` a header and rows; plain a table."""
    import asyncio

    url = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    monkeypatch.setenv("DATABASE_URL", url)

    async def prepare() -> None:
        from bot.storage.migrate import upgrade

        await upgrade(url)
        db = Database(url)
        await record_case(
            db,
            source="command",
            kind="explain",
            account_id="acct_a",
            findings=[("usage_growth", usd("5.00"))],
            invoice_id="in_1",
        )
        await db.dispose()

    asyncio.run(prepare())
    assert main(["report", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cases"] == 1 and data["causes"][0]["cause"] == "usage_growth"
    assert main(["report", "--csv", "--days", "7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("section,cause,currency,cases") and lines[1].startswith(
        "cause,usage_growth"
    )
    assert main(["report"]) == 0
    out = capsys.readouterr().out
    assert "usage growth" in out and "cases" in out.splitlines()[3]


async def test_a_rerun_by_button_is_not_a_new_case(migrated_db: Database) -> None:
    """Share in channel and Regenerate re-run an answer: the case count does not move."""
    await record_case(migrated_db, source="command", kind="draft", account_id="acct_r", at=NOW)
    await record_case(migrated_db, source="button", kind="draft", account_id="acct_r", at=NOW)
    report = await build_report(migrated_db, days=7, now=NOW + timedelta(hours=1))
    assert report.cases == 1
