"""Provider webhook signatures, each in its provider's own scheme (notes/providers.md §1.6, §2.5,
§3.5), checked over the raw request bytes with constant-time comparisons.

- **Stripe** `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]`: HMAC-SHA256 of `"{t}.{body}"`
  keyed with the `whsec_…` secret as UTF-8; any `v1` may match (several during a secret
  rotation; other schemes such as `v0` are ignored); `t` older than 300 s is refused (and, like
  the Orb check, one more than 300 s in the future: a clock that far ahead is not a delivery).
- **Orb** `X-Orb-Timestamp` (ISO 8601, UTC when no zone) and `X-Orb-Signature: v1=<hex>` (one
  or more, space-separated): HMAC-SHA256 of `"v1:{timestamp}:{body}"`; ±5 minutes.
- **Metronome** `Metronome-Webhook-Signature: <hex>`: HMAC-SHA256 of `"{date}\\n{body}"` where
  the date is `Date` or `X-Metronome-Date` (the documentation is unclear which one it sends;
  either may match); ±5 minutes.

Pure: imports only the standard library.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

STRIPE_TOLERANCE = 300.0
ORB_TOLERANCE = 300.0
METRONOME_TOLERANCE = 300.0


class BadSignature(Exception):
    """The delivery is not signed by the provider with our secret (or is too old); the reason
    is for the log, never for the sender."""


def _hmac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _matches(expected: str, candidates: Iterable[str]) -> bool:
    # Compare against every candidate (no early exit) so timing says nothing about which.
    found = False
    for candidate in candidates:
        found |= hmac.compare_digest(expected, candidate.strip().lower())
    return found


def _secrets(secret: str | Sequence[str]) -> list[str]:
    return [secret] if isinstance(secret, str) else [s for s in secret if s]


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def _check_age(sent: datetime, now: datetime, tolerance: float, *, future: bool = True) -> None:
    age = (now - sent).total_seconds()
    if age > tolerance:
        raise BadSignature("timestamp too old")
    if future and age < -tolerance:
        raise BadSignature("timestamp in the future")


def verify_stripe(
    body: bytes,
    headers: Mapping[str, str],
    secret: str | Sequence[str],
    *,
    now: datetime,
    tolerance: float = STRIPE_TOLERANCE,
) -> None:
    """Raise `BadSignature` unless `Stripe-Signature` signs `body` with (one of) `secret`."""
    header = _header(headers, "Stripe-Signature")
    if not header:
        raise BadSignature("no Stripe-Signature header")
    timestamp: str | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            timestamp = value
        elif key == "v1" and value:
            signatures.append(value)
    if timestamp is None or not timestamp.isdigit():
        raise BadSignature("no timestamp")
    if not signatures:
        raise BadSignature("no v1 signature")
    signed = timestamp.encode() + b"." + body
    if not any(_matches(_hmac(s, signed), signatures) for s in _secrets(secret)):
        raise BadSignature("signature mismatch")
    _check_age(datetime.fromtimestamp(int(timestamp), UTC), now, tolerance)


def _orb_time(value: str) -> datetime:
    try:
        sent = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadSignature("unreadable X-Orb-Timestamp") from None
    return sent if sent.tzinfo else sent.replace(tzinfo=UTC)


def verify_orb(
    body: bytes,
    headers: Mapping[str, str],
    secret: str | Sequence[str],
    *,
    now: datetime,
    tolerance: float = ORB_TOLERANCE,
) -> None:
    """Raise `BadSignature` unless `X-Orb-Signature` signs `v1:{X-Orb-Timestamp}:{body}`."""
    timestamp = _header(headers, "X-Orb-Timestamp")
    header = _header(headers, "X-Orb-Signature")
    if not timestamp or not header:
        raise BadSignature("no X-Orb-Timestamp or X-Orb-Signature header")
    signatures = [
        value for key, _, value in (p.partition("=") for p in header.split()) if key == "v1"
    ]
    if not signatures:
        raise BadSignature("no v1 signature")
    signed = b"v1:" + timestamp.encode() + b":" + body
    if not any(_matches(_hmac(s, signed), signatures) for s in _secrets(secret)):
        raise BadSignature("signature mismatch")
    _check_age(_orb_time(timestamp), now, tolerance)


def verify_metronome(
    body: bytes,
    headers: Mapping[str, str],
    secret: str | Sequence[str],
    *,
    now: datetime,
    tolerance: float = METRONOME_TOLERANCE,
) -> None:
    """Raise `BadSignature` unless `Metronome-Webhook-Signature` signs `{date}\\n{body}` with
    the `Date` or the `X-Metronome-Date` header as the date."""
    signature = _header(headers, "Metronome-Webhook-Signature")
    if not signature:
        raise BadSignature("no Metronome-Webhook-Signature header")
    dates = [d for d in (_header(headers, "X-Metronome-Date"), _header(headers, "Date")) if d]
    if not dates:
        raise BadSignature("no Date or X-Metronome-Date header")
    for date_value in dict.fromkeys(dates):
        signed = date_value.encode() + b"\n" + body
        if any(_matches(_hmac(s, signed), [signature]) for s in _secrets(secret)):
            try:
                sent = parsedate_to_datetime(date_value)
            except (TypeError, ValueError):
                try:
                    sent = _orb_time(date_value)
                except BadSignature:
                    raise BadSignature("unreadable date header") from None
            if sent.tzinfo is None:
                sent = sent.replace(tzinfo=UTC)
            _check_age(sent, now, tolerance)
            return
    raise BadSignature("signature mismatch")


def sign_stripe(body: bytes, secret: str, *, timestamp: int) -> str:
    """A `Stripe-Signature` value for `body` (for tests, the bench and the sandbox sender)."""
    return f"t={timestamp},v1={_hmac(secret, str(timestamp).encode() + b'.' + body)}"


def sign_orb(body: bytes, secret: str, *, timestamp: str) -> str:
    """An `X-Orb-Signature` value for `body` sent at `timestamp`."""
    return "v1=" + _hmac(secret, b"v1:" + timestamp.encode() + b":" + body)


def sign_metronome(body: bytes, secret: str, *, date: str) -> str:
    """A `Metronome-Webhook-Signature` value for `body` sent with date header `date`."""
    return _hmac(secret, date.encode() + b"\n" + body)
