"""`POST /webhooks/zendesk` end to end: Zendesk's signature and timestamp checked, the delivery
deduplicated, and one triage card per ticket posted to TRIAGE_CHANNEL through the outbox."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.app import build_app
from handlers.zendesk_views import NOTE_ACTION
from handlers.zendesk_webhook import sign
from integrations.sandbox.slack import LocalSlack, validate_blocks
from tests.support.app import RunningApp, serve_app
from tests.support.providers import FakeProviders
from tests.support.zendesk import ACCOUNT_FIELD, FakeZendesk

SECRET = "zendesk-webhook-secret-0123"
TRIAGE = "C0TRIAGE"


@asynccontextmanager
async def served(
    slack: LocalSlack,
    database_url: str,
    providers: FakeProviders,
    zendesk: FakeZendesk,
    **settings: Any,
) -> AsyncIterator[RunningApp]:
    """The app with the webhook secret and the triage channel set."""
    values: dict[str, Any] = {
        "zendesk_webhook_secret": SECRET,
        "triage_channel": TRIAGE,
        "zendesk_account_field": ACCOUNT_FIELD,
    }
    values.update(settings)
    build = functools.partial(build_app, tickets=zendesk.client())
    async with serve_app(
        slack,
        database_url,
        providers=providers.clients(),
        build=build,
        **values,
    ) as running:
        yield running


def _stamp(at: datetime | None = None) -> str:
    return (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


async def deliver(
    running: RunningApp,
    payload: dict[str, Any] | bytes,
    *,
    secret: str = SECRET,
    timestamp: str | None = None,
    signature: str | None = None,
    invocation: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST a delivery signed as Zendesk signs it; the status and JSON answer."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    ts = timestamp or _stamp()
    headers = {
        "Content-Type": "application/json",
        "X-Zendesk-Webhook-Id": "01HWEBHOOK",
        "X-Zendesk-Webhook-Signature-Timestamp": ts,
        "X-Zendesk-Webhook-Signature": signature or sign(secret, ts, body),
    }
    if invocation:
        headers["X-Zendesk-Webhook-Invocation-Id"] = invocation
    response = await running.http.post("/webhooks/zendesk", content=body, headers=headers)
    return response.status_code, response.json()


def cards(slack: LocalSlack) -> list[dict[str, Any]]:
    """Messages posted to the triage channel."""
    return [c.args for c in slack.calls_to("chat.postMessage") if c.args.get("channel") == TRIAGE]


def text_of(args: dict[str, Any]) -> str:
    """Text and blocks of a message as one string."""
    blocks = args.get("blocks")
    blocks = json.loads(blocks) if isinstance(blocks, str) else blocks
    return str(args.get("text")) + json.dumps(blocks)


async def test_a_signed_trigger_delivery_posts_one_triage_card(
    local_slack: LocalSlack,
    fake_providers: FakeProviders,
    fake_zendesk: FakeZendesk,
    database_url: str,
) -> None:
    """A good signature: 200 at once, then one card with the ticket, account, what matters and
    the ticket's buttons in TRIAGE_CHANNEL."""
    async with served(local_slack, database_url, fake_providers, fake_zendesk) as running:
        status, answer = await deliver(running, {"ticket_id": "1004"}, invocation="inv-1")
        await running.deps.delivery.drain()  # type: ignore[union-attr]
    assert status == 200 and answer["ticket_id"] == 1004
    (card,) = cards(local_slack)
    text = text_of(card)
    assert "Ticket #1004" in text and "`acct_contoso`" in text
    assert "failed payment" in text and NOTE_ACTION in text
    assert (
        validate_blocks(
            json.loads(card["blocks"]) if isinstance(card["blocks"], str) else card["blocks"]
        )
        == []
    )


