"""The yardstick for bench/ack.py: a bare Bolt app whose only listener acks `/billing` (Bolt's
defaults, its own aiohttp server), so our ack latency can be compared with the framework's own.

    python bench/bare_bolt.py PORT SIGNING_SECRET SLACK_API_URL
"""

from __future__ import annotations

import sys
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.web.async_client import AsyncWebClient


def main() -> None:
    """Serve until killed."""
    port, secret, api_url = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    client = AsyncWebClient(token="xoxb-bench-0000", base_url=api_url)
    app = AsyncApp(client=client, signing_secret=secret)

    @app.command("/billing")
    async def handle_billing_command(ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack(text="ok")

    app.start(port=port, path="/slack/events")


if __name__ == "__main__":
    main()
