"""What the three provider writers share: argument checks and the one log line per write.

The writers themselves live with their clients (`integrations/stripe.py`, `orb.py`,
`metronome.py`); the HTTP policy that retries them with the same key is `integrations/http.py`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from bot.domain.models import WriteKind, WriteResult, check_idempotency_key
from bot.domain.money import Money
from bot.errors import (
    ProviderError,
    ProviderIdempotencyConflict,
    ProviderOutcomeUnknown,
    ProviderRequestError,
    ProviderUnavailable,
)

log = logging.getLogger("integrations.writes")


def check_write(*, request_id: str, idempotency_key: str, amount: Money) -> None:
    """Raise ValueError for arguments the approval flow must never send: a key not of the form
    `bt:{request_id}:{action}` or longer than 64 characters, a non-positive amount, or an amount
    with more decimals than its currency has."""
    check_idempotency_key(idempotency_key, request_id)
    if amount.amount <= 0:
        raise ValueError(f"a write needs a positive amount, not {amount.amount}")
    if amount.quantize().amount != amount.amount:
        raise ValueError(f"{amount.amount} has more decimals than {amount.currency.upper()} has")


def no_refunds(provider: str, label: str) -> ProviderRequestError:
    """The refusal of a provider without a money-back refund endpoint (Orb, Metronome)."""
    return ProviderRequestError(
        provider,
        f"{label} cannot refund money; refunds go through the Stripe payment "
        "(a charge ch_… or payment intent pi_…)",
    )


def _outcome(exc: ProviderError) -> str:
    if isinstance(exc, ProviderOutcomeUnknown):
        return "unknown"
    if isinstance(exc, ProviderIdempotencyConflict):
        return "conflict"
    if isinstance(exc, ProviderUnavailable):
        return "not_sent"
    return "rejected"


async def logged_write(
    provider: str,
    kind: WriteKind,
    *,
    request_id: str,
    idempotency_key: str,
    run: Callable[[], Awaitable[WriteResult]],
) -> WriteResult:
    """Run one write and log exactly one line: provider, kind, request ID, key, outcome
    (`created`, `replayed`, `unknown`, `conflict`, `rejected`, `not_sent`), the provider's
    object ID and the time taken. Never the API key: it is not known here."""
    started = time.monotonic()
    fields: dict[str, object] = {
        "provider": provider,
        "write": kind,
        "request_id": request_id,
        "idempotency_key": idempotency_key,
    }
    try:
        result = await run()
    except ProviderError as exc:
        fields.update(outcome=_outcome(exc), status=exc.status, reason=exc.message)
        fields["ms"] = round((time.monotonic() - started) * 1000)
        level = logging.WARNING if fields["outcome"] in ("unknown", "conflict") else logging.INFO
        log.log(level, "provider write %s", fields["outcome"], extra=fields)
        raise
    fields.update(
        outcome="replayed" if result.replayed else "created",
        object_id=result.object_id,
        provider_status=result.status,
        ms=round((time.monotonic() - started) * 1000),
    )
    log.info("provider write %s", fields["outcome"], extra=fields)
    return result
