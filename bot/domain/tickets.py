"""Support tickets as the domain sees them (DESIGN §10): our own frozen dataclasses that a
`TicketSource` (Zendesk, or the sandbox's Zendesk) returns, the strict parsing of a TICKET
reference, and the identifiers a ticket's text may name.

Ticket text is customer-controlled: nothing here interprets it beyond finding identifiers in it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from bot.domain.identifiers import AccountIdentifier, IdentifierKind
from bot.errors import InvalidIdentifier

#: Zendesk ticket IDs are positive 64-bit integers.
MAX_TICKET_ID = 2**63 - 1
#: The last line of every note the bot posts: how an unknown outcome is reconciled later.
NOTE_MARKER = "— Billing Triage draft {draft_id}"

Raw = Mapping[str, Any]


def _empty() -> Raw:
    return {}


def _no_fields() -> Mapping[int, Any]:
    return {}


@dataclass(frozen=True, slots=True)
class TicketUser:
    """A Zendesk user (the requester, usually an end user)."""

    id: int
    name: str | None
    email: str | None
    role: str | None = None
    organization_id: int | None = None
    external_id: str | None = None


@dataclass(frozen=True, slots=True)
class TicketOrganization:
    """A Zendesk organization: `external_id` and `fields` may hold our account ID."""

    id: int
    name: str | None
    external_id: str | None = None
    fields: Mapping[str, Any] = field(default_factory=_empty)
    domain_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TicketComment:
    """One comment; `public=False` is an internal note (never shown to the customer)."""

    id: int
    author_id: int | None
    body: str
    public: bool
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Ticket:
    """A ticket's fields that triage needs; `custom_fields` maps field ID → value."""

    id: int
    subject: str | None
    description: str | None
    status: str
    requester_id: int | None
    organization_id: int | None
    custom_fields: Mapping[int, Any] = field(default_factory=_no_fields)
    tags: tuple[str, ...] = ()
    created_at: datetime | None = None
    updated_at: datetime | None = None
    #: The agent UI link (`https://{subdomain}.zendesk.com/agent/tickets/{id}`).
    url: str | None = None


@dataclass(frozen=True, slots=True)
class NoteWritten:
    """What the ticketing system answered to an internal note: the comment and audit IDs."""

    ticket_id: int
    comment_id: int | None
    audit_id: int | None


# --- TICKET references ------------------------------------------------------------------------

_NUMBER_RE = re.compile(r"^#?([1-9][0-9]{0,18})$")
_AGENT_PATH_RE = re.compile(r"^/agent/tickets/([1-9][0-9]{0,18})/?$")
_API_PATH_RE = re.compile(r"^/api/v2/tickets/([1-9][0-9]{0,18})(?:\.json)?/?$")
TICKET_USAGE = (
    "Give a ticket number (`1234`), `#1234`, or the ticket's link "
    "(`https://SUBDOMAIN.zendesk.com/agent/tickets/1234`)."
)


def _ticket_number(digits: str) -> int:
    number = int(digits)
    if number > MAX_TICKET_ID:
        raise InvalidIdentifier(f"`{digits}` is too large to be a ticket number.")
    return number


def looks_like_ticket_ref(text: str) -> bool:
    """True when `text` has the shape of a TICKET reference (the host is checked later)."""
    value = text.strip()
    if _NUMBER_RE.match(value):
        return True
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(
        _AGENT_PATH_RE.match(parts.path) or _API_PATH_RE.match(parts.path)
    )