async def test_an_event_webhook_is_understood(
    local_slack: LocalSlack,
    fake_providers: FakeProviders,
    fake_zendesk: FakeZendesk,
    database_url: str,
) -> None:
    """The `zen:event-type:ticket.created` event (IDs as strings) names its ticket."""
    event = {
        "type": "zen:event-type:ticket.created",
        "account_id": 123,
        "id": "evt-01",
        "time": _stamp(),
        "zendesk_event_version": "2022-11-06",
        "subject": "zen:ticket:1003",
        "detail": {"id": "1003", "status": "NEW"},
        "event": {},
    }
    async with served(local_slack, database_url, fake_providers, fake_zendesk) as running:
        status, _ = await deliver(running, event)
        await running.deps.delivery.drain()  # type: ignore[union-attr]
    assert status == 200
    assert "`acct_fabrikam`" in text_of(cards(local_slack)[0])


@pytest.mark.parametrize(
    ("why", "kwargs"),
    [
        ("bad signature", {"signature": "bm90IHRoZSBzaWduYXR1cmU="}),
        ("wrong secret", {"secret": "another-secret"}),
        ("stale", {"skew": -301}),
        ("future", {"skew": 400}),
        ("garbage timestamp", {"timestamp": "yesterday"}),
    ],
)
async def test_bad_or_stale_deliveries_are_400_and_nothing_else(
    local_slack: LocalSlack,
    fake_providers: FakeProviders,
    fake_zendesk: FakeZendesk,
    database_url: str,
    why: str,
    kwargs: dict[str, Any],
) -> None:
    """A wrong signature or an old timestamp: 400, nothing queued, Zendesk never read."""
    if "skew" in kwargs:  # the time is taken now, not when the tests were collected
        kwargs = {"timestamp": _stamp(datetime.now(UTC) + timedelta(seconds=kwargs["skew"]))}
    async with served(local_slack, database_url, fake_providers, fake_zendesk) as running:
        status, answer = await deliver(running, {"ticket_id": "1004"}, **kwargs)
        await running.deps.delivery.drain()  # type: ignore[union-attr]
        async with running.deps.database.uow() as uow:
            stats = await uow.outbox.stats()
    assert status == 400, why
    assert answer["ok"] is False
    assert cards(local_slack) == [] and sum(stats.values()) == 0
    assert fake_zendesk.server.requests == []


async def test_a_replayed_delivery_and_a_second_trigger_post_one_card(
    local_slack: LocalSlack,
    fake_providers: FakeProviders,
    fake_zendesk: FakeZendesk,
    database_url: str,
) -> None:
    """The same delivery again (Zendesk's retry), and another delivery about the same ticket:
    still one card."""
    async with served(local_slack, database_url, fake_providers, fake_zendesk) as running:
        first = await deliver(running, {"ticket_id": "1001"}, invocation="inv-7")
        replay = await deliver(running, {"ticket_id": "1001"}, invocation="inv-7")
        other = await deliver(running, {"ticket_id": "1001"}, invocation="inv-8")
        await running.deps.delivery.drain()  # type: ignore[union-attr]
    assert [first[0], replay[0], other[0]] == [200, 200, 200]
    assert first[1]["duplicate"] is False and replay[1]["duplicate"] is True
    assert len(cards(local_slack)) == 1


async def test_no_secret_or_no_ticket_is_refused(
    local_slack: LocalSlack,
    fake_providers: FakeProviders,
    fake_zendesk: FakeZendesk,
    database_url: str,
) -> None:
    """Without ZENDESK_WEBHOOK_SECRET nothing is trusted; a signed body without a ticket ID or
    with broken JSON is refused too."""
    async with served(
        local_slack, database_url, fake_providers, fake_zendesk, zendesk_webhook_secret=None
    ) as running:
        status, answer = await deliver(running, {"ticket_id": "1001"})
    assert status == 400 and "ZENDESK_WEBHOOK_SECRET" in answer["error"]
    async with served(local_slack, database_url, fake_providers, fake_zendesk) as running:
        no_ticket = await deliver(running, {"requester_email": "x@y.example"})
        broken = await deliver(running, b"{not json")
    assert no_ticket[0] == 400 and broken[0] == 400
