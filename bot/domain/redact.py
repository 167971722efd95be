"""Redaction and quoting of text before it leaves the bot (prompts, logs, notes).

`redact` removes card numbers, third parties' emails and secrets. `quote` turns customer-controlled
text (names, memos, line descriptions, metadata) into one JSON string literal that a prompt can show
as data: it cannot contain a newline, an unescaped quote, Slack markup or a control character, so it
cannot close the quoted-data section it sits in or ping anyone.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Collection

CARD = "[card]"
EMAIL = "[email]"
SECRET = "[secret]"  # noqa: S105 - the placeholder text, not a password

# Vendor secrets with a known shape. Checked first so a key is never half-redacted as an email or
# a card. Publishable Stripe keys (`pk_…`) are public by design and left alone.
_SECRET_RES = (
    re.compile(r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{8,}\b"),
    re.compile(r"\brk_[A-Za-z0-9_]{8,}\b"),
    re.compile(r"\bwhsec_[A-Za-z0-9+/=_]{8,}"),
    re.compile(r"\bxox[abeoprs]-[A-Za-z0-9-]{8,}"),
    re.compile(r"\bxapp-[A-Za-z0-9-]{8,}"),
    re.compile(r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{16,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"\bBearer\s+[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE),
    # Basic-auth credentials inside URLs: https://user:pass@host
    re.compile(r"(?<=://)[^\s/:@]+:[^\s/@]+(?=@)"),
)
# Long opaque tokens that mix letters and digits are treated as secrets whatever their prefix
# (Orb and Metronome keys, JWTs, client secrets). UUIDs are IDs (Metronome uses them), not secrets.
_TOKEN_RE = re.compile(r"[A-Za-z0-9_\-+/=.]{32,}")
# Stripe-style object IDs (`upcoming_in_…`, `cs_test_…`) can be this long too; they are IDs
# unless they carry `secret` (a payment intent's client secret is `pi_…_secret_…`).
_OBJECT_ID_RE = re.compile(r"[a-z]{1,16}(?:_[a-z]{1,16}){0,2}_[A-Za-z0-9]{8,64}")
_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_EMAIL_RE = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+"
)
# 13–19 digits, optionally grouped by single spaces or dashes, not part of a longer number.
_CARD_RE = re.compile(r"(?<![\d])\d(?:[ -]?\d){12,18}(?![\d])")

# Slack markup: <@U123>, <#C123|name>, <!here>, <mailto:a@b.c|a@b.c>, <https://x|label>, <https://x>.
_SLACK_MARKUP_RE = re.compile(r"<([^<>]*)>")
_WS_RE = re.compile(r"\s+")


def luhn_valid(digits: str) -> bool:
    """True when the digit string passes the Luhn checksum used by card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _entropy(token: str) -> float:
    counts = Counter(token)
    n = len(token)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _looks_secret(token: str) -> bool:
    if _UUID_RE.fullmatch(token):
        return False
    if _OBJECT_ID_RE.fullmatch(token) and "secret" not in token:
        return False
    has_digit = any(c.isdigit() for c in token)
    has_alpha = any(c.isalpha() for c in token)
    # Plain long words, paths or dotted names are not secrets; random tokens mix classes and have
    # high per-character entropy (a base62 key is ~5 bits/char, English ~3.5 at this length).
    return has_digit and has_alpha and _entropy(token) >= 3.5


def _redact_card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return CARD if luhn_valid(digits) else match.group(0)


def redact(text: str, *, allowed_emails: Collection[str] = ()) -> str:
    """Replace card numbers, emails not in `allowed_emails`, and secrets with placeholders."""
    out = text
    for pattern in _SECRET_RES:
        out = pattern.sub(SECRET, out)
    out = _TOKEN_RE.sub(lambda m: SECRET if _looks_secret(m.group(0)) else m.group(0), out)
    allowed = {e.strip().lower() for e in allowed_emails}
    out = _EMAIL_RE.sub(lambda m: m.group(0) if m.group(0).lower() in allowed else EMAIL, out)
    return _CARD_RE.sub(_redact_card, out)


def _unmarkup(match: re.Match[str]) -> str:
    inner = match.group(1)
    # A label, when given, is what the person saw; otherwise keep the target without its sigil.
    if "|" in inner:
        return inner.split("|", 1)[1]
    if inner.startswith("mailto:"):
        return inner[len("mailto:") :]
    return inner.lstrip("@#!")


def _strip_control(text: str) -> str:
    # Cc/Cf/Co/Cs: control, format (zero-width, bidi overrides), private use, surrogates. Bidi
    # overrides can make quoted text read differently from what the model receives.
    return "".join(
        " " if unicodedata.category(ch) in {"Cc", "Cf", "Co", "Cs", "Zl", "Zp"} else ch
        for ch in text
    )


def quote(text: str, limit: int = 200, *, allowed_emails: Collection[str] = ()) -> str:
    """Customer-controlled `text` as a safe one-line JSON string literal of at most `limit` chars.

    Redacted, Slack markup and control characters removed, whitespace collapsed, truncated with
    an ellipsis; the JSON literal escapes quotes and backslashes so the text cannot end its quotes.
    """
    out = _SLACK_MARKUP_RE.sub(_unmarkup, text)
    # Slack's own escapes, then any stray angle brackets: markup must not survive in any form.
    out = out.replace("&lt;", "").replace("&gt;", "").replace("&amp;", "&")
    out = out.replace("<", "").replace(">", "")
    out = redact(_strip_control(out), allowed_emails=allowed_emails)
    out = _WS_RE.sub(" ", out).strip()
    if len(out) > limit:
        out = out[: max(limit - 1, 0)].rstrip() + "…"
    return json.dumps(out, ensure_ascii=False)
