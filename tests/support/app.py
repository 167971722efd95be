"""The real app in HTTP mode on a random loopback port, with the local Slack stand-in as Slack's
Web API, for end-to-end tests that send signed requests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest_asyncio
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot.app import build_app, deps_of
from bot.deps import Deps
from bot.domain.ports import BillingProvider
from bot.server import HttpServer
from bot.settings import Settings
from integrations.sandbox.slack import LocalSlack
from tests.support.slack import (
    BOT_TOKEN,
    FORM,
    JSON,
    SIGNING_SECRET,
    event_body,
    signed_headers,
    slash_command_body,
)


@dataclass
class RunningApp:
    """A served app plus the handles tests need."""

    url: str
    app: AsyncApp
    deps: Deps
    slack: LocalSlack
    http: httpx.AsyncClient

    async def post_slack(self, body: str, headers: Mapping[str, str]) -> httpx.Response:
        """POST raw bytes to /slack/events."""
        return await self.http.post("/slack/events", content=body.encode(), headers=dict(headers))

    async def command(
        self, text: str, *, user_id: str = "U0SUPPORT", key: str = "cmd"
    ) -> httpx.Response:
        """Send a signed `/billing TEXT` with a response_url on the local Slack."""
        body = slash_command_body(
            text,
            user_id=user_id,
            command=self.deps.settings.billing_command,
            response_url=self.slack.response_url(key),
        )
        return await self.post_slack(body, signed_headers(body, content_type=FORM))

    async def event(self, event: dict[str, Any], *, event_id: str = "Ev0001",
                    retry_num: int | None = None) -> httpx.Response:  # fmt: skip
        """Send a signed Events API callback."""
        body = event_body(event, event_id=event_id)
        headers = signed_headers(body, content_type=JSON)
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = "http_timeout"
        return await self.post_slack(body, headers)

    async def settle(self, timeout: float = 20.0) -> None:  # noqa: ASYNC109
        """Wait until the listeners' background work is done."""
        assert await self.deps.inflight.wait_idle(timeout), "listener work did not finish"

    async def answer(
        self, text: str, *, user_id: str = "U0SUPPORT", key: str = "cmd"
    ) -> dict[str, Any]:
        """Run `/billing TEXT` and return what the user finally sees: the ack's own reply
        when the answer needed no I/O, else the last post to the response_url."""
        response = await self.command(text, user_id=user_id, key=key)
        assert response.status_code == 200, response.text
        await self.settle(30)
        if response.content:
            ack = response.json()
            assert not self.responses(key), "answered twice"
            return dict(ack)
        replies = self.responses(key)
        assert replies, "no answer was posted"
        assert all(c.ok for c in self.slack.responses_to(key)), "Slack refused a reply"
        return replies[-1]

    def responses(self, key: str = "cmd") -> list[dict[str, Any]]:
        """What was posted to a response_url, in order."""
        return [c.args for c in self.slack.responses_to(key)]


def test_settings(slack: LocalSlack, database_url: str, **overrides: Any) -> Settings:
    """Settings for the served app: test tokens, the local Slack, the given database."""
    values: dict[str, Any] = {
        "slack_bot_token": BOT_TOKEN,
        "slack_signing_secret": SIGNING_SECRET,
        "slack_api_url": slack.base_url,
        "database_url": database_url,
    }
    values.update(overrides)
    return Settings.load(**values)


@asynccontextmanager
async def serve_app(
    slack: LocalSlack,
    database_url: str,
    *,
    providers: Mapping[str, BillingProvider] | None = None,
    build: Callable[..., AsyncApp] = build_app,
    **overrides: Any,
) -> AsyncIterator[RunningApp]:
    """Start the app in HTTP mode on 127.0.0.1:<random>; stop it gracefully after."""
    settings = test_settings(slack, database_url, **overrides)
    client = AsyncWebClient(token=BOT_TOKEN, base_url=slack.base_url)
    app = build(settings, slack_client=client, providers=providers if providers is not None else {})
    server = HttpServer(app, host="127.0.0.1", port=0)
    await server.start()
    url = f"http://127.0.0.1:{server.port}"
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        try:
            yield RunningApp(url=url, app=app, deps=deps_of(app), slack=slack, http=http)
        finally:
            await server.stop()


@pytest_asyncio.fixture
async def running_app(local_slack: LocalSlack, tmp_path: Any) -> AsyncIterator[RunningApp]:
    """The app served over HTTP on SQLite, with no billing providers."""
    async with serve_app(local_slack, f"sqlite+aiosqlite:///{tmp_path}/app.db") as running:
        yield running


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Poll `predicate` until true (without busy-spinning)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
