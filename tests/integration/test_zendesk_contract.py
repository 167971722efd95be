"""The fake Zendesk checked with an independent client: zenpy (Zendesk's most used Python SDK)
reads tickets, comments, users and organizations from it and adds a private comment, so the
fake speaks Zendesk's wire format and not only what our client expects."""

from __future__ import annotations

import asyncio
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from zenpy import Zenpy
from zenpy.lib.api_objects import Comment, Ticket
from zenpy.lib.exception import APIException, RecordNotFoundException

from tests.support.zendesk import ZENDESK_EMAIL, ZENDESK_TOKEN, FakeZendesk

HOST = "https://acme.zendesk.com"


class _ToLoopback(HTTPAdapter):
    """Sends `https://acme.zendesk.com/…` to the fake on 127.0.0.1 (zenpy always builds https)."""

    def __init__(self, base: str) -> None:
        super().__init__()
        self._base = base

    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        original = request.url
        request.url = original.replace(HOST, self._base, 1)
        response = super().send(request, *args, **kwargs)
        # zenpy matches responses to its API by the URL it asked for.
        request.url = response.url = original
        return response


def _zenpy(fake: FakeZendesk, token: str = ZENDESK_TOKEN) -> Zenpy:
    session = requests.Session()
    session.mount(HOST, _ToLoopback(fake.url))
    return Zenpy(subdomain="acme", email=ZENDESK_EMAIL, token=token, session=session)


async def test_zenpy_reads_a_ticket_its_comments_requester_and_organization(
    fake_zendesk: FakeZendesk,
) -> None:
    """zenpy parses the fake's envelopes into its own objects with integer IDs."""

    def read() -> tuple[Any, list[Any], Any, Any]:
        zenpy = _zenpy(fake_zendesk)
        ticket = zenpy.tickets(id=1001)
        comments = list(zenpy.tickets.comments(ticket=1001))
        user = zenpy.users(id=ticket.requester_id)
        org = zenpy.organizations(id=ticket.organization_id)
        return ticket, comments, user, org

    ticket, comments, user, org = await asyncio.to_thread(read)
    assert ticket.id == 1001 and isinstance(ticket.id, int)
    assert ticket.subject == "Why did our invoice almost double?"
    assert [c.public for c in comments] == [True, True, False, True]
    assert comments[0].body.startswith("Hi, our latest invoice")
    assert user.email == "dana@northwind.example" and user.role == "end-user"
    assert org.external_id == "acct_northwind"


async def test_zenpy_adds_a_private_comment(fake_zendesk: FakeZendesk) -> None:
    """A private comment through zenpy's ticket update lands as an internal note."""

    def write() -> None:
        zenpy = _zenpy(fake_zendesk)
        ticket = Ticket(id=1003)
        ticket.comment = Comment(body="Internal: checking the dispute.", public=False)
        zenpy.tickets.update(ticket)

    await asyncio.to_thread(write)
    notes = fake_zendesk.router.private_notes(1003)
    assert [n["body"] for n in notes] == ["Internal: checking the dispute."]
    assert fake_zendesk.router.updates[0].changed == {}


async def test_zenpy_sees_zendesks_errors(fake_zendesk: FakeZendesk) -> None:
    """404 is zenpy's RecordNotFound; a wrong token is an API error, as on Zendesk."""

    def fail() -> tuple[bool, bool]:
        missing = bad_token = False
        try:
            _zenpy(fake_zendesk).tickets(id=999999)
        except RecordNotFoundException:
            missing = True
        try:
            _zenpy(fake_zendesk, token="nope").tickets(id=1001)
        except APIException as exc:
            bad_token = "Couldn't authenticate you" in str(exc)
        return missing, bad_token

    assert await asyncio.to_thread(fail) == (True, True)


async def test_zenpy_searches_tickets(fake_zendesk: FakeZendesk) -> None:
    """zenpy's search reads the fake's search results."""

    def search() -> list[int]:
        zenpy = _zenpy(fake_zendesk)
        return [t.id for t in zenpy.search(type="ticket", requester="billing@contoso.example")]

    assert await asyncio.to_thread(search) == [1004]
