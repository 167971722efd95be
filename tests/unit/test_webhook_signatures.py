"""Webhook signatures in each provider's scheme, checked against the providers' own SDK
verifiers where they exist (Stripe, Orb)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import stripe

from bot.domain.webhooks import (
    BadSignature,
    sign_metronome,
    sign_orb,
    sign_stripe,
    verify_metronome,
    verify_orb,
    verify_stripe,
)

BODY = b'{"id": "evt_1", "type": "charge.dispute.created"}'
SECRET = "whsec_test_secret"
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def test_stripe_good_signature_passes_ours_and_stripes_own_verifier() -> None:
    """A signature made the Stripe way passes our check and `stripe.WebhookSignature`."""
    header = sign_stripe(BODY, SECRET, timestamp=int(NOW.timestamp()))
    verify_stripe(BODY, {"Stripe-Signature": header}, SECRET, now=NOW)
    assert stripe.WebhookSignature.verify_header(BODY.decode(), header, SECRET, tolerance=None)


def test_stripe_rotated_secret_with_several_v1_signatures_passes() -> None:
    """During a secret rotation Stripe signs with both secrets; either one verifies."""
    ts = int(NOW.timestamp())
    old = sign_stripe(BODY, "whsec_old", timestamp=ts).split(",")[1]
    new = sign_stripe(BODY, SECRET, timestamp=ts).split(",")[1]
    header = f"t={ts},{old},{new},v0=ignored"
    verify_stripe(BODY, {"stripe-signature": header}, SECRET, now=NOW)
    verify_stripe(BODY, {"stripe-signature": header}, "whsec_old", now=NOW)


@pytest.mark.parametrize(
    ("header", "body", "age"),
    [
        ("t=1,v1=00", BODY, 0),  # wrong signature
        (None, b'{"id": "evt_1", "type": "other"}', 0),  # body changed after signing
        (None, BODY, 301),  # older than the 300 s tolerance
        (None, BODY, -301),  # from the future
        ("v1=abc", BODY, 0),  # no timestamp
    ],
)
def test_stripe_bad_or_stale_signatures_are_refused(
    header: str | None, body: bytes, age: int
) -> None:
    """Wrong, tampered, stale and malformed Stripe signatures raise `BadSignature`."""
    ts = int((NOW - timedelta(seconds=age)).timestamp())
    value = header or sign_stripe(BODY, SECRET, timestamp=ts)
    with pytest.raises(BadSignature):
        verify_stripe(body, {"Stripe-Signature": value}, SECRET, now=NOW)


def test_stripe_stale_is_also_refused_by_stripes_verifier() -> None:
    """Stripe's own verifier agrees that 301 s is too old."""
    ts = int(NOW.timestamp()) - 301
    header = sign_stripe(BODY, SECRET, timestamp=ts)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(BODY.decode(), header, SECRET, tolerance=300)


def test_orb_signature_matches_orbs_sdk_and_has_a_window_both_sides() -> None:
    """Orb's scheme verifies with its SDK too; 6 minutes early or late is refused."""
    from orb import Orb

    stamp = NOW.replace(tzinfo=None).isoformat()
    headers = {"X-Orb-Timestamp": stamp, "X-Orb-Signature": sign_orb(BODY, SECRET, timestamp=stamp)}
    verify_orb(BODY, headers, SECRET, now=NOW)
    client = Orb(api_key="orb_test", webhook_secret=SECRET, base_url="http://127.0.0.1:9/v1")
    real_now = datetime.now(UTC).replace(tzinfo=None).isoformat()
    sdk_headers = {"X-Orb-Timestamp": real_now,
                   "X-Orb-Signature": sign_orb(BODY, SECRET, timestamp=real_now)}  # fmt: skip
    client.webhooks.verify_signature(BODY.decode(), sdk_headers, secret=SECRET)
    for skew in (timedelta(minutes=6), timedelta(minutes=-6)):
        with pytest.raises(BadSignature):
            verify_orb(BODY, headers, SECRET, now=NOW + skew)
    with pytest.raises(BadSignature):
        verify_orb(BODY, {**headers, "X-Orb-Signature": "v1=00"}, SECRET, now=NOW)


def test_metronome_accepts_either_date_header_and_refuses_the_rest() -> None:
    """Metronome's HMAC over `date\\nbody` verifies with `Date` or `X-Metronome-Date`."""
    date = "Fri, 20 Nov 2026 12:00:00 GMT"
    signature = sign_metronome(BODY, SECRET, date=date)
    verify_metronome(
        BODY, {"Date": date, "Metronome-Webhook-Signature": signature}, SECRET, now=NOW
    )
    verify_metronome(
        BODY, {"X-Metronome-Date": date, "Metronome-Webhook-Signature": signature}, SECRET, now=NOW
    )
    with pytest.raises(BadSignature):
        verify_metronome(BODY, {"Date": date, "Metronome-Webhook-Signature": signature}, SECRET,
                         now=NOW + timedelta(minutes=6))  # fmt: skip
    with pytest.raises(BadSignature):
        verify_metronome(b"{}", {"Date": date, "Metronome-Webhook-Signature": signature}, SECRET,
                         now=NOW)  # fmt: skip
