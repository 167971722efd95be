"""`POST /webhooks/zendesk` (DESIGN §10.3): a Zendesk webhook (a trigger on new tickets, or the
`zen:event-type:ticket.created` event) becomes one triage card in `TRIAGE_CHANNEL`.

Verified first: `X-Zendesk-Webhook-Signature` must be base64(HMAC-SHA256(secret, timestamp +
raw body)) with `X-Zendesk-Webhook-Signature-Timestamp` within 300 s of now; anything else is
400 and nothing else happens. The answer (200) comes before any slow work: the delivery is
deduplicated and the card enqueued in the outbox in one transaction, keyed by the ticket, and the
outbox's renderer does the triage when it delivers the card.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from bot.deps import Deps
from bot.domain.records import OutgoingMessage
from handlers.zendesk import TRIAGE_RENDERER

log = logging.getLogger("handlers.zendesk_webhook")

WEBHOOK_PATH = "/webhooks/zendesk"
SIGNATURE_HEADER = "X-Zendesk-Webhook-Signature"
TIMESTAMP_HEADER = "X-Zendesk-Webhook-Signature-Timestamp"
INVOCATION_HEADER = "X-Zendesk-Webhook-Invocation-Id"
TOLERANCE_SECONDS = 300
MAX_BODY = 256 * 1024
TICKET_EVENTS = ("zen:event-type:ticket.created",)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Zendesk's signature of a delivery: base64(HMAC-SHA256(secret, timestamp + body))."""
    digest = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _parse_time(value: str) -> datetime | None:
    text = value.strip()
    if text.isdigit():
        return datetime.fromtimestamp(int(text), UTC)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def verify(
    secret: str, *, signature: str | None, timestamp: str | None, body: bytes, now: datetime
) -> str | None:
    """Why the delivery must be refused, or None when it is Zendesk's and fresh."""
    if not signature or not timestamp:
        return "missing signature or timestamp"
    when = _parse_time(timestamp)
    if when is None:
        return "unreadable timestamp"
    if abs((now - when).total_seconds()) > TOLERANCE_SECONDS:
        return "stale timestamp"
    if not hmac.compare_digest(sign(secret, timestamp, body), signature.strip()):
        return "bad signature"
    return None


def ticket_id_of(payload: Mapping[str, Any]) -> int | None:
    """The ticket a delivery is about: a trigger's `ticket_id`, or an event's `detail.id` /
    `subject` (`zen:ticket:123`)."""
    candidates: list[Any] = [payload.get("ticket_id")]
    detail = payload.get("detail")
    if isinstance(detail, Mapping):
        candidates.append(detail.get("id"))
    ticket = payload.get("ticket")
    if isinstance(ticket, Mapping):
        candidates.append(ticket.get("id"))
    subject = payload.get("subject")
    if isinstance(subject, str):
        match = re.fullmatch(r"zen:ticket:(\d{1,19})", subject)
        if match:
            candidates.append(match.group(1))
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        if isinstance(value, str) and re.fullmatch(r"[1-9][0-9]{0,18}", value.strip()):
            return int(value.strip())
    return None


def delivery_id(payload: Mapping[str, Any], headers: Mapping[str, str], body: bytes) -> str:
    """What names this delivery across Zendesk's retries: the event ID, else the invocation ID,
    else the body's digest (a trigger's retry re-sends the same body)."""
    event_id = payload.get("id")
    if isinstance(event_id, str | int) and str(event_id).strip() and "type" in payload:
        return f"event:{str(event_id)[:200]}"
    invocation = headers.get(INVOCATION_HEADER)
    if invocation:
        return f"invocation:{invocation[:200]}"
    return "body:" + hashlib.sha256(body).hexdigest()


def add_routes(web_app: web.Application, deps: Deps) -> None:
    """Serve `POST /webhooks/zendesk` on `web_app`."""

    def refuse(reason: str) -> web.Response:
        deps.metrics.inc("billing_triage_webhooks_total", source="zendesk", outcome="refused")
        log.warning("zendesk webhook refused", extra={"reason": reason})
        return web.json_response({"ok": False, "error": reason}, status=400)

    async def handle_zendesk_webhook(request: web.Request) -> web.Response:
        secret = deps.settings.zendesk_webhook_secret
        if secret is None:
            return refuse("ZENDESK_WEBHOOK_SECRET is not set")
        if request.content_length is not None and request.content_length > MAX_BODY:
            return refuse("body too large")
        body = await request.read()
        if len(body) > MAX_BODY:
            return refuse("body too large")
        now = datetime.now(UTC)
        problem = verify(
            secret.get_secret_value(),
            signature=request.headers.get(SIGNATURE_HEADER),
            timestamp=request.headers.get(TIMESTAMP_HEADER),
            body=body,
            now=now,
        )
        if problem is not None:
            return refuse(problem)
        try:
            payload = json.loads(body)
        except ValueError:
            return refuse("body is not JSON")
        if not isinstance(payload, dict):
            return refuse("body is not a JSON object")
        kind = payload.get("type")
        if isinstance(kind, str) and kind not in TICKET_EVENTS:
            deps.metrics.inc("billing_triage_webhooks_total", source="zendesk", outcome="ignored")
            return web.json_response({"ok": True, "ignored": kind})
        ticket_id = ticket_id_of(payload)
        if ticket_id is None:
            return refuse("no ticket ID in the body")
        delivery = delivery_id(payload, request.headers, body)
        channel = deps.settings.triage_channel
        async with deps.database.uow() as uow:
            first = await uow.events.mark_processed("zendesk", delivery)
            queued = False
            if first and channel:
                queued = await uow.outbox.enqueue(
                    OutgoingMessage(
                        key=f"triage:ticket:{ticket_id}",
                        op="post",
                        channel=channel,
                        ref=f"ticket:{ticket_id}",
                        render=TRIAGE_RENDERER,
                        payload={"ticket_id": ticket_id},
                    ),
                    now=now,
                )
            await uow.commit()
        if queued and deps.delivery is not None:
            deps.delivery.wake()
        outcome = "duplicate" if not first else "queued" if queued else "accepted"
        deps.metrics.inc("billing_triage_webhooks_total", source="zendesk", outcome=outcome)
        return web.json_response({"ok": True, "ticket_id": ticket_id, "duplicate": not first})

    web_app.router.add_post(WEBHOOK_PATH, handle_zendesk_webhook)
