"""The grounding check: the model's text may use only money amounts, dates, IDs and numbers that
appear in the facts it was given.

`FactsBuilder` assembles the fact sheet (deterministic lines, most important first) and registers
every token in each line as it is added, with the same extractor that later reads the model's
text, so whatever the fact sheet says, the model may repeat.

What `check_grounding` requires of each thing it finds in the model's text:

- Money (`$1,234.56`, `-$5.00`, `1234.56 USD`, `USD 12`, `€12`, `12 dollars`, `50 cents`, `$5k`,
  `$1.2M`): its value, with a `k`/`M`/`bn` suffix scaled out, equals the absolute value of a fact
  amount. Sign and currency are not compared: prose carries direction ("a $20 decrease") and the
  fact sheet of one account has one currency. Amounts are exact: `$1,235` does not match
  `$1,234.56`, because a rounded amount is a different amount to a customer.
- Percentages: equal to a fact percentage at the precision written (`63%` matches `62.9%`),
  since rounding a share to whole percent is normal wording.
- Dates (`2026-10-01`, `Oct 1, 2026`, `October 1`, `1 October 2026`, `10/01/2026`, `October 2026`):
  a full date must be a fact date; a date without a year must match a fact date's month and day; a
  month and year must contain a fact date; `10/01/2026` may be read either way round.
- IDs: anything that looks like one (Stripe-style `in_…`, UUIDs, URLs, emails, and opaque tokens of
  8+ characters mixing letters and digits, as Orb IDs are) must appear verbatim in the facts.
- Plain numbers ("3 attempts", "42,000 calls", "2026"): must equal a number, amount or percentage
  in the facts, or a fact date's year. 0 and 1 are always allowed ("1 invoice"), and list markers
  (`1.` at the start of a line) are not numbers. Small counts are checked because they are claims
  ("3 failed attempts", "within 5 days") a model invents easily.

Customer-controlled text (`add_quoted`) registers nothing: a memo saying "$999 refund" does not
make $999 a fact. The module is pure: no I/O.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Literal

from bot.domain.money import Money

MentionKind = Literal["amount", "percentage", "date", "id", "number"]
MAX_QUOTED_CHARS = 4000

_MONTHS: dict[str, int] = {}
for _i in range(1, 13):
    _MONTHS[calendar.month_name[_i].lower()] = _i
    _MONTHS[calendar.month_abbr[_i].lower()] = _i
_MONTHS["sept"] = 9
_MONTH_RE = r"(?:" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"

_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+"
_SCALE = r"(?:\s?(?:k|K|M|bn|BN|mm|MM|m)(?![A-Za-z0-9])|\s(?:thousand|million|billion)\b)"
_SYMBOL = r"US\$|CA\$|C\$|A\$|AU\$|NZ\$|HK\$|S\$|R\$|[$€£¥₹₩]"
_CODES = (
    "USD|EUR|GBP|JPY|CAD|AUD|NZD|CHF|SEK|NOK|DKK|INR|CNY|HKD|SGD|MXN|BRL|ZAR|PLN|CZK|KRW|"
    "KWD|BHD|JOD|OMR|TND|ILS|AED|SAR|TRY|THB|IDR|MYR|PHP"
)
_MINUS = r"[-−–]"

# Order matters: each pattern masks what it matched before the next runs, so the digits of an
# ID or a date are not read again as an amount or a number.
_URL_RE = re.compile(r"https?://[^\s<>|\"'`)\]]+")
_EMAIL_RE = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
_UUID_RE = re.compile(
    r"(?<![\w-])[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![\w-])"
)
# Stripe-style: lowercase prefix segments, then a random tail with a digit or a capital letter
# (so snake_case words such as `past_due` or `requested_by_customer` are not IDs).
_PREFIXED_RE = re.compile(r"(?<![\w-])[a-z][a-z0-9]{0,15}(?:_[A-Za-z0-9]+)+(?![\w-])")
_OPAQUE_RE = re.compile(r"(?<![\w.-])[A-Za-z0-9][A-Za-z0-9_-]{7,}(?![\w-])")
_QUANTITY_UNIT_RE = re.compile(r"\d[\d,.]*[-_]?[A-Za-z]+(?:-[A-Za-z]+)*")

_ISO_DATE_RE = re.compile(
    r"(?<![\w-])(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?(?![\w-])"
)
_DAY = r"(\d{1,2})(?:st|nd|rd|th)?"
_MDY_RE = re.compile(rf"\b({_MONTH_RE})\s+{_DAY}\b(?:,?\s+(\d{{4}})\b)?", re.IGNORECASE)
_DMY_RE = re.compile(
    rf"\b{_DAY}(?:\s+of)?\s+({_MONTH_RE})(?![A-Za-z])(?:,?\s+(\d{{4}})\b)?", re.IGNORECASE
)
_MY_RE = re.compile(rf"\b({_MONTH_RE})\s+(\d{{4}})\b", re.IGNORECASE)
_SLASH_RE = re.compile(r"(?<![\w/])(\d{1,2})/(\d{1,2})/(\d{4}|\d{2})(?![\w/])")

_AMOUNT_PREFIX_RE = re.compile(
    rf"(?:{_MINUS}\s?)?(?:(?:{_SYMBOL})|\b(?:{_CODES})\s?)(?:{_MINUS})?\s?(?P<num>{_NUM})(?P<scale>{_SCALE})?",
)
_AMOUNT_SUFFIX_RE = re.compile(
    rf"(?:{_MINUS})?(?<![\w.,])(?P<num>{_NUM})(?P<scale>{_SCALE})?\s?"
    rf"(?P<cur>(?:{_CODES})\b|(?i:usd|eur|gbp)\b|(?i:dollars?|euros?|pounds?|cents?)\b)",
)
_PERCENT_RE = re.compile(
    rf"(?:{_MINUS}|\+)?(?<![\w.,])(?P<num>{_NUM})\s?(?:%|percent\b|per\s?cent\b)", re.IGNORECASE
)
_NUMBER_RE = re.compile(
    rf"(?<![\w.,])(?P<num>{_NUM})(?P<scale>\s?(?:k|K|M|bn)(?![A-Za-z0-9])|\s(?:thousand|million|billion)\b)?"
)
_LIST_MARKER_RE = re.compile(r"^(\s*)\d{1,2}[.)](?=\s)", re.MULTILINE)

_SCALES = {
    "k": Decimal(1000), "thousand": Decimal(1000),
    "m": Decimal(10**6), "mm": Decimal(10**6), "million": Decimal(10**6),
    "bn": Decimal(10**9), "billion": Decimal(10**9),
}  # fmt: skip
_ALWAYS_ALLOWED_NUMBERS = frozenset({Decimal(0), Decimal(1)})


@dataclass(frozen=True, slots=True)
class Mention:
    """One thing in a text that the grounding check looks at, as written and as a value."""

    kind: MentionKind
    text: str
    value: Decimal | None = None
    #: For dates: every (year or None, month, day or None) the text may mean.
    dates: tuple[tuple[int | None, int, int | None], ...] = ()
    #: Where the mention starts in the text (for reporting in reading order).
    start: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class GroundingResult:
    """Whether the text is grounded; `problems` are the mentions not found in the facts."""

    ok: bool
    problems: tuple[str, ...] = ()
    #: The kinds of the problems, in the same order (for saying what went wrong in general terms).
    kinds: tuple[MentionKind, ...] = ()


def _empty_quoted() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Facts:
    """The fact sheet given to the model and the tokens its text may use."""

    #: Deterministic lines, most important first (the prompt drops from the end to fit its budget).
    lines: tuple[str, ...] = ()
    #: Customer-controlled strings by name, shown to the model only as quoted data.
    quoted: Mapping[str, str] = field(default_factory=_empty_quoted)
    amounts: frozenset[Decimal] = frozenset()
    dates: frozenset[date] = frozenset()
    ids: frozenset[str] = frozenset()
    percentages: frozenset[Decimal] = frozenset()
    numbers: frozenset[Decimal] = frozenset()


def _decimal(num: str, scale: str | None = None) -> Decimal | None:
    try:
        value = Decimal(num.replace(",", ""))
    except InvalidOperation:
        return None
    if scale:
        key = scale.strip().lower()
        value *= _SCALES.get(key, Decimal(1))
    return abs(value)


def _mask(text: str, start: int, end: int) -> str:
    return text[:start] + " " * (end - start) + text[end:]


def _valid_date(year: int | None, month: int, day: int | None) -> bool:
    if not 1 <= month <= 12:
        return False
    if day is None:
        return True
    if year is None:
        return 1 <= day <= calendar.monthrange(2024, month)[1]  # a leap year allows Feb 29
    return 1 <= day <= calendar.monthrange(year, month)[1]


def _has_digit_or_capital(token: str) -> bool:
    return any(c.isdigit() or c.isupper() for c in token)


def _is_id_like(token: str) -> bool:
    if _QUANTITY_UNIT_RE.fullmatch(token):
        return False  # "100GB", "30-day": a number with a unit, checked as a number instead
    return any(c.isdigit() for c in token) and any(c.isalpha() for c in token)


def extract_mentions(text: str) -> list[Mention]:
    """Every amount, percentage, date, ID and plain number in `text`, in reading order."""
    found: list[Mention] = []
    work = _LIST_MARKER_RE.sub(
        lambda m: m.group(1) + " " * (len(m.group(0)) - len(m.group(1))), text
    )

    def take(pattern: re.Pattern[str], build: Callable[[re.Match[str]], Mention | None]) -> None:
        nonlocal work
        for match in list(pattern.finditer(work)):
            mention = build(match)
            if mention is None:
                continue
            found.append(replace(mention, start=match.start()))
            work = _mask(work, match.start(), match.end())

    def as_id(match: re.Match[str]) -> Mention | None:
        return Mention("id", match.group(0).rstrip(".,;:!?"))

    take(_URL_RE, as_id)
    take(_EMAIL_RE, as_id)
    take(_UUID_RE, as_id)
    take(_PREFIXED_RE, lambda m: as_id(m) if _has_digit_or_capital(m.group(0)) else None)
    take(_ISO_DATE_RE, _iso_date)
    take(_MDY_RE, lambda m: _named_date(m, month=1, day=2, year=3))
    take(_DMY_RE, lambda m: _named_date(m, month=2, day=1, year=3))
    take(_MY_RE, lambda m: _named_date(m, month=1, day=None, year=2))
    take(_SLASH_RE, _slash_date)
    take(_OPAQUE_RE, lambda m: as_id(m) if _is_id_like(m.group(0)) else None)
    take(_AMOUNT_PREFIX_RE, lambda m: _valued("amount", m))
    take(_AMOUNT_SUFFIX_RE, _suffix_amount)
    take(_PERCENT_RE, lambda m: _valued("percentage", m))
    take(_NUMBER_RE, lambda m: _valued("number", m))
    return sorted(found, key=lambda m: m.start)


def _valued(kind: MentionKind, match: re.Match[str]) -> Mention | None:
    groups = match.groupdict()
    value = _decimal(match.group("num"), groups.get("scale"))
    if value is None:
        return None
    return Mention(kind, match.group(0).strip(), value)


def _suffix_amount(match: re.Match[str]) -> Mention | None:
    value = _decimal(match.group("num"), match.group("scale"))
    if value is None:
        return None
    if match.group("cur").lower().startswith("cent"):
        value = value / 100
    return Mention("amount", match.group(0).strip(), value)


def _iso_date(match: re.Match[str]) -> Mention | None:
    year, month, day = (int(match.group(i)) for i in (1, 2, 3))
    return Mention("date", match.group(0), dates=((year, month, day),))


def _named_date(match: re.Match[str], *, month: int, day: int | None, year: int) -> Mention:
    month_no = _MONTHS[match.group(month).lower().rstrip(".")]
    day_no = int(match.group(day)) if day is not None else None
    year_no = int(match.group(year)) if match.group(year) else None
    return Mention("date", match.group(0), dates=((year_no, month_no, day_no),))


def _slash_date(match: re.Match[str]) -> Mention:
    a, b, y = int(match.group(1)), int(match.group(2)), int(match.group(3))
    if y < 100:
        y += 2000
    # US month/day first, then day/month: accept whichever reading the facts support.
    readings = tuple(dict.fromkeys(((y, a, b), (y, b, a))))
    return Mention("date", match.group(0), dates=readings)


def _date_mention_valid(mention: Mention) -> bool:
    return any(_valid_date(*reading) for reading in mention.dates)


def _date_grounded(mention: Mention, facts: Facts) -> bool:
    for year, month, day in mention.dates:
        if not _valid_date(year, month, day):
            continue
        for fact in facts.dates:
            if (
                fact.month == month
                and (year is None or fact.year == year)
                and (day is None or fact.day == day)
            ):
                return True
    return False


def _decimals_text(text: str) -> int:
    digits = text.split("%")[0]
    digits = re.sub(r"[^\d.]", "", digits)
    return len(digits.split(".", 1)[1]) if "." in digits else 0


def _percentage_grounded(mention: Mention, facts: Facts) -> bool:
    assert mention.value is not None
    places = _decimals_text(mention.text)
    half_unit = Decimal(1).scaleb(-places) / 2
    return any(abs(mention.value - abs(p)) <= half_unit for p in facts.percentages)


def _number_grounded(value: Decimal, facts: Facts) -> bool:
    if value in _ALWAYS_ALLOWED_NUMBERS or value in facts.numbers:
        return True
    if value in facts.amounts or value in facts.percentages:
        return True
    return any(Decimal(d.year) == value for d in facts.dates)


def _grounded(mention: Mention, facts: Facts) -> bool:
    if mention.kind == "id":
        return mention.text in facts.ids
    if mention.kind == "date":
        return _date_grounded(mention, facts)
    if mention.kind == "percentage":
        return _percentage_grounded(mention, facts)
    assert mention.value is not None
    if mention.kind == "amount":
        return mention.value in facts.amounts
    return _number_grounded(mention.value, facts)


def check_grounding(text: str, facts: Facts) -> GroundingResult:
    """Check that every amount, date, ID, percentage and number in `text` is in `facts`."""
    problems: dict[str, MentionKind] = {}
    for mention in extract_mentions(text):
        invalid_date = mention.kind == "date" and not _date_mention_valid(mention)
        if invalid_date or not _grounded(mention, facts):
            problems.setdefault(mention.text, mention.kind)
    return GroundingResult(
        ok=not problems, problems=tuple(problems), kinds=tuple(problems.values())
    )


def format_date(value: date) -> str:
    """The fact sheet's date form, `Oct 1, 2026` (one the extractor reads back)."""
    return f"{calendar.month_abbr[value.month]} {value.day}, {value.year}"


