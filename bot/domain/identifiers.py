"""ACCOUNT identifiers and Slack markup: what kind of ID the user typed, parsed out of Slack's
`<mailto:…|…>`, `<@U…>`, `<https://…|…>` markup and `&amp;` escapes."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from bot.errors import InvalidIdentifier


class IdentifierKind(enum.StrEnum):
    """The kinds of ACCOUNT identifier of DESIGN §3."""

    EMAIL = "email"
    STRIPE_CUSTOMER = "stripe_customer"  # cus_…
    ACCOUNT_ID = "account_id"  # ours: Orb external_customer_id, Stripe metadata, Metronome alias
    ORB_CUSTOMER = "orb_customer"
    METRONOME_CUSTOMER = "metronome_customer"  # UUID
    # Objects that name their customer (found in ticket text, DESIGN §10): the provider that owns
    # the object answers with its customer; the others answer [].
    STRIPE_INVOICE = "stripe_invoice"  # in_…
    STRIPE_CHARGE = "stripe_charge"  # ch_…
    INVOICE_NUMBER = "invoice_number"  # as printed on the invoice, e.g. `B02734D1-0017`


@dataclass(frozen=True, slots=True)
class AccountIdentifier:
    """What the user typed, cleaned, and the kinds it may be, most likely first."""

    value: str
    kinds: tuple[IdentifierKind, ...]

    @property
    def primary(self) -> IdentifierKind:
        """The most likely kind."""
        return self.kinds[0]


EMAIL_RE = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$"
)
UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
STRIPE_CUSTOMER_RE = re.compile(r"^cus_[A-Za-z0-9]{1,250}$")
# Our account IDs and Orb customer IDs are opaque; allow what IDs are made of, nothing else.
OPAQUE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")
MAX_IDENTIFIER = 254


def classify_account(text: str) -> AccountIdentifier:
    """Classify an ACCOUNT argument (already stripped of Slack markup).

    Raises `InvalidIdentifier` for anything that cannot be an account identifier.
    """
    value = text.strip()
    if not value:
        raise InvalidIdentifier(
            "Give an account: an email, a `cus_…` ID, an account ID, "
            "or an Orb or Metronome customer ID."
        )
    if len(value) > MAX_IDENTIFIER:
        raise InvalidIdentifier("That account identifier is too long to be an email or an ID.")
    if "@" in value:
        if not EMAIL_RE.match(value):
            raise InvalidIdentifier(f"`{value}` is not a valid email address.")
        return AccountIdentifier(value, (IdentifierKind.EMAIL, IdentifierKind.ACCOUNT_ID))
    if value.startswith("cus_"):
        if not STRIPE_CUSTOMER_RE.match(value):
            raise InvalidIdentifier(f"`{value}` is not a valid Stripe customer ID.")
        return AccountIdentifier(value, (IdentifierKind.STRIPE_CUSTOMER,))
    if UUID_RE.match(value):
        return AccountIdentifier(
            value,
            (IdentifierKind.METRONOME_CUSTOMER, IdentifierKind.ACCOUNT_ID),
        )
    for prefix in ("ch_", "pi_", "in_", "re_", "dp_", "sub_", "il_"):
        if value.startswith(prefix):
            raise InvalidIdentifier(
                f"`{value}` is a Stripe {_STRIPE_OBJECTS[prefix]} ID, not an account. "
                "Give the account's email, `cus_…` ID or account ID."
            )
    if not OPAQUE_ID_RE.match(value):
        raise InvalidIdentifier(
            f"`{value}` is not an account identifier. Use an email, a `cus_…` ID, an account ID, "
            "or an Orb or Metronome customer ID."
        )
    return AccountIdentifier(value, (IdentifierKind.ACCOUNT_ID, IdentifierKind.ORB_CUSTOMER))


_STRIPE_OBJECTS = {
    "ch_": "charge",
    "pi_": "payment intent",
    "in_": "invoice",
    "re_": "refund",
    "dp_": "dispute",
    "sub_": "subscription",
    "il_": "invoice line",
}

# --- Slack markup -------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"<([^<>]*)>")


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def strip_markup(text: str, *, drop_user: str | None = None) -> str:
    """Plain text from Slack markup: links and emails become their target, user mentions stay
    as `<@U…>` unless they are `drop_user` (the bot itself), and `&amp;`, `&lt;`, `&gt;` are
    unescaped once, after tokenising."""
    out: list[str] = []
    pos = 0
    for match in _TOKEN_RE.finditer(text):
        out.append(_unescape(text[pos : match.start()]))
        inner = match.group(1)
        target = inner.split("|", 1)[0]
        if target.startswith("@"):
            if drop_user is None or target[1:] != drop_user:
                out.append(f"<{target}>")
        elif target.startswith("mailto:"):
            out.append(_unescape(target[len("mailto:") :]))
        elif target.startswith(("#", "!")):
            # Channels, user groups and special mentions carry no account identifier.
            pass
        else:
            out.append(_unescape(target))
        pos = match.end()
    out.append(_unescape(text[pos:]))
    return "".join(out)
