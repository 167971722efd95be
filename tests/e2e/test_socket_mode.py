"""`billing-triage socket` end to end, with no real Slack: the app built as the CLI builds it,
Bolt's aiohttp Socket Mode handler connected to a fake Socket Mode server (apps.connections.open
and the WebSocket), and LocalSlack answering the bot's Web API calls. Envelopes in, acks out."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot.app import build_app, deps_of
from bot.deps import Deps
from bot.server import SocketModeRunner
from bot.settings import Settings
from integrations.sandbox.slack import LocalSlack
from tests.support.app import wait_until
from tests.support.slack import BOT_TOKEN, app_mention
from tests.support.socket_mode import (
    APP_TOKEN,
    FakeSocketModeServer,
    events_api_envelope,
    slash_command_envelope,
)


@dataclass
class SocketApp:
    """The app connected in Socket Mode, with the fakes on both sides."""

    app: AsyncApp
    deps: Deps
    slack: LocalSlack
    server: FakeSocketModeServer
    handler: AsyncSocketModeHandler


def _texts(payload: dict[str, Any]) -> str:
    return (payload.get("text") or "") + json.dumps(payload.get("blocks") or [])


def _socket_settings(slack: LocalSlack, tmp_path: Any) -> Settings:
    """What a developer sets for `billing-triage socket`: the two tokens and a database."""
    return Settings.load(
        slack_bot_token=BOT_TOKEN,
        slack_app_token=APP_TOKEN,
        slack_api_url=slack.base_url,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/socket.db",
    )


@pytest_asyncio.fixture
async def socket_app(local_slack: LocalSlack, tmp_path: Any) -> AsyncIterator[SocketApp]:
    """What `billing-triage socket` runs (socket_forever), wired to the fakes, on SQLite."""
    settings = _socket_settings(local_slack, tmp_path)
    settings.require("socket")  # no signing secret: Socket Mode needs none
    assert settings.slack_app_token is not None
    app = build_app(settings)  # as the CLI does; no provider keys, so the sandbox answers
    async with FakeSocketModeServer() as server:
        # The one difference from socket_forever: apps.connections.open goes to the fake server;
        # the app's own client (LocalSlack) still carries every bot-token call.
        runner = SocketModeRunner(
            app,
            settings.slack_app_token.get_secret_value(),
            web_client=AsyncWebClient(base_url=server.base_url),
        )
        await runner.start()
        try:
            await server.wait_connected()
            yield SocketApp(app, deps_of(app), local_slack, server, runner.handler)
        finally:
            await runner.stop()
        await wait_until(lambda: server.open_sockets == 0, timeout=5)


async def test_connects_with_the_app_level_token(socket_app: SocketApp) -> None:
    """Starting Socket Mode opens one connection with the xapp- token and sends nothing yet."""
    assert socket_app.server.connections_opened == [APP_TOKEN]
    assert socket_app.server.open_sockets == 1
    assert socket_app.server.received == []
    assert await socket_app.handler.client.is_connected()


@pytest.mark.parametrize("text", ["", "help"])
async def test_help_is_the_ack_payload(socket_app: SocketApp, text: str) -> None:
    """`/billing help` over Socket Mode answers in the ack itself: usage and examples."""
    envelope = slash_command_envelope(text, response_url=socket_app.slack.response_url("cmd"))
    ack = await socket_app.server.deliver(envelope)
    payload = ack["payload"]
    assert payload.get("response_type", "ephemeral") == "ephemeral"
    content = _texts(payload)
    for sub in ("explain", "draft", "refund", "credit", "alerts", "history"):
        assert f"/billing {sub}" in content
    assert "Examples" in content
    assert await socket_app.deps.inflight.wait_idle(5)
    assert socket_app.slack.responses_to("cmd") == []  # answered once, by the ack


async def test_argument_errors_are_the_ack_payload(socket_app: SocketApp) -> None:
    """`/billing refund acct_1 abc x` acks with the argument error and posts nothing else."""
    envelope = slash_command_envelope(
        "refund acct_1 abc x", response_url=socket_app.slack.response_url("cmd")
    )
    ack = await socket_app.server.deliver(envelope)
    assert "not an amount" in ack["payload"]["text"]
    assert "Traceback" not in _texts(ack["payload"])
    assert await socket_app.deps.inflight.wait_idle(5)
    assert socket_app.slack.responses_to("cmd") == []


async def test_lookups_ack_empty_then_answer_at_the_response_url(socket_app: SocketApp) -> None:
    """`/billing status …` acks at once with no payload; the account arrives at the response_url
    (from the sandbox, as `billing-triage socket` runs without provider keys)."""
    envelope = slash_command_envelope(
        "status acct_northwind", response_url=socket_app.slack.response_url("cmd")
    )
    ack = await socket_app.server.deliver(envelope)
    assert set(ack) == {"envelope_id"}
    assert await socket_app.deps.inflight.wait_idle(20)
    replies = socket_app.slack.responses_to("cmd")
    assert replies and all(call.ok for call in replies)
    final = _texts(replies[-1].args)
    assert "Northwind" in final and "Recent invoices" in final


async def test_mentions_are_acked_and_answered_in_a_thread(socket_app: SocketApp) -> None:
    """An app_mention envelope is acked, then answered with chat.postMessage in its thread."""
    event = app_mention("<@UBOTTRIAGE> help", ts="1700000000.000200")
    ack = await socket_app.server.deliver(events_api_envelope(event, event_id="EvSockHelp1"))
    assert set(ack) == {"envelope_id"}
    posts = await socket_app.slack.wait_for("chat.postMessage")
    assert posts[0].ok
    assert posts[0].args["channel"] == "C0SUPPORT"
    assert posts[0].args["thread_ts"] == "1700000000.000200"
    assert "/billing explain" in _texts(posts[0].args)


async def test_redelivered_events_are_answered_once(socket_app: SocketApp) -> None:
    """Slack's redelivery of an event (same event_id, retry_attempt 1) is acked but not answered
    again; a different event still is."""
    event = app_mention("<@UBOTTRIAGE> help", ts="1700000000.000300")
    server, slack = socket_app.server, socket_app.slack
    await server.deliver(events_api_envelope(event, event_id="EvSockDup1"))
    retry = events_api_envelope(
        event, event_id="EvSockDup1", retry_attempt=1, retry_reason="timeout"
    )
    ack = await server.deliver(retry)
    assert set(ack) == {"envelope_id"}  # acked, so Slack stops redelivering
    assert await socket_app.deps.inflight.wait_idle(5)
    await slack.wait_for("chat.postMessage")
    await server.deliver(events_api_envelope(event, event_id="EvSockDup2"))
    await slack.wait_for("chat.postMessage", count=2)
    assert await socket_app.deps.inflight.wait_idle(5)
    assert len(slack.calls_to("chat.postMessage")) == 2
    assert "billing_triage_slack_duplicate_events_total 1" in socket_app.deps.metrics.render()


async def test_every_envelope_gets_exactly_one_ack(socket_app: SocketApp) -> None:
    """Several envelopes in a row each get one ack, matched by envelope_id."""
    server = socket_app.server
    ids = [
        await server.send(slash_command_envelope("help")),
        await server.send(events_api_envelope(app_mention("<@UBOTTRIAGE> help"), event_id="EvA")),
        await server.send(slash_command_envelope("alerts please")),
    ]
    for envelope_id in ids:
        await server.ack_for(envelope_id)
    assert await socket_app.deps.inflight.wait_idle(5)
    assert [len(server.acks_for(envelope_id)) for envelope_id in ids] == [1, 1, 1]
    assert len(server.received) == 3


async def test_closing_the_handler_disconnects_cleanly(
    local_slack: LocalSlack, tmp_path: Any
) -> None:
    """Stopping Socket Mode closes the socket and does not reconnect."""
    settings = _socket_settings(local_slack, tmp_path)
    app = build_app(settings)
    async with FakeSocketModeServer() as server:
        runner = SocketModeRunner(
            app, APP_TOKEN, web_client=AsyncWebClient(base_url=server.base_url)
        )
        await runner.start()
        handler = runner.handler
        await server.wait_connected()
        await runner.stop()
        await wait_until(lambda: server.open_sockets == 0, timeout=5)
        assert server.connections_opened == [APP_TOKEN]  # no reconnect after close
        assert not await handler.client.is_connected()


async def test_a_refused_app_token_is_a_configuration_error(
    local_slack: LocalSlack, tmp_path: Any
) -> None:
    """A wrong SLACK_APP_TOKEN fails fast with a configuration error instead of hanging."""
    from bot.errors import ConfigError

    settings = _socket_settings(local_slack, tmp_path)
    app = build_app(settings)
    async with FakeSocketModeServer() as server:
        runner = SocketModeRunner(
            app, "xapp-wrong-token", web_client=AsyncWebClient(base_url=server.base_url)
        )
        with pytest.raises(ConfigError, match="SLACK_APP_TOKEN was refused"):
            await runner.start()
        assert server.open_sockets == 0
