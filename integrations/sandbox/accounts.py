"""The sandbox's account records and object IDs: an account's index entry, the provider objects
generated for it (plain dicts exactly as each provider's API returns them: Stripe integers in
minor units and epoch seconds, Orb decimal strings and ISO 8601 times, Metronome numbers in cents
and RFC 3339 times; treat them as read-only, they are shared), and the codec that makes object
IDs which encode the number of the account that owns them (plus a checksum).

The world that ties these together is `world.SandboxWorld`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

__all__ = [
    "IdCodec",
    "MetronomeData",
    "OrbData",
    "SandboxAccount",
    "StripeData",
    "WorldIndex",
]

BillingProvider = Literal["stripe", "orb", "metronome"]
Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class SandboxAccount:
    """One account of the index: our account ID and the provider customer IDs that belong to it."""

    account_id: str
    name: str
    email: str
    billing: BillingProvider  # the provider that rates and invoices the account
    stripe_customer_id: str | None  # every account pays by card through Stripe
    orb_customer_id: str | None
    metronome_customer_id: str | None  # a UUID
    story: str | None  # the planted story's key; None for ordinary accounts
    currency: str = "usd"
    #: The labelled population's plant key (`population.POPULATION`); None elsewhere.
    plant: str | None = None
    number: int = field(default=0, repr=False, compare=False)  # position in `SandboxWorld.accounts`


@dataclass(slots=True)
class StripeData:
    """One account's Stripe objects (API version 2026-10-28.endive)."""

    customer: Obj
    subscriptions: list[Obj] = field(default_factory=list)
    invoices: list[Obj] = field(default_factory=list)  # newest first, full `lines` embedded
    invoice_payments: list[Obj] = field(default_factory=list)
    charges: list[Obj] = field(default_factory=list)  # newest first
    payment_intents: list[Obj] = field(default_factory=list)  # newest first
    refunds: list[Obj] = field(default_factory=list)
    disputes: list[Obj] = field(default_factory=list)
    #: Customer balance transactions (`GET /v1/customers/{id}/balance_transactions`, `cbtxn_…`).
    balance_transactions: list[Obj] = field(default_factory=list)
    #: Meter ID → daily `billing.meter_event_summary` objects, oldest first.
    meter_event_summaries: dict[str, list[Obj]] = field(default_factory=dict)
    meters: list[Obj] = field(default_factory=list)  # `billing.meter` objects this customer uses


@dataclass(slots=True)
class OrbData:
    """One account's Orb objects (money as decimal strings, ISO 8601 times)."""

    customer: Obj
    subscriptions: list[Obj] = field(default_factory=list)
    invoices: list[Obj] = field(default_factory=list)  # newest first, line items in full
    costs: list[Obj] = field(default_factory=list)  # daily `periodic` cost buckets, oldest first
    credit_blocks: list[Obj] = field(default_factory=list)  # `GET /customers/{id}/credits` items
    ledger_entries: list[Obj] = field(default_factory=list)  # oldest first


@dataclass(slots=True)
class MetronomeData:
    """One account's Metronome objects (money as numbers in USD cents, RFC 3339 times)."""

    customer: Obj  # CustomerDetail
    contracts: list[Obj] = field(default_factory=list)
    invoices: list[Obj] = field(default_factory=list)  # newest first, with line items
    balances: list[Obj] = field(default_factory=list)  # commits and credits
    usage: list[Obj] = field(default_factory=list)  # daily usage per billable metric, oldest first


@dataclass(slots=True)
class AccountBundle:
    """Everything generated for one account (all providers at once: they reference each other)."""

    stripe: StripeData | None
    orb: OrbData | None
    metronome: MetronomeData | None


# --- Object IDs ---------------------------------------------------------------------------

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_INDEX = {c: i for i, c in enumerate(ALPHABET)}
_SPACE = 62**8  # eight base62 characters carry the 47-bit payload
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
# Real Stripe IDs carry the platform account's key in the middle; ours is a constant too.
STRIPE_PLATFORM_KEY = "Sb7xQ01zgk"