def parse_ticket_ref(text: str, *, hosts: Sequence[str]) -> int:
    """The ticket number `text` names: `123`, `#123`, or a ticket URL on one of `hosts` (the
    configured Zendesk instance). Anything else raises `InvalidIdentifier` before any request."""
    value = text.strip()
    if not value:
        raise InvalidIdentifier(f"Which ticket? {TICKET_USAGE}")
    number = _NUMBER_RE.match(value)
    if number:
        return _ticket_number(number.group(1))
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidIdentifier(f"`{value[:80]}` is not a ticket. {TICKET_USAGE}")
    allowed = {h.lower() for h in hosts if h}
    if parts.hostname.lower() not in allowed:
        where = ", ".join(sorted(allowed)) or "no Zendesk instance is configured"
        raise InvalidIdentifier(
            f"`{parts.hostname}` is not this workspace's Zendesk ({where}); "
            "only its ticket links are accepted."
        )
    if parts.username or parts.password or parts.port not in (None, 443, 80):
        raise InvalidIdentifier(
            "That ticket link has credentials or a port in it; paste the link as Zendesk shows it."
        )
    path = _AGENT_PATH_RE.match(parts.path) or _API_PATH_RE.match(parts.path)
    if path is None:
        raise InvalidIdentifier(
            f"`{value[:80]}` is not a ticket link (expected `/agent/tickets/NUMBER`)."
        )
    return _ticket_number(path.group(1))


def host_of(url: str | None) -> str | None:
    """The host name of `url` (lower-case), or None."""
    if not url:
        return None
    host = urlsplit(url).hostname
    return host.lower() if host else None


# --- identifiers written in a ticket ------------------------------------------------------------

_TEXT_ID_RES: tuple[tuple[IdentifierKind, re.Pattern[str]], ...] = (
    (IdentifierKind.STRIPE_CUSTOMER, re.compile(r"(?<![A-Za-z0-9_])cus_[A-Za-z0-9]{6,64}\b")),
    (IdentifierKind.STRIPE_INVOICE, re.compile(r"(?<![A-Za-z0-9_])in_[A-Za-z0-9]{6,64}\b")),
    (IdentifierKind.STRIPE_CHARGE, re.compile(r"(?<![A-Za-z0-9_])ch_[A-Za-z0-9]{6,64}\b")),
    # Invoice numbers as printed on the PDF: Stripe's `PREFIX-0001` (prefix of 3–12 letters and
    # digits). Something that merely looks like one (`ISO-8601`) resolves to nothing and is dropped.
    (IdentifierKind.INVOICE_NUMBER, re.compile(r"(?<![A-Za-z0-9_-])[A-Z0-9]{3,12}-[0-9]{4,6}\b")),
)
#: At most this many identifiers are taken from one ticket (each costs provider lookups).
MAX_TEXT_IDS = 6


def identifiers_in(texts: Sequence[str]) -> list[AccountIdentifier]:
    """Provider IDs and invoice numbers written in `texts`, in order of appearance, unique."""
    found: list[tuple[int, int, AccountIdentifier]] = []
    seen: set[str] = set()
    for index, text in enumerate(texts):
        for kind, pattern in _TEXT_ID_RES:
            for match in pattern.finditer(text or ""):
                value = match.group(0)
                if value in seen:
                    continue
                seen.add(value)
                found.append((index, match.start(), AccountIdentifier(value, (kind,))))
    found.sort(key=lambda item: (item[0], item[1]))
    return [ident for _, _, ident in found[:MAX_TEXT_IDS]]


def invoice_named(idents: Sequence[AccountIdentifier]) -> str | None:
    """The first invoice (ID or number) among `idents`: the invoice the ticket is about."""
    for ident in idents:
        if ident.primary in (IdentifierKind.STRIPE_INVOICE, IdentifierKind.INVOICE_NUMBER):
            return ident.value
    return None


def note_marker(draft_id: str) -> str:
    """The marker line that ends a note for `draft_id`."""
    return NOTE_MARKER.format(draft_id=draft_id)


def latest_public_comment(
    comments: Sequence[TicketComment], *, requester_id: int | None
) -> TicketComment | None:
    """The customer's latest public comment: by the requester when any is, else the latest public
    comment not written by an agent we know of (the caller filters agents out)."""
    public = [c for c in comments if c.public and c.body.strip()]
    if requester_id is not None:
        own = [c for c in public if c.author_id == requester_id]
        if own:
            return own[-1]
    return public[-1] if public else None
