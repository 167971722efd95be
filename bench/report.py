"""The recurring-issue report over 100,000 stored cases (issue 12): under 1 s on SQLite and on
PostgreSQL. Cases are spread over 180 days (`--spread`) and 2,000 accounts, most with one to
three causes, some refunds, credits and alerts; the report of 7, 30 and 90 days is timed (best
and worst of a few runs, each a fresh unit of work).

    python bench/report.py [--cases 100000] [--spread 180] [--postgres-url postgresql+asyncpg://…]

Without `--postgres-url` a temporary PostgreSQL cluster is started when initdb/pg_ctl are on the
PATH (as the tests do); otherwise only SQLite is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert

from bot.domain.findings import FindingKind
from bot.services.report import build_report
from bot.storage.db import Database
from bot.storage.migrate import upgrade
from bot.storage.tables import CaseCauseRow, CaseRow

CAUSES = [k.value for k in FindingKind]
ALERTS = ["usage_spike", "invoice_jump", "payment_failed", "dispute_opened", "duplicate_charge"]
BATCH = 5_000
#: Every column a case row may leave empty (a multi-row INSERT needs the same keys in each row).
EMPTY_CASE: dict[str, object] = dict.fromkeys(
    (
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
    )
)


def rows(
    count: int, now: datetime, spread: int
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Case rows and cause rows (IDs assigned here so the causes can refer to them)."""
    rnd = random.Random(12)
    cases: list[dict[str, object]] = []
    causes: list[dict[str, object]] = []
    weights = [30, 8, 5, 6, 4, 5, 9, 2, 6, 1, 7, 2, 5, 3, 2][: len(CAUSES)]
    for n in range(1, count + 1):
        at = now - timedelta(seconds=rnd.uniform(0, spread * 86400))
        account = f"acct_{rnd.randrange(2000):05d}"
        roll = rnd.random()
        kind = (
            "alert"
            if roll < 0.08
            else "refund"
            if roll < 0.12
            else "credit"
            if roll < 0.14
            else rnd.choice(["status", "explain", "draft", "ticket", "ticket", "explain"])
        )
        invoice = f"in_{account}_{rnd.randrange(6)}"
        case: dict[str, object] = {
            **EMPTY_CASE,
            "id": n,
            "created_at": at,
            "source": "ticket" if kind == "ticket" else "command",
            "kind": kind,
            "account_id": account,
            "ticket_id": str(n) if kind == "ticket" else None,
            "invoice_id": invoice,
            "dedupe_key": f"bench:{n}",
        }
        if kind in ("refund", "credit"):
            status = rnd.choice(["requested", "approved", "approved", "denied", "expired"])
            case.update(
                request_id=f"REQ-{n}",
                request_kind=kind,
                request_reason=rnd.choice(
                    ["duplicate charge", "goodwill", "outage", "billing error"]
                ),
                request_status=status,
                request_amount_minor=rnd.randrange(500, 50_000),
                request_currency="usd",
                decided_at=at + timedelta(hours=rnd.uniform(0.2, 30))
                if status != "requested"
                else None,
            )
        if kind == "alert":
            case.update(
                alert_id=f"AL-{n}",
                alert_kind=rnd.choice(ALERTS),
                alert_feedback=rnd.choice([None, "acknowledged", "acknowledged", "not_an_anomaly"]),
            )
        cases.append(case)
        if kind in ("explain", "draft", "ticket"):
            for cause in set(rnd.choices(CAUSES, weights=weights, k=rnd.randint(1, 3))):
                causes.append(
                    {
                        "case_id": n,
                        "cause": cause,
                        "currency": "usd",
                        "amount_minor": rnd.randrange(100, 500_000),
                        "account_id": account,
                        "subject": invoice if kind != "ticket" else f"ticket:{n}",
                        "created_at": at,
                    }
                )
    return cases, causes


async def load(url: str, count: int, now: datetime, spread: int) -> None:
    """Create the schema and insert `count` cases in batches."""
    await upgrade(url)
    db = Database(url)
    cases, causes = rows(count, now, spread)
    try:
        async with db.engine.begin() as conn:
            for i in range(0, len(cases), BATCH):
                await conn.execute(insert(CaseRow), cases[i : i + BATCH])
            for i in range(0, len(causes), BATCH):
                await conn.execute(insert(CaseCauseRow), causes[i : i + BATCH])
        if db.dialect == "postgresql":
            async with db.engine.connect() as conn:
                await conn.exec_driver_sql("ANALYZE")
                await conn.commit()
    finally:
        await db.dispose()
    print(f"  loaded {len(cases):,} cases and {len(causes):,} causes")


async def measure(name: str, url: str, count: int, spread: int) -> None:
    """Load, then time the report of each window."""
    now = datetime.now(UTC)
    print(f"{name}:")
    await load(url, count, now, spread)
    db = Database(url)
    try:
        for days in (7, 30, 90):
            times = []
            report = None
            for _ in range(5):
                started = time.perf_counter()
                report = await build_report(db, days=days, now=now)
                times.append(time.perf_counter() - started)
            assert report is not None
            print(
                f"  report {days:2d}d over {count:,} cases: best {min(times) * 1000:5.0f} ms, "
                f"worst {max(times) * 1000:5.0f} ms ({report.cases:,} cases in the window, "
                f"{len(report.causes)} causes, {len(report.recurring)} recurring shown) "
                "(budget < 1000 ms)"
            )
    finally:
        await db.dispose()


async def main(count: int, postgres_url: str | None, spread: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        await measure("SQLite", f"sqlite+aiosqlite:///{tmp}/report.db", count, spread)
    if postgres_url:
        await measure("PostgreSQL", postgres_url, count, spread)
        return
    from tests.support.postgres import PostgresServer, TemporaryCluster

    reason = TemporaryCluster.why_not()
    if reason is not None:
        print(f"PostgreSQL: skipped ({reason}); pass --postgres-url to measure it")
        return
    cluster = TemporaryCluster()
    try:
        server = PostgresServer(cluster.start())
        name = await asyncio.to_thread(server.create_database)
        await measure("PostgreSQL (temporary cluster)", server.url_for(name), count, spread)
    finally:
        cluster.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--postgres-url", default=None)
    parser.add_argument("--spread", type=int, default=180, help="days the cases spread over")
    args = parser.parse_args()
    asyncio.run(main(args.cases, args.postgres_url, args.spread))