#: Stripe prefixes of objects that belong to one account. Catalog objects (`price_`, `prod_`,
#: `mtr_`, `txr_`) are shared and belong to nobody.
STRIPE_KINDS = {
    "cus": 1, "sub": 2, "si": 3, "in": 4, "il": 5, "ii": 6, "ch": 7, "pi": 8, "re": 9,
    "dp": 10, "inpay": 11, "cbtxn": 12, "txn": 13, "mtrusg": 14, "di": 15, "pm": 16,
}  # fmt: skip
_STRIPE_SHORT = frozenset({"cus", "si"})  # 14-character bodies like `cus_QXg1o8vcGmoR32`
ORB_KINDS = {
    "customer": 1, "subscription": 2, "invoice": 3, "line_item": 4, "credit_block": 5,
    "ledger_entry": 6, "payment_attempt": 7, "price_interval": 8,
}  # fmt: skip
METRONOME_KINDS = {
    "customer": 1, "contract": 2, "invoice": 3, "commit": 4, "segment": 5,
    "scheduled_charge": 6, "schedule_item": 7, "amendment": 8, "credit": 9,
}  # fmt: skip


_PAIRS = [a + b for a in ALPHABET for b in ALPHABET]
_M64 = (1 << 64) - 1
_FAMILY = {"s": 1, "o": 2, "m": 3}