_QUOTED_NAME_RE = re.compile(r"[^a-z0-9 _-]+")


class FactsBuilder:
    """Builds `Facts`: add lines most important first; every token in a line becomes a fact."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._quoted: dict[str, str] = {}
        self._amounts: set[Decimal] = set()
        self._dates: set[date] = set()
        self._ids: set[str] = set()
        self._percentages: set[Decimal] = set()
        self._numbers: set[Decimal] = set()

    def add_line(self, text: str) -> FactsBuilder:
        """Append a fact line and register every amount, date, ID and number it contains."""
        line = " ".join(text.split())
        if not line:
            return self
        self._lines.append(line)
        self._register(extract_mentions(line))
        return self

    def add_lines(self, lines: Iterable[str]) -> FactsBuilder:
        """Append several fact lines in priority order."""
        for line in lines:
            self.add_line(line)
        return self

    def _register(self, mentions: Iterable[Mention]) -> None:
        for mention in mentions:
            if mention.kind == "id":
                self._ids.add(mention.text)
            elif mention.kind == "date":
                for year, month, day in mention.dates:
                    if year is not None and day is not None and _valid_date(year, month, day):
                        self._dates.add(date(year, month, day))
            elif mention.value is not None:
                if mention.kind == "amount":
                    self._amounts.add(mention.value)
                elif mention.kind == "percentage":
                    self._percentages.add(mention.value)
                else:
                    self._numbers.add(mention.value)

    def add_amount(self, money: Money) -> str:
        """Register `money` as a fact and return its display form for use in a line."""
        self._amounts.add(abs(money.amount))
        self._amounts.add(abs(money.quantize().amount))
        return money.format()

    def add_date(self, value: date) -> str:
        """Register `value` as a fact date and return its display form (`Oct 1, 2026`)."""
        self._dates.add(value)
        return format_date(value)

    def add_id(self, value: str) -> str:
        """Register an object ID as a fact and return it unchanged."""
        self._ids.add(value)
        return value

    def add_number(self, value: int | Decimal) -> str:
        """Register a count or quantity as a fact and return its display form (`42,000`)."""
        dec = Decimal(value)
        self._numbers.add(abs(dec))
        return f"{dec:,}"

    def add_quoted(self, name: str, text: str) -> str:
        """Attach customer-controlled `text` as quoted data; returns a `[name]` reference for lines.

        Nothing in `text` becomes a fact. A repeated name gets a numeric suffix.
        """
        key = _QUOTED_NAME_RE.sub(" ", name.lower()).strip() or "text"
        base, n = key, 2
        while key in self._quoted:
            key, n = f"{base} {n}", n + 1
        self._quoted[key] = text[:MAX_QUOTED_CHARS]
        return f"[{key}]"

    def build(self) -> Facts:
        """The immutable fact sheet."""
        return Facts(
            lines=tuple(self._lines),
            quoted=MappingProxyType(dict(self._quoted)),
            amounts=frozenset(self._amounts),
            dates=frozenset(self._dates),
            ids=frozenset(self._ids),
            percentages=frozenset(self._percentages),
            numbers=frozenset(self._numbers),
        )


# A promise of money: a refund, credit, reimbursement or money back that someone "will" give.
# Deliberately simple phrase rules (the brief's "near will/we'll/promise/guarantee"); a negated
# phrase ("we can't promise a refund") is not a promise.
_MONEY_WORD = (
    r"(?:refund\w*|credit(?!\s+card)\w*|money\s+back|reimburs\w*|compensat\w*|waive\w*|"
    r"make\s+(?:it|this|things)\s+right)"
)
_COMMIT = (
    r"(?:will|'ll|shall|going\s+to|promis\w*|guarantee\w*|happy\s+to|glad\s+to|can\s+offer|"
    r"(?:would\s+like|want)\s+to\s+offer|(?:are|am|have|'ve|has)\s+(?:issu|process|approv|appl|"
    r"refund|credit|reimburs|sen[dt])\w*)"
)
_PROMISE_RES = (
    re.compile(
        rf"\b(?:we|i|our\s+team|the\s+team|billing|support|finance|you)\b[^.!?\n]{{0,30}}?"
        rf"\b{_COMMIT}[^.!?\n]{{0,60}}?\b{_MONEY_WORD}"
    ),
    re.compile(
        rf"\b{_MONEY_WORD}(?:\s+of\s+\S+)?\s+(?:will|shall|is\s+going\s+to|are\s+going\s+to)\s+"
        r"(?:be\s+)?(?:issued|processed|sent|applied|added|credited|refunded|returned|paid|arrive|"
        r"appear|post)"
    ),
    re.compile(rf"\b(?:promis|guarantee)\w*\b[^.!?\n]{{0,60}}?\b{_MONEY_WORD}"),
    re.compile(rf"\b{_MONEY_WORD}[^.!?\n]{{0,30}}?\b(?:guaranteed|promised)\b"),
)
# Negated or hedged phrases ("we can't promise a refund", "we'll review whether a refund applies")
# are not promises.
_NEGATION_RE = re.compile(r"\b(?:not|never|no|cannot|unable)\b|n't\b")
_HEDGE_RE = re.compile(r"\b(?:whether|if|review\w*|consider\w*|look\s+into|eligib\w*|request\w*)\b")


def find_promise(text: str) -> str | None:
    """The first phrase in `text` that promises a refund, credit or money back, if any."""
    normal = text.lower().replace("’", "'").replace("‘", "'")
    for pattern in _PROMISE_RES:
        for match in pattern.finditer(normal):
            before = normal[max(0, match.start() - 20) : match.start()]
            phrase = match.group(0)
            if (
                _NEGATION_RE.search(phrase)
                or _NEGATION_RE.search(before)
                or _HEDGE_RE.search(phrase)
            ):
                continue
            return text[match.start() : match.end()]
    return None


def check_promises(text: str, facts: Facts) -> str | None:
    """A promise of money in `text` that the facts do not themselves make, if any."""
    promise = find_promise(text)
    if promise is None:
        return None
    if any(find_promise(line) for line in facts.lines):
        return None
    return promise
