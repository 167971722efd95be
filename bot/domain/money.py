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


_AMOUNT_RE = re.compile(r"^(?P<num>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)$")
MAX_AMOUNT = Decimal("1000000000")

#: Active ISO 4217 codes (lowercase): a code written with an amount names its currency.
ISO_CURRENCIES = frozenset(
    re.findall(
        r"[a-z]{3}",
        """aed afn all amd ang aoa ars aud awg azn bam bbd bdt bgn bhd bif bmd bnd bob brl bsd btn
    bwp byn bzd cad cdf chf clp cny cop crc cup cve czk djf dkk dop dzd egp ern etb eur fjd fkp
    gbp gel ghs gip gmd gnf gtq gyd hkd hnl htg huf idr ils inr iqd irr isk jmd jod jpy kes kgs
    khr kmf kpw krw kwd kyd kzt lak lbp lkr lrd lsl lyd mad mdl mga mkd mmk mnt mop mru mur mvr
    mwk mxn myr mzn nad ngn nio nok npr nzd omr pab pen pgk php pkr pln pyg qar ron rsd rub rwf
    sar sbd scr sdg sek sgd shp sle sll sos srd ssp stn syp szl thb tjs tmt tnd top try ttd twd
    tzs uah ugx usd uyu uzs ves vnd vuv wst xaf xcd xof xpf yer zar zmw zwl""",
    )
)
#: Codes also written in lowercase as a word of their own after an amount (`25 eur`); other codes
#: count only in capitals there, so a reason that starts with "try" or "all" stays a reason.
COMMON_CURRENCIES = frozenset(
    re.findall(
        r"[a-z]{3}",
        "usd eur gbp jpy cad aud chf nzd sek nok dkk inr brl mxn sgd hkd cny krw pln zar",
    )
)
#: Capitalised codes that are also English words: a word of their own after an amount is read
#: as the reason's start, not as a currency (glued to the number, `25ALL`, they still count).
_WORDLIKE_CODES = frozenset({"all", "top", "cup", "mop", "bob", "sos", "try"})
#: Currency symbols, longest first, and the currencies each may mean (`$` is every dollar).
CURRENCY_SYMBOLS: tuple[tuple[str, frozenset[str]], ...] = (
    ("US$", frozenset({"usd"})),
    ("CA$", frozenset({"cad"})),
    ("C$", frozenset({"cad"})),
    ("A$", frozenset({"aud"})),
    ("AU$", frozenset({"aud"})),
    ("NZ$", frozenset({"nzd"})),
    ("S$", frozenset({"sgd"})),
    ("HK$", frozenset({"hkd"})),
    ("$", frozenset({"usd", "cad", "aud", "nzd", "sgd", "hkd", "mxn"})),
    ("€", frozenset({"eur"})),
    ("£", frozenset({"gbp"})),
    ("¥", frozenset({"jpy", "cny"})),
    ("₹", frozenset({"inr"})),
)


@dataclass(frozen=True, slots=True)
class AmountInput:
    """An amount as the user typed it: the value, and the currencies what they wrote can mean
    (`None` when they wrote none: the account's currency is meant). `text` is what they typed,
    for messages."""

    value: Decimal
    currencies: frozenset[str] | None = None
    text: str = ""

    @property
    def written_currency(self) -> str | None:
        """The currency the user wrote, for messages (`EUR`, `$`), or None."""
        if self.currencies is None:
            return None
        if len(self.currencies) == 1:
            return next(iter(self.currencies)).upper()
        return "a dollar amount"

    def in_currency(self, currency: str) -> Money:
        """This amount as money in `currency`, the payment's or the account's: refused with
        `InvalidAmount` when the user wrote another currency (`25 EUR` for a USD payment), or
        more decimals than `currency` has (`12.5` JPY, `1.005` USD)."""
        cur = currency.lower()
        shown = self.text or f"{self.value}"
        if self.currencies is not None and cur not in self.currencies:
            raise InvalidAmount(
                f"`{shown}` is not in {cur.upper()}, the currency of this payment or account: "
                f"give the amount in {cur.upper()} (e.g. `{_example(cur)}`), or leave the "
                "currency out."
            )
        digits = exponent(cur)
        if -int(self.value.as_tuple().exponent) > digits:
            raise InvalidAmount(
                f"`{shown}` has more decimals than {cur.upper()} allows ({digits})."
            )
        return Money(self.value, cur)


