"""Schema migrations on SQLite and PostgreSQL: `billing-triage db upgrade` and auto-migrate."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from bot.storage.db import Database, make_engine
from bot.storage.migrate import current_revision, downgrade, head_revision, upgrade

TABLES = {
    "processed_events", "audit_events", "account_links", "outbox", "slack_messages", "leases",
}  # fmt: skip


async def _table_names(url: str) -> set[str]:
    engine = make_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:

            def names(sync: Connection) -> set[str]:
                return set(inspect(sync).get_table_names())

            return await connection.run_sync(names)
    finally:
        await engine.dispose()


async def test_upgrade_creates_the_tables_on_an_empty_database(database_url: str) -> None:
    """`db upgrade` on an empty database creates every table and records the head revision."""
    assert await current_revision(database_url) is None

    await upgrade(database_url)

    assert await _table_names(database_url) >= TABLES
    assert await current_revision(database_url) == head_revision()


async def test_upgrade_twice_is_a_no_op(database_url: str) -> None:
    """Running `db upgrade` again (every start does) changes nothing and does not fail."""
    await upgrade(database_url)
    before = await _table_names(database_url)

    await upgrade(database_url)

    assert await _table_names(database_url) == before
    assert await current_revision(database_url) == head_revision()


async def test_concurrent_upgrades_on_sqlite_both_succeed(tmp_path: object) -> None:
    """Two processes starting at once on one SQLite file both come up with the schema at head."""
    url = f"sqlite+aiosqlite:///{tmp_path}/shared.db"

    await asyncio.gather(upgrade(url), upgrade(url))

    assert await current_revision(url) == head_revision()


@pytest.mark.postgres
async def test_concurrent_upgrades_on_postgres_both_succeed(postgres_database_url: str) -> None:
    """Several replicas starting at once on one PostgreSQL database all come up at head."""
    await asyncio.gather(*(upgrade(postgres_database_url) for _ in range(3)))

    assert await _table_names(postgres_database_url) >= TABLES
    assert await current_revision(postgres_database_url) == head_revision()


def test_head_revision_is_the_initial_schema_or_later() -> None:
    """The packaged migrations are found without an alembic.ini."""
    assert head_revision() >= "0001"


async def test_the_outbox_migration_goes_down_and_up_again(database_url: str) -> None:
    """Migration 0004 (outbox, posted messages, leases) can be rolled back and re-applied."""
    await upgrade(database_url)

    await downgrade(database_url, "0003")
    assert not ({"outbox", "slack_messages", "leases"} & await _table_names(database_url))
    assert await current_revision(database_url) == "0003"

    await upgrade(database_url)
    assert await _table_names(database_url) >= TABLES


async def test_every_migration_goes_down_to_nothing(database_url: str) -> None:
    """`downgrade base` removes every table the migrations made (each downgrade is complete)."""
    await upgrade(database_url)

    await downgrade(database_url, "base")

    assert await _table_names(database_url) <= {"alembic_version"}
    assert await current_revision(database_url) is None


ALERT_TABLES = {
    "alerts", "alert_feedback", "alert_suppressions", "scan_runs", "scan_items", "scan_accounts",
    "webhook_events",
}  # fmt: skip


async def test_the_alerts_migration_goes_down_and_up_again(database_url: str) -> None:
    """Migration 0003 (alerts, scans, webhooks) rolls back cleanly, leaving the tables before
    it, and re-applies to a schema the alert and scan repositories work on."""
    await upgrade(database_url)

    await downgrade(database_url, "0002")
    tables = await _table_names(database_url)
    assert not (ALERT_TABLES & tables)
    assert {"processed_events", "audit_events", "account_links"} <= tables
    assert await current_revision(database_url) == "0002"

    await upgrade(database_url)
    assert await _table_names(database_url) >= ALERT_TABLES | TABLES
    database = Database(database_url)
    try:
        async with database.uow() as uow:
            run_id = await uow.scans.start_run(
                coordinator="test", today=date(2026, 11, 20), post=False,
                now=datetime(2026, 11, 20, tzinfo=UTC),
            )  # fmt: skip
            assert await uow.scans.claim_accounts(run_id, ["acct_a"], item_id=1) == {"acct_a"}
            await uow.commit()
    finally:
        await database.dispose()
