"""`POST /webhooks/stripe`, `/webhooks/orb`, `/webhooks/metronome` (DESIGN §1, issue 9).

Each delivery is verified over its raw bytes in its provider's scheme (`bot.domain.webhooks`);
a bad or stale signature, or a body that is not a JSON event, gets 400 and nothing is stored.
A verified event is stored (deduplicated on the provider's event ID) and answered 200 before
any slow work; its alert is made and posted right after, in the background (tracked, so
shutdown waits for it); a crash in between leaves the event stored, and the `webhooks` job
processes it. An event type we do not handle is stored, answered 200 and ignored. A provider
whose secret is not set answers 404, as before the feature existed (nothing can be verified).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from bot.deps import Deps
from bot.domain.webhooks import BadSignature, verify_metronome, verify_orb, verify_stripe
from bot.services.webhooks import WebhookService, event_id_of
from handlers.alerts import webhook_service

log = logging.getLogger("handlers.webhooks")

Verifier = Callable[..., None]
MAX_BODY = 1024 * 1024


def add_webhook_routes(web_app: web.Application, deps: Deps) -> None:
    """Add the three provider webhook routes to `web_app`."""
    service = webhook_service(deps)
    settings = deps.settings
    routes: dict[str, tuple[Verifier, Any]] = {
        "stripe": (verify_stripe, settings.stripe_webhook_secret),
        "orb": (verify_orb, settings.orb_webhook_secret),
        "metronome": (verify_metronome, settings.metronome_webhook_secret),
    }
    for source, (verify, secret) in routes.items():
        web_app.router.add_post(
            f"/webhooks/{source}", _handler(source, verify, secret, service=service, deps=deps)
        )


def _handler(
    source: str, verify: Verifier, secret: Any, *, service: WebhookService, deps: Deps
) -> Callable[[web.Request], Any]:
    async def handle_webhook(request: web.Request) -> web.Response:
        if secret is None:
            return web.json_response({"error": "not configured"}, status=404)
        body = await request.read()
        if len(body) > MAX_BODY:
            return web.json_response({"error": "too large"}, status=413)
        headers: Mapping[str, str] = request.headers
        try:
            verify(body, headers, secret.get_secret_value(), now=datetime.now(UTC))
        except BadSignature as exc:
            deps.metrics.inc(
                "billing_triage_webhooks_total", source=source, outcome="bad_signature"
            )
            log.warning("webhook refused", extra={"source": source, "reason": str(exc)})
            return web.json_response({"error": "invalid signature"}, status=400)
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict) or event_id_of(source, payload) is None:
            deps.metrics.inc("billing_triage_webhooks_total", source=source, outcome="malformed")
            return web.json_response({"error": "not an event"}, status=400)
        event = await service.receive(source, payload)
        if event is None:
            deps.metrics.inc("billing_triage_webhooks_total", source=source, outcome="duplicate")
            return web.json_response({"ok": True, "duplicate": True})
        deps.metrics.inc("billing_triage_webhooks_total", source=source, outcome="accepted")

        async def process() -> None:
            try:
                outcome = await service.process(event)
            except Exception:  # stored: the reconciler retries it
                log.exception("webhook processing failed", extra={"event": event.event_id})
                return
            log.info("webhook processed", extra={"source": source, "outcome": outcome})

        deps.inflight.spawn(process())
        return web.json_response({"ok": True})

    return handle_webhook
