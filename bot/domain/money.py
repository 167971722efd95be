"""Money: `Decimal` amounts with an ISO currency, parsing of user input and display formatting.

Never `float`. Provider minor units convert through `Money.from_minor`, which knows the
zero-decimal and three-decimal currencies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from bot.errors import InvalidAmount

# Stripe's list of zero-decimal currencies (docs.stripe.com/currencies#zero-decimal).
ZERO_DECIMAL = frozenset(
    {
        "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga",
        "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf",
    }
)  # fmt: skip
THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})

SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "cad": "CA$", "aud": "A$", "inr": "₹"}


def exponent(currency: str) -> int:
    """Number of minor-unit digits of `currency` (2 for USD, 0 for JPY)."""
    cur = currency.lower()
    if cur in ZERO_DECIMAL:
        return 0
    if cur in THREE_DECIMAL:
        return 3
    return 2


@dataclass(frozen=True, slots=True)
class Money:
    """An amount in major units of an ISO currency (lowercase code)."""

    amount: Decimal
    currency: str = "usd"

    def __post_init__(self) -> None:
        if not isinstance(self.amount, Decimal):
            raise TypeError("Money.amount must be a Decimal")
        object.__setattr__(self, "currency", self.currency.lower())

    @classmethod
    def zero(cls, currency: str = "usd") -> Money:
        """Zero in `currency`."""
        return cls(Decimal(0), currency)

    @classmethod
    def from_minor(cls, minor: int | Decimal, currency: str) -> Money:
        """From integer minor units (Stripe's `1250` USD → 12.50)."""
        return cls(Decimal(minor).scaleb(-exponent(currency)), currency)

    @classmethod
    def of(cls, value: str | int | Decimal, currency: str = "usd") -> Money:
        """From a decimal string or number in major units (Orb's `"8.00"`)."""
        try:
            dec = value if isinstance(value, Decimal) else Decimal(str(value))
        except InvalidOperation as exc:
            raise ValueError(f"not a decimal amount: {value!r}") from exc
        if not dec.is_finite():
            raise ValueError(f"not a finite amount: {value!r}")
        return cls(dec, currency)

    def to_minor(self) -> int:
        """Integer minor units, rounded half-even."""
        return int(self.quantize().amount.scaleb(exponent(self.currency)))

    def quantize(self) -> Money:
        """Rounded to the currency's minor unit."""
        q = Decimal(1).scaleb(-exponent(self.currency))
        return Money(self.amount.quantize(q, rounding=ROUND_HALF_EVEN), self.currency)

    def _check(self, other: Money) -> None:
        if other.currency != self.currency:
            raise ValueError(f"currency mismatch: {self.currency} vs {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._check(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._check(other)
        return Money(self.amount - other.amount, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def __mul__(self, factor: Decimal | int) -> Money:
        return Money(self.amount * Decimal(factor), self.currency)

    def __lt__(self, other: Money) -> bool:
        self._check(other)
        return self.amount < other.amount

    def __le__(self, other: Money) -> bool:
        self._check(other)
        return self.amount <= other.amount

    def __gt__(self, other: Money) -> bool:
        self._check(other)
        return self.amount > other.amount

    def __ge__(self, other: Money) -> bool:
        self._check(other)
        return self.amount >= other.amount

    def is_zero(self) -> bool:
        """True when the amount is zero."""
        return self.amount == 0

    def decimal_str(self) -> str:
        """Plain decimal string in major units, e.g. `"1250.50"` (for JSON output)."""
        return f"{self.quantize().amount:f}"

    def format(self) -> str:
        """Display form: `$1,234.56`, `-$5.00`, `¥1,200`, `12.500 KWD`."""
        q = self.quantize().amount
        digits = exponent(self.currency)
        body = f"{abs(q):,.{digits}f}"
        sign = "-" if q < 0 else ""
        symbol = SYMBOLS.get(self.currency)
        if symbol:
            return f"{sign}{symbol}{body}"
        return f"{sign}{body} {self.currency.upper()}"

    def __str__(self) -> str:
        return self.format()


_AMOUNT_RE = re.compile(r"^(?P<sym>[$€£¥])?(?P<num>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)$")
MAX_AMOUNT = Decimal("1000000000")


def parse_amount_value(text: str) -> Decimal:
    """Parse user-typed money without knowing the currency yet: `25`, `25.00`, `$25`,
    `$1,250.50`, `1,250.5`. Rejects garbage, exponents, negatives, zero, absurd sizes and more
    than three decimals, raising `InvalidAmount` with a message the user can act on."""
    raw = text.strip()
    cleaned = raw.replace("\u00a0", "").replace(" ", "")
    for code in ("USD", "EUR", "GBP", "JPY", "CAD", "AUD"):
        if cleaned.upper().endswith(code) and len(cleaned) > len(code):
            cleaned = cleaned[: -len(code)]
            break
    if cleaned.startswith(("-", "−", "$-", "-$")):
        raise InvalidAmount(
            f"`{raw}` is negative; give a positive amount like `25` or `$1,250.50`."
        )
    match = _AMOUNT_RE.match(cleaned)
    if not match:
        raise InvalidAmount(
            f"`{raw}` is not an amount; write it like `25`, `25.00` or `$1,250.50`."
        )
    value = Decimal(match.group("num").replace(",", ""))
    if -int(value.as_tuple().exponent) > 3:
        raise InvalidAmount(f"`{raw}` has too many decimals.")
    if value <= 0:
        raise InvalidAmount(f"`{raw}` must be more than zero.")
    if value > MAX_AMOUNT:
        raise InvalidAmount(f"`{raw}` is larger than any amount Billing Triage handles.")
    return value


def parse_amount(text: str, currency: str = "usd") -> Money:
    """Parse user-typed money in `currency`; like `parse_amount_value`, and also rejects more
    decimals than the currency has (`12.50` JPY)."""
    value = parse_amount_value(text)
    digits = exponent(currency)
    if -int(value.as_tuple().exponent) > digits:
        raise InvalidAmount(
            f"`{text.strip()}` has more decimals than {currency.upper()} allows ({digits})."
        )
    return Money(value, currency)