def b62(value: int, width: int) -> str:
    """`value` in `width` base62 characters (most significant first); `value` < 62**width."""
    parts = []
    for _ in range(width // 2):
        value, rem = divmod(value, 3844)
        parts.append(_PAIRS[rem])
    if width % 2:
        parts.append(ALPHABET[value])
    return "".join(reversed(parts))


def _unb62(text: str) -> int | None:
    value = 0
    for char in text:
        digit = _INDEX.get(char)
        if digit is None:
            return None
        value = value * 62 + digit
    return value


def digest(text: str, size: int = 8) -> int:
    """A stable integer hash of `text` (not Python's per-process `hash`)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=size).digest(), "big")


def mix(value: int) -> int:
    """SplitMix64's finaliser: a fast, stable 64-bit scramble (IDs are made by the thousand)."""
    value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9 & _M64
    value = (value ^ (value >> 27)) * 0x94D049BB133111EB & _M64
    return value ^ (value >> 31)


def _pack(number: int, kind: int, seq: int) -> int:
    if not (0 <= number < 1 << 17 and 0 < kind < 64 and 0 <= seq < 1 << 24):
        raise ValueError(f"ID payload out of range: account {number}, kind {kind}, seq {seq}")
    return (number << 30) | (kind << 24) | seq


def _unpack(payload: int) -> tuple[int, int, int]:
    return payload >> 30, (payload >> 24) & 63, payload & ((1 << 24) - 1)


class IdCodec:
    """Makes provider-looking object IDs that encode (account number, kind, sequence) and reads
    them back. A checksum keyed by the seed rejects IDs this world did not make."""

    def __init__(self, seed: int) -> None:
        self._key = digest(f"billing-triage-sandbox:{seed}")
        self._mask_key = digest(f"billing-triage-sandbox-mask:{seed}")

    def _check(self, family: str, payload: int) -> int:
        return mix(self._key ^ (_FAMILY[family] << 56) ^ payload)

    def _mask(self, check: int) -> int:
        return mix(self._mask_key ^ check)

    def _body(self, family: str, payload: int, width: int) -> tuple[str, str]:
        check = self._check(family, payload) % 62**width
        return b62(check, width), b62((payload + self._mask(check)) % _SPACE, 8)

    def _read(self, family: str, check: str, body: str, kinds: set[int]) -> tuple[int, int] | None:
        check_value = _unb62(check)
        raw = _unb62(body)
        if raw is None or check_value is None or len(body) != 8:
            return None
        payload = (raw - self._mask(check_value)) % _SPACE
        number, kind, _ = _unpack(payload)
        if kind not in kinds or self._check(family, payload) % 62 ** len(check) != check_value:
            return None
        return number, kind

    def stripe(self, prefix: str, number: int, seq: int) -> str:
        """A Stripe ID such as `in_1…` (24 characters) or `cus_…` (14 characters)."""
        payload = _pack(number, STRIPE_KINDS[prefix], seq)
        if prefix in _STRIPE_SHORT:
            check, body = self._body("s", payload, 6)
            return f"{prefix}_{check}{body}"
        check, body = self._body("s", payload, 5)
        return f"{prefix}_1{check}{STRIPE_PLATFORM_KEY}{body}"

    def orb(self, kind_name: str, number: int, seq: int) -> str:
        """An opaque 16-character Orb ID."""
        check, body = self._body("o", _pack(number, ORB_KINDS[kind_name], seq), 8)
        return f"{check}{body}"

    def metronome(self, kind_name: str, number: int, seq: int) -> str:
        """A version-4-shaped UUID for a Metronome object."""
        payload = _pack(number, METRONOME_KINDS[kind_name], seq)
        check = self._check("m", payload) >> 32
        ptext = f"{payload ^ (self._mask(check) & _M48):012x}"
        filler = mix(self._mask_key ^ payload)
        variant = "89ab"[filler & 3]
        return (
            f"{check:08x}-{ptext[0:4]}-4{ptext[4:7]}-{variant}{ptext[7:10]}-{ptext[10:12]}"
            f"{filler >> 24:010x}"
        )

    def decode(self, object_id: str) -> tuple[str, str, int] | None:
        """(family, kind name, account number) of an ID this codec made, else None."""
        if _UUID_RE.match(object_id):
            hexes = object_id.replace("-", "")
            check = int(hexes[:8], 16)
            ptext = hexes[8:12] + hexes[13:16] + hexes[17:20] + hexes[20:22]
            payload = int(ptext, 16) ^ (self._mask(check) & _M48)
            number, kind, _ = _unpack(payload)
            if kind not in _METRONOME_NAMES or self._check("m", payload) >> 32 != check:
                return None
            return "metronome", _METRONOME_NAMES[kind], number
        prefix, sep, body = object_id.partition("_")
        if sep and prefix in STRIPE_KINDS:
            kind = STRIPE_KINDS[prefix]
            if prefix == "mtrusg" and len(body) == 27:  # meter summaries: base ID + day number
                body = body[:24]
            if prefix in _STRIPE_SHORT and len(body) == 14:
                found = self._read("s", body[:6], body[6:], {kind})
            elif len(body) == 24 and body[0] == "1" and body[6:16] == STRIPE_PLATFORM_KEY:
                found = self._read("s", body[1:6], body[16:], {kind})
            else:
                found = None
            return ("stripe", prefix, found[0]) if found else None
        if not sep and len(object_id) == 16:
            found = self._read("o", object_id[:8], object_id[8:], set(_ORB_NAMES))
            if found:
                return "orb", _ORB_NAMES[found[1]], found[0]
        return None


_M48 = (1 << 48) - 1
_ORB_NAMES = {v: k for k, v in ORB_KINDS.items()}
_METRONOME_NAMES = {v: k for k, v in METRONOME_KINDS.items()}


class WorldIndex(Protocol):
    """What the generator needs of a world: its seed, its "now" and its ID codec."""

    @property
    def seed(self) -> int:
        """The seed everything is drawn from."""
        ...

    @property
    def now(self) -> datetime:
        """The world's "now" (aware UTC)."""
        ...

    @property
    def codec(self) -> IdCodec:
        """Makes and reads object IDs."""
        ...
