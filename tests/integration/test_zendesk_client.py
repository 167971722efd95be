"""The Zendesk client over real HTTP against the fake Zendesk: envelopes, integer IDs, cursor
pagination, token auth, Zendesk's error bodies mapped to the one exception tree, 429 with
`Retry-After`, and the internal note that is never retried."""

from __future__ import annotations

import base64

import pytest

from bot.domain.tickets import parse_ticket_ref
from bot.errors import (
    InvalidIdentifier,
    ProviderAuthError,
    ProviderBadResponse,
    ProviderRateLimited,
    ProviderRequestError,
    ProviderUnavailable,
    TicketNoteUnknown,
    TicketNotFound,
)
from integrations.http import RetryPolicy
from tests.support.fakeserver import Fault
from tests.support.zendesk import ZENDESK_EMAIL, ZENDESK_TOKEN, FakeZendesk


async def test_a_ticket_its_requester_and_organization_are_read(fake_zendesk: FakeZendesk) -> None:
    """The ticket, its requester and organization come back as our dataclasses."""
    client = fake_zendesk.client()
    try:
        ticket = await client.ticket(1001)
        requester = await client.user(ticket.requester_id or 0)
        org = await client.organization(ticket.organization_id or 0)
    finally:
        await client.aclose()
    assert ticket.id == 1001 and ticket.subject == "Why did our invoice almost double?"
    assert ticket.status == "open" and ticket.url == f"{fake_zendesk.url}/agent/tickets/1001"
    assert requester is not None and requester.email == "dana@northwind.example"
    assert org is not None and org.external_id == "acct_northwind"


async def test_token_auth_is_basic_email_slash_token(fake_zendesk: FakeZendesk) -> None:
    """Every request carries `Basic base64("{email}/token:{token}")`."""
    client = fake_zendesk.client()
    try:
        await client.ticket(1001)
    finally:
        await client.aclose()
    expected = base64.b64encode(f"{ZENDESK_EMAIL}/token:{ZENDESK_TOKEN}".encode()).decode()
    assert fake_zendesk.server.requests[0].headers["authorization"] == f"Basic {expected}"


async def test_a_wrong_token_is_authentication_failed(fake_zendesk: FakeZendesk) -> None:
    """Zendesk's 401 becomes "Zendesk: authentication failed", with no token in it."""
    client = fake_zendesk.client(token="wrong-token")
    try:
        with pytest.raises(ProviderAuthError) as caught:
            await client.ticket(1001)
    finally:
        await client.aclose()
    assert caught.value.message.startswith("Zendesk: authentication failed")
    assert "wrong-token" not in caught.value.message


async def test_a_missing_ticket_is_not_found_by_number(fake_zendesk: FakeZendesk) -> None:
    """404 RecordNotFound is "Zendesk: ticket 123 not found"; a missing user is None."""
    client = fake_zendesk.client()
    try:
        with pytest.raises(TicketNotFound, match=r"^Zendesk: ticket 123 not found$"):
            await client.ticket(123)
        assert await client.user(424242) is None
        assert await client.organization(424242) is None
    finally:
        await client.aclose()


async def test_comments_follow_the_cursor_across_pages(fake_zendesk: FakeZendesk) -> None:
    """250 comments come back in order over three cursor pages."""
    fake_zendesk.router.add_ticket(
        4242,
        subject="Long thread",
        requester={"id": 6001, "name": "Long", "email": "long@example.com"},
        comments=[(6001, f"comment {n}", True) for n in range(250)],
    )
    client = fake_zendesk.client()
    try:
        comments = await client.comments(4242)
    finally:
        await client.aclose()
    assert [c.body for c in comments] == [f"comment {n}" for n in range(250)]
    pages = [r for r in fake_zendesk.server.requests if r.path.endswith("/comments.json")]
    assert len(pages) == 3 and all(dict(p.query)["page[size]"] == "100" for p in pages)


async def test_private_comments_are_told_apart(fake_zendesk: FakeZendesk) -> None:
    """`public: false` comments (internal notes) are marked as such."""
    client = fake_zendesk.client()
    try:
        comments = await client.comments(1001)
    finally:
        await client.aclose()
    assert [c.public for c in comments] == [True, True, False, True]


async def test_search_finds_the_requesters_open_tickets(fake_zendesk: FakeZendesk) -> None:
    """Search results are tickets matching the query."""
    client = fake_zendesk.client()
    try:
        found = await client.search_tickets("requester:billing@contoso.example status<solved")
    finally:
        await client.aclose()
    assert [t.id for t in found] == [1004]