def _example(currency: str) -> str:
    return Money(Decimal(25), currency).format()


def currency_word(word: str) -> frozenset[str] | None:
    """The currency a word of its own next to an amount names (`EUR`, `usd`), or None: any ISO
    code in capitals (except codes that are English words), common codes in any case."""
    lowered = word.strip().lower()
    if lowered not in ISO_CURRENCIES:
        return None
    if word.strip().isupper() and lowered not in _WORDLIKE_CODES:
        return frozenset({lowered})
    if lowered in COMMON_CURRENCIES:
        return frozenset({lowered})
    return None


def _split_currency(cleaned: str) -> tuple[str, frozenset[str] | None]:
    """`cleaned` without its currency symbol or ISO code (before or after the number), and the
    currencies that marker means. Two markers must agree (`$25 USD` is fine, `€25 USD` not)."""
    found: list[frozenset[str]] = []
    rest = cleaned
    code = re.match(r"^([A-Za-z]{3})(?=[\d$€£¥₹A-Z])", rest)
    if code and code.group(1).lower() in ISO_CURRENCIES:
        found.append(frozenset({code.group(1).lower()}))
        rest = rest[3:]
    code = re.search(r"(?<=[\d$€£¥₹])([A-Za-z]{3})$", rest)
    if code and code.group(1).lower() in ISO_CURRENCIES:
        found.append(frozenset({code.group(1).lower()}))
        rest = rest[:-3]
    for symbol, means in CURRENCY_SYMBOLS:
        if rest.upper().startswith(symbol.upper()):
            found.append(means)
            rest = rest[len(symbol) :]
            break
    for symbol, means in CURRENCY_SYMBOLS:
        if len(symbol) == 1 and rest.endswith(symbol):
            found.append(means)
            rest = rest[: -len(symbol)]
            break
    if not found:
        return rest, None
    agreed = found[0]
    for means in found[1:]:
        agreed = agreed & means
    if not agreed:
        raise InvalidAmount(f"`{cleaned}` names two different currencies; write one.")
    return rest, agreed


def parse_amount_input(text: str) -> AmountInput:
    """Parse user-typed money and the currency written with it, if any: `25`, `25.00`, `$25`,
    `$1,250.50`, `25 EUR`, `EUR25`, `€25`, `25€`. Rejects garbage, exponents, negatives, zero,
    absurd sizes and more than three decimals, raising `InvalidAmount` with a message the user
    can act on. The currency is checked against the payment's later (`AmountInput.in_currency`)."""
    raw = text.strip()
    cleaned = raw.replace("\u00a0", "").replace(" ", "")
    if cleaned.startswith(("-", "−")) or re.match(r"^[A-Za-z]{0,3}[$€£¥₹]*[-−]", cleaned):
        raise InvalidAmount(
            f"`{raw}` is negative; give a positive amount like `25` or `$1,250.50`."
        )
    try:
        number, currencies = _split_currency(cleaned)
    except InvalidAmount:
        raise InvalidAmount(f"`{raw}` names two different currencies; write one.") from None
    match = _AMOUNT_RE.match(number)
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
    return AmountInput(value, currencies, raw)


def parse_amount_value(text: str) -> Decimal:
    """The value of user-typed money (`parse_amount_input(text).value`), for callers that check
    the currency themselves; an amount whose written currency matters goes through
    `parse_amount_input` and `AmountInput.in_currency` (or `parse_amount`) instead."""
    return parse_amount_input(text).value


def parse_amount(text: str, currency: str = "usd") -> Money:
    """Parse user-typed money in `currency`; like `parse_amount_input`, and also refuses a
    currency written in the text other than `currency` (`25 EUR` for USD) and more decimals than
    the currency has (`12.50` JPY)."""
    return parse_amount_input(text).in_currency(currency)
