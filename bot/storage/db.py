"""The database: one async engine and one session factory for the process, a health check, and
the unit-of-work factory.

SQLite (the embedded default) is tuned for a small multi-task server: WAL so readers never wait
for the writer, a busy timeout so writers queue instead of failing, and `BEGIN IMMEDIATE` so a
transaction that reads and then writes cannot fail half-way on a stale snapshot. PostgreSQL is
used as is, with pre-ping so connections broken by a server restart are replaced.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from bot.storage.uow import SqlUnitOfWork

log = logging.getLogger(__name__)

#: How long an SQLite writer waits for the lock before "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 15_000
#: Execution option naming SQLite's BEGIN mode; "IMMEDIATE" unless a connection says otherwise.
SQLITE_BEGIN_OPTION = "bt_sqlite_begin"
#: Execution options for read-only work on SQLite (ignored on PostgreSQL).
SQLITE_READ_ONLY: dict[str, Any] = {SQLITE_BEGIN_OPTION: "DEFERRED"}


def _json_default(value: Any) -> Any:
    """Store the domain's non-JSON scalars as strings (Decimal stays exact that way)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def json_dumps(value: Any) -> str:
    """The JSON serialiser for JSON columns: UTF-8 kept readable, Decimal as a string."""
    return json.dumps(value, ensure_ascii=False, default=_json_default)


def _sqlite_file(url: URL) -> Path | None:
    """The database file of an SQLite URL, or None for in-memory and URI forms."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser()


def _configure_sqlite(engine: AsyncEngine) -> None:
    """Pragmas on every new connection, and SQLAlchemy (not sqlite3) emitting BEGIN."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Disable the sqlite3 driver's own implicit BEGIN; `_on_begin` emits ours.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")  # durable enough with WAL, much faster
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Take the write lock up front: SQLite has one writer, and a deferred transaction that
        # read first fails with SQLITE_BUSY (no waiting) if another writer committed meanwhile.
        # Read-only work that must never wait for a writer opts out with SQLITE_READ_ONLY.
        mode = connection.get_execution_options().get(SQLITE_BEGIN_OPTION, "IMMEDIATE")
        connection.exec_driver_sql(f"BEGIN {mode}")


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine for `url` with this project's settings for SQLite or PostgreSQL."""
    sa_url = make_url(url)
    is_sqlite = sa_url.get_backend_name() == "sqlite"
    if is_sqlite:
        path = _sqlite_file(sa_url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(sa_url, pool_pre_ping=True, json_serializer=json_dumps, **kwargs)
    if is_sqlite:
        _configure_sqlite(engine)
    return engine


class Database:
    """One async engine and one session factory; make one per process and `dispose()` it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.session_factory: async_sessionmaker[AsyncSession] = async_sessionmaker(
            self.engine, expire_on_commit=False
        )

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self.engine.dialect.name

    # The timeout is part of the contract (/healthz must answer quickly), hence the parameter.
    async def ping(self, timeout: float = 2.0) -> bool:  # noqa: ASYNC109
        """True when the database answers `SELECT 1` within `timeout` seconds; never raises."""
        try:
            async with asyncio.timeout(timeout), self.engine.connect() as connection:
                # A health check must not queue behind a writer for SQLite's write lock.
                await connection.execution_options(**SQLITE_READ_ONLY)
                await connection.execute(text("SELECT 1"))
        except Exception as exc:  # any failure at all means "not healthy": never raise
            log.warning("database ping failed: %s: %s", type(exc).__name__, exc)
            return False
        return True

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()

    def uow(self) -> SqlUnitOfWork:
        """A fresh unit of work (a `UnitOfWorkFactory`)."""
        return SqlUnitOfWork(self.session_factory)
