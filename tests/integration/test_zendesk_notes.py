"""The notes' state machine against the fake Zendesk, on SQLite and PostgreSQL: an unknown
outcome is settled by reading the ticket, never by posting again; a note that never arrived is
postable again only after the grace period; the reconciler settles what a dead replica left."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio

from bot.domain.records import TicketNote
from bot.services.tickets import (
    UNKNOWN_GRACE,
    note_body,
    post_note,
    reconcile_unsettled,
)
from bot.storage.db import Database
from integrations.zendesk import ZendeskTicketSource
from tests.support.fakeserver import Fault
from tests.support.zendesk import FakeZendesk


class Clock:
    """A movable now."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest_asyncio.fixture
async def client(fake_zendesk: FakeZendesk) -> AsyncIterator[ZendeskTicketSource]:
    """A real client to the fake Zendesk."""
    source = fake_zendesk.client()
    try:
        yield source
    finally:
        await source.aclose()


async def _draft(db: Database, ticket_id: int, draft_id: str, now: datetime) -> None:
    async with db.uow() as uow:
        await uow.ticket_notes.create(
            TicketNote(ticket_id, draft_id, "pending", note_body("Hello", draft_id), now, now)
        )
        await uow.commit()


@pytest.mark.postgres
async def test_a_dropped_connection_is_unknown_then_postable_after_the_grace(
    migrated_db: Database, client: ZendeskTicketSource, fake_zendesk: FakeZendesk
) -> None:
    """The connection drops before Zendesk saw the note: unknown at first (it might have); not
    on the ticket after the grace period, so it may be posted again — and is, once."""
    clock = Clock()
    await _draft(migrated_db, 1004, "d1", clock.now)
    fake_zendesk.server.add_fault(Fault("drop", path="tickets/1004.json"))
    first = await post_note(
        store=migrated_db,
        tickets=client,
        ticket_id=1004,
        draft_id="d1",
        user="U1",
        holder="a",
        clock=clock,
    )
    assert first.status == "unknown"
    again = await post_note(
        store=migrated_db,
        tickets=client,
        ticket_id=1004,
        draft_id="d1",
        user="U2",
        holder="b",
        clock=clock,
    )
    assert again.status == "unknown" and fake_zendesk.puts() == 1
    clock.now += UNKNOWN_GRACE + timedelta(seconds=1)
    settled = await reconcile_unsettled(store=migrated_db, tickets=client, clock=clock)
    assert [s.status for s in settled] == ["failed"]
    posted = await post_note(
        store=migrated_db,
        tickets=client,
        ticket_id=1004,
        draft_id="d1",
        user="U2",
        holder="b",
        clock=clock,
    )
    assert posted.status == "posted"
    assert fake_zendesk.puts() == 2 and len(fake_zendesk.router.private_notes(1004)) == 1


@pytest.mark.postgres
async def test_a_replica_that_died_mid_post_is_reconciled_from_the_ticket(
    migrated_db: Database, client: ZendeskTicketSource, fake_zendesk: FakeZendesk
) -> None:
    """A `posting` claim left by a dead replica whose note did reach Zendesk becomes `posted`
    by reading the ticket; nothing is posted again."""
    clock = Clock()
    await _draft(migrated_db, 1003, "d2", clock.now)
    async with migrated_db.uow() as uow:
        assert await uow.ticket_notes.claim(1003, "d2", holder="dead", user="U1", now=clock.now)
        await uow.commit()
    await client.add_internal_note(1003, note_body("Hello", "d2"))  # what the dead replica sent
    clock.now += timedelta(minutes=5)
    settled = await reconcile_unsettled(store=migrated_db, tickets=client, clock=clock)
    assert [(s.status, s.by_this_call) for s in settled] == [("posted", True)]
    after = await post_note(
        store=migrated_db,
        tickets=client,
        ticket_id=1003,
        draft_id="d2",
        user="U2",
        holder="b",
        clock=clock,
    )
    assert after.status == "already_posted" and after.posted_by == "U1"
    assert fake_zendesk.puts() == 1


@pytest.mark.postgres
async def test_a_refused_note_can_be_posted_again(
    migrated_db: Database, client: ZendeskTicketSource, fake_zendesk: FakeZendesk
) -> None:
    """429 means Zendesk applied nothing: the draft goes back to pending with the reason."""
    clock = Clock()
    await _draft(migrated_db, 1001, "d3", clock.now)
    fake_zendesk.server.fail(429, retry_after="30", path="tickets/1001.json")
    refused = await post_note(
        store=migrated_db,
        tickets=client,
        ticket_id=1001,
        draft_id="d3",
        user="U1",
        holder="a",
        clock=clock,
    )
    assert refused.status == "failed" and "rate limited" in (refused.message or "")
    posted = await post_note(
        store=migrated_db,
        tickets=client,
        ticket_id=1001,
        draft_id="d3",
        user="U1",
        holder="a",
        clock=clock,
    )
    assert posted.status == "posted" and len(fake_zendesk.router.private_notes(1001)) == 1


async def test_an_unknown_draft_is_said_plainly(
    migrated_db: Database, client: ZendeskTicketSource
) -> None:
    """A button whose draft is gone posts nothing and says so."""
    outcome = await post_note(
        store=migrated_db, tickets=client, ticket_id=1001, draft_id="nope", user="U1", holder="a"
    )
    assert outcome.status == "missing"
