"""The SQL unit of work on SQLite and PostgreSQL: event dedup, the audit log, the links cache,
rollback, and the health check."""

from __future__ import annotations

import asyncio
import shutil
import socket
import threading
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from bot.domain.records import AccountLink, AuditEvent, UnitOfWorkFactory
from bot.storage.db import Database

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def _event(subject: str, action: str, **detail: object) -> AuditEvent:
    return AuditEvent(
        id=None,
        at=T0,
        actor="U0FINANCE",
        action=action,
        subject=subject,
        detail=detail,
        slack_request="req-1",
    )


async def test_mark_processed_is_true_once_then_false(migrated_db: Database) -> None:
    """A Slack retry of an event already handled is recognised as a duplicate."""
    async with migrated_db.uow() as uow:
        assert await uow.events.mark_processed("slack", "Ev01") is True
        await uow.commit()
    async with migrated_db.uow() as uow:
        assert await uow.events.mark_processed("slack", "Ev01") is False
        # The same ID from another source is a different event.
        assert await uow.events.mark_processed("stripe", "Ev01") is True
        await uow.commit()


async def test_concurrent_mark_processed_has_exactly_one_winner(migrated_db: Database) -> None:
    """Twenty simultaneous deliveries of one event are handled exactly once."""

    async def deliver() -> bool:
        async with migrated_db.uow() as uow:
            first = await uow.events.mark_processed("slack", "Ev-burst")
            await uow.commit()
            return first

    results = await asyncio.gather(*(deliver() for _ in range(20)))

    assert sorted(results) == [False] * 19 + [True]


async def test_prune_forgets_old_event_ids(migrated_db: Database) -> None:
    """Old event IDs are pruned; recent ones still count as duplicates."""
    async with migrated_db.uow() as uow:
        await uow.events.mark_processed("slack", "Ev-old")
        await uow.commit()
    async with migrated_db.uow() as uow:
        assert await uow.events.prune(datetime.now(UTC) - timedelta(days=1)) == 0
        assert await uow.events.prune(datetime.now(UTC) + timedelta(seconds=1)) == 1
        await uow.commit()
    async with migrated_db.uow() as uow:
        assert await uow.events.mark_processed("slack", "Ev-old") is True


async def test_audit_events_come_back_in_order_with_their_detail(migrated_db: Database) -> None:
    """The audit trail lists events oldest first, with nested, non-ASCII detail intact."""
    detail = {
        "amount": Decimal("1250.50"),
        "reason": "Kunde sagt: doppelt belastet — «зачем?» 💸",
        "context": {"invoices": [{"id": "in_1", "total": "10.00"}], "flags": [True, None, 3]},
    }
    async with migrated_db.uow() as uow:
        first = await uow.audit.append(_event("req_1", "requested", **detail))
        second = await uow.audit.append(_event("req_2", "requested"))
        third = await uow.audit.append(_event("req_1", "approved", by="U0FINANCE"))
        await uow.commit()

    async with migrated_db.uow() as uow:
        everything = await uow.audit.list()
        about_req_1 = await uow.audit.list("req_1")
        latest_two = await uow.audit.list(limit=2)

    assert first < second < third
    assert [e.id for e in everything] == [first, second, third]
    assert [(e.id, e.action) for e in about_req_1] == [(first, "requested"), (third, "approved")]
    assert [e.id for e in latest_two] == [second, third]
    stored = about_req_1[0]
    # Decimal is stored exactly, as a string.
    assert stored.detail == {**detail, "amount": "1250.50"}
    assert (stored.actor, stored.subject, stored.slack_request) == ("U0FINANCE", "req_1", "req-1")


