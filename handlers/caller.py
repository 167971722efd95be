"""Who typed or clicked, and what the Slack edge can do for them (open a modal, reply)."""

from __future__ import annotations

from dataclasses import dataclass

from slack_sdk.web.async_client import AsyncWebClient


@dataclass(frozen=True, slots=True)
class Caller:
    """The user behind a command, mention or click. `trigger_id` and `client` let a command
    open a modal (refund and credit forms); `response_url` lets a later step confirm to them."""

    user_id: str
    slack_request: str | None = None
    trigger_id: str | None = None
    response_url: str | None = None
    client: AsyncWebClient | None = None
    origin: str = "command"
