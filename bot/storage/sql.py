"""Small SQL helpers shared by the repositories: dialect-flavoured INSERT and row counts."""

from __future__ import annotations

from typing import Any

from sqlalchemy import CursorResult
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession


def dialect_insert(session: AsyncSession, table: Any) -> postgresql.Insert | sqlite.Insert:
    """`INSERT` in the bound dialect's flavour, which has `on_conflict_do_*`."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"unsupported database dialect {name!r}")


def rowcount(result: Any) -> int:
    """Rows affected by a DML statement."""
    assert isinstance(result, CursorResult)
    return int(result.rowcount)