async def test_audit_events_cannot_be_changed_or_deleted(migrated_db: Database) -> None:
    """The database itself refuses to rewrite or erase the audit trail."""
    async with migrated_db.uow() as uow:
        event_id = await uow.audit.append(_event("req_1", "requested"))
        await uow.commit()

    for statement in ("UPDATE audit_events SET actor = 'U0EVIL'", "DELETE FROM audit_events"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with migrated_db.uow() as uow:
                await uow.session.execute(text(statement))
                await uow.commit()

    async with migrated_db.uow() as uow:
        assert [(e.id, e.actor) for e in await uow.audit.list()] == [(event_id, "U0FINANCE")]


async def test_account_links_put_get_upsert_invalidate(migrated_db: Database) -> None:
    """Resolved accounts are cached per provider, replaced on re-resolution, and forgettable."""
    later = T0 + timedelta(hours=1)
    async with migrated_db.uow() as uow:
        await uow.links.put(
            [
                AccountLink("jane@acme.com", "acct_1", "stripe", "cus_1", T0),
                AccountLink("jane@acme.com", "acct_1", "orb", "orb_1", T0),
                AccountLink("bob@acme.com", None, "stripe", "cus_9", T0),
            ]
        )
        await uow.commit()
    async with migrated_db.uow() as uow:
        await uow.links.put([AccountLink("jane@acme.com", "acct_2", "stripe", "cus_2", later)])
        await uow.links.put([])
        await uow.commit()

    async with migrated_db.uow() as uow:
        jane = await uow.links.get("jane@acme.com")
        assert jane == [
            AccountLink("jane@acme.com", "acct_1", "orb", "orb_1", T0),
            AccountLink("jane@acme.com", "acct_2", "stripe", "cus_2", later),
        ]
        await uow.links.invalidate("jane@acme.com")
        await uow.commit()

    async with migrated_db.uow() as uow:
        assert await uow.links.get("jane@acme.com") == []
        assert [link.customer_id for link in await uow.links.get("bob@acme.com")] == ["cus_9"]
        assert await uow.links.get("nobody@acme.com") == []


async def test_times_come_back_as_aware_utc(migrated_db: Database) -> None:
    """A time stored in any zone reads back as the same instant in UTC."""
    tokyo = datetime(2025, 3, 1, 21, 30, 15, 123456, tzinfo=timezone(timedelta(hours=9)))
    async with migrated_db.uow() as uow:
        await uow.audit.append(
            AuditEvent(None, tokyo, "U1", "noted", "acct_1", {}, None),
        )
        await uow.links.put([AccountLink("x", None, "orb", "orb_1", tokyo)])
        await uow.events.mark_processed("slack", "Ev-time")
        await uow.commit()

    async with migrated_db.uow() as uow:
        [event] = await uow.audit.list()
        [link] = await uow.links.get("x")

    for value in (event.at, link.updated_at):
        assert value.tzinfo is not None and value.utcoffset() == timedelta(0)
        assert value == tokyo
        assert value.hour == 12


async def test_naive_times_are_refused(migrated_db: Database) -> None:
    """A naive datetime never reaches the database, where its zone would be a guess."""
    with pytest.raises(Exception, match="naive datetime"):
        async with migrated_db.uow() as uow:
            await uow.audit.append(AuditEvent(None, datetime(2025, 1, 1), "U1", "x", "s", {}, None))


async def test_a_unit_of_work_that_raises_changes_nothing(migrated_db: Database) -> None:
    """A failure half-way through a use case leaves no partial writes behind."""
    with pytest.raises(RuntimeError, match="boom"):
        async with migrated_db.uow() as uow:
            await uow.events.mark_processed("slack", "Ev-fail")
            await uow.audit.append(_event("req_1", "requested"))
            raise RuntimeError("boom")

    async with migrated_db.uow() as uow:
        assert await uow.audit.list() == []
        assert await uow.events.mark_processed("slack", "Ev-fail") is True


async def test_a_unit_of_work_not_committed_is_rolled_back(migrated_db: Database) -> None:
    """Forgetting to commit discards the work instead of half-saving it."""
    factory: UnitOfWorkFactory = migrated_db.uow
    async with factory() as uow:
        await uow.audit.append(_event("req_1", "requested"))

    async with factory() as uow:
        assert await uow.audit.list() == []


async def test_ping_is_true_on_a_live_database(migrated_db: Database) -> None:
    """/healthz sees a working database as healthy."""
    assert await migrated_db.ping() is True


async def test_ping_is_false_when_the_sqlite_file_is_gone(tmp_path: Path) -> None:
    """/healthz reports an SQLite database whose folder disappeared as unhealthy."""
    folder = tmp_path / "data"
    database = Database(f"sqlite+aiosqlite:///{folder / 'billing-triage.db'}")
    shutil.rmtree(folder)
    try:
        assert await database.ping(timeout=2.0) is False
    finally:
        await database.dispose()
        await _aiosqlite_threads_stopped()


async def _aiosqlite_threads_stopped() -> None:
    """After a failed connect aiosqlite stops its worker thread in the background, and that
    thread then calls back into the event loop: let it finish while the test's loop still runs."""
    for thread in threading.enumerate():
        if "_connection_worker_thread" in thread.name:
            await asyncio.to_thread(thread.join, 5)


async def test_ping_is_false_when_postgres_is_unreachable() -> None:
    """/healthz reports a PostgreSQL server that refuses connections as unhealthy."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    database = Database(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/nothing")
    try:
        assert await database.ping(timeout=2.0) is False
    finally:
        await database.dispose()


async def test_ping_gives_up_at_its_timeout(tmp_path: Path) -> None:
    """A database that accepts the connection but never answers is unhealthy, not a hang."""
    accepted: list[asyncio.StreamWriter] = []

    async def accept_and_stay_silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(accept_and_stay_silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    database = Database(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/nothing")
    try:
        assert await database.ping(timeout=0.3) is False
    finally:
        await database.dispose()
        for writer in accepted:
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()


def test_the_unit_of_work_is_used_inside_async_with(tmp_path: Path) -> None:
    """Using a unit of work outside `async with` is a programming error, reported clearly."""
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(RuntimeError, match="async with"):
        _ = database.uow().events


async def test_an_unreachable_database_is_a_plain_message_not_a_traceback(tmp_path: Path) -> None:
    """A database that refuses connections (down, restarting) surfaces as StoreUnavailable,
    whose message tells the user nothing was lost; a provider timeout inside a unit of work
    stays what it is."""
    from sqlalchemy import text

    from bot.errors import StoreUnavailable
    from bot.storage.db import Database

    closed = Database("postgresql+asyncpg://postgres@127.0.0.1:1/postgres")
    try:
        with pytest.raises(StoreUnavailable, match="Nothing was lost"):
            async with closed.uow() as uow:
                await uow.session.execute(text("SELECT 1"))
    finally:
        await closed.dispose()
    fine = Database(f"sqlite+aiosqlite:///{tmp_path}/t.db")
    try:
        with pytest.raises(TimeoutError):
            async with fine.uow():
                raise TimeoutError
    finally:
        await fine.dispose()
