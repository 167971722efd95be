"""Schema migrations, run programmatically (no alembic.ini): `upgrade(url)` brings a database to
the latest revision; `billing-triage db upgrade` and the auto-migrate at start call it.

Safe when several processes start at once: on PostgreSQL the whole upgrade runs in one
transaction holding a transaction-scoped advisory lock; on SQLite it runs in one
`BEGIN IMMEDIATE` transaction, which holds the database's single write lock. Whoever comes second
waits, then finds the schema at head and does nothing.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from bot.storage.db import SQLITE_READ_ONLY, make_engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

#: pg_advisory_xact_lock key shared by every replica migrating this database ("billtrg1").
ADVISORY_LOCK_KEY = 0x62696C6C74726731


def alembic_config() -> Config:
    """An Alembic `Config` pointing at the packaged migrations, with no ini file."""
    config = Config()
    # Config values go through configparser interpolation, where "%" is special.
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest revision the code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS}")
    return head


def _upgrade_sync(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _downgrade_sync(connection: Connection, target: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, target)


def _current_sync(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(url: str) -> None:
    """Create or migrate the schema at `url` to head. Idempotent; concurrency-safe."""
    engine = make_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
                )
            await connection.run_sync(_upgrade_sync)
    finally:
        await engine.dispose()


async def downgrade(url: str, target: str) -> None:
    """Migrate the schema at `url` down to revision `target` (`base` for nothing). For tests and
    for an operator rolling a release back; under the same lock as `upgrade`."""
    engine = make_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
                )
            await connection.run_sync(_downgrade_sync, target)
    finally:
        await engine.dispose()


async def current_revision(url: str) -> str | None:
    """The revision the database at `url` is at; None for an empty database."""
    engine = make_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.execution_options(**SQLITE_READ_ONLY)
            return await connection.run_sync(_current_sync)
    finally:
        await engine.dispose()