async def test_429_waits_for_retry_after_then_reads(fake_zendesk: FakeZendesk) -> None:
    """A read rate-limited once is retried after `Retry-After` and succeeds."""
    fake_zendesk.server.fail(
        429, retry_after="0", body=b'{"error": "TooManyRequests"}', path="tickets/1001"
    )
    client = fake_zendesk.client()
    try:
        ticket = await client.ticket(1001)
    finally:
        await client.aclose()
    assert ticket.id == 1001
    assert (
        len([r for r in fake_zendesk.server.requests if r.path.startswith("/api/v2/tickets/1001")])
        == 2
    )


async def test_429_forever_is_rate_limited(fake_zendesk: FakeZendesk) -> None:
    """429 that outlasts the retry budget is "Zendesk: rate limited"."""
    fake_zendesk.server.fail(429, retry_after="0", times=None)
    client = fake_zendesk.client()
    try:
        with pytest.raises(ProviderRateLimited, match="Zendesk: rate limited"):
            await client.ticket(1001)
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "fault", [Fault("status", status=503, times=None), Fault("malformed", times=None)]
)
async def test_5xx_and_malformed_bodies_are_named(fake_zendesk: FakeZendesk, fault: Fault) -> None:
    """Outages and garbled bodies are short "Zendesk: …" errors after the retries."""
    fake_zendesk.server.add_fault(fault)
    client = fake_zendesk.client()
    try:
        with pytest.raises((ProviderUnavailable, ProviderBadResponse)) as caught:
            await client.ticket(1001)
    finally:
        await client.aclose()
    assert caught.value.message.startswith("Zendesk:")


async def test_a_note_is_a_private_comment_and_changes_nothing_else(
    fake_zendesk: FakeZendesk,
) -> None:
    """The note is one PUT with `public: false`; no field of the ticket changes."""
    client = fake_zendesk.client()
    try:
        written = await client.add_internal_note(1002, "Checked: one duplicate charge.")
    finally:
        await client.aclose()
    notes = fake_zendesk.router.private_notes(1002)
    assert [n["body"] for n in notes] == ["Checked: one duplicate charge."]
    assert written.comment_id == notes[0]["id"]
    (update,) = fake_zendesk.router.updates
    assert update.changed == {} and update.comment_public is False
    assert fake_zendesk.router.public_comments_by_agent(1002) == []


async def test_a_note_is_never_retried_on_a_5xx(fake_zendesk: FakeZendesk) -> None:
    """A 5xx on the note is an unknown outcome: one PUT, no retry."""
    fake_zendesk.server.fail(500, times=None, path="tickets/1002")
    client = fake_zendesk.client()
    try:
        with pytest.raises(TicketNoteUnknown):
            await client.add_internal_note(1002, "note")
    finally:
        await client.aclose()
    assert fake_zendesk.puts() == 1


async def test_a_timeout_after_zendesk_applied_the_note_is_unknown(
    fake_zendesk: FakeZendesk,
) -> None:
    """Zendesk applied the note but answered too late: unknown, and the note is there once."""
    fake_zendesk.router.write_delay = 2.0
    policy = RetryPolicy(read_timeout=0.3, max_attempts=3, deadline=1.0)
    client = fake_zendesk.client(policy=policy)
    try:
        with pytest.raises(TicketNoteUnknown):
            await client.add_internal_note(1002, "slow note")
    finally:
        await client.aclose()
    assert fake_zendesk.puts() == 1
    assert len(fake_zendesk.router.private_notes(1002)) == 1


async def test_a_blank_note_is_refused_as_zendesk_does(fake_zendesk: FakeZendesk) -> None:
    """422 RecordInvalid is a request error: the note was certainly not added."""
    client = fake_zendesk.client()
    try:
        with pytest.raises(ProviderRequestError, match="Zendesk refused the note"):
            await client.add_internal_note(1002, "   ")
    finally:
        await client.aclose()
    assert fake_zendesk.router.private_notes(1002) == []


def test_ticket_references_are_parsed_strictly() -> None:
    """A number, `#123`, or a ticket URL of the configured host; anything else is refused."""
    hosts = ("acme.zendesk.com",)
    assert parse_ticket_ref("123", hosts=hosts) == 123
    assert parse_ticket_ref("#123", hosts=hosts) == 123
    assert parse_ticket_ref("https://acme.zendesk.com/agent/tickets/123", hosts=hosts) == 123
    assert parse_ticket_ref("https://ACME.zendesk.com/agent/tickets/7/", hosts=hosts) == 7
    for bad in (
        "",
        "0",
        "-1",
        "12a",
        "#",
        "ticket",
        "https://evil.example/agent/tickets/1",
        "https://acme.zendesk.com.evil.example/agent/tickets/1",
        "https://acme.zendesk.com/agent/users/1",
        "ftp://acme.zendesk.com/agent/tickets/1",
        "https://user:pw@acme.zendesk.com/agent/tickets/1",
        "9" * 20,
    ):
        with pytest.raises(InvalidIdentifier):
            parse_ticket_ref(bad, hosts=hosts)
