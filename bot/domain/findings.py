"""Findings: why an invoice differs from the previous one, as ranked, signed, money-exact parts.

The change in an invoice's total is decomposed exactly, per invoice pair:

    Δtotal = Δ(line amounts) − Δ(discounts) + Δ(tax) − Δ(credits applied) − Δ(balance applied)
             + Δ(residual)

The residual is whatever an invoice's own lines and amounts do not account for. Every part but the
residual becomes findings (line matching, quantity × price decomposition, invoice-level amounts);
the residual, and anything else no finding covers, is reported as `unexplained`. So the findings
never invent money: they sum exactly to `explained`, and `explained + unexplained == change`.

Pure: imports only the standard library and `bot.domain` / `bot.errors`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, localcontext
from itertools import product

from bot.domain.models import (
    CreditBalance,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    LineKind,
    Payment,
    PaymentStatus,
    Subscription,
)
from bot.domain.money import SYMBOLS, Money, exponent
from bot.errors import InvalidIdentifier, UserError

ZERO = Decimal(0)
_MIN_DATE = datetime.min.replace(tzinfo=UTC)
#: Two successful charges of one amount this close together, not for two invoices, are a duplicate.
DUPLICATE_WINDOW = timedelta(hours=24)
#: Billing periods differing by more than this are called out (months are 28–31 days).
_PERIOD_SLACK_DAYS = 3


class FindingKind(enum.StrEnum):
    """What one part of an invoice's change is."""

    USAGE_GROWTH = "usage_growth"
    NEW_LINE = "new_line"
    REMOVED_LINE = "removed_line"
    PRICE_CHANGE = "price_change"
    PLAN_CHANGE = "plan_change"
    PRORATION = "proration"
    DISCOUNT_ENDED = "discount_ended"
    DISCOUNT_ADDED = "discount_added"
    CREDIT_DEPLETED = "credit_depleted"
    CREDIT_ADDED = "credit_added"
    TAX_CHANGE = "tax_change"
    MINIMUM_COMMITMENT = "minimum_commitment"
    DUPLICATE_CHARGE = "duplicate_charge"
    BALANCE_APPLIED = "balance_applied"
    QUANTITY_CHANGE = "quantity_change"  # seats / fixed-fee quantity


_KIND_ORDER = {kind: index for index, kind in enumerate(FindingKind)}


def _empty_detail() -> Mapping[str, str]:
    return {}


@dataclass(frozen=True, slots=True)
class Finding:
    """One signed part of the change between two invoices, with the provider IDs behind it."""

    kind: FindingKind
    #: Signed contribution to `current.total - previous.total` (for duplicates: the extra charge).
    amount: Money
    #: One deterministic sentence with the numbers, ending in the signed amount.
    summary: str
    refs: tuple[str, ...] = ()
    metric: str | None = None
    detail: Mapping[str, str] = field(default_factory=_empty_detail, hash=False)


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why `current` differs from `previous`: ranked findings and what they leave unexplained."""

    current: Invoice
    #: The invoice compared with; may be in another currency (then nothing is attributed; see
    #: notes).
    previous: Invoice | None
    #: `current.total - previous.total`; `current.total` when there is nothing comparable.
    change: Money
    #: Largest |amount| first.
    findings: tuple[Finding, ...]
    #: Exactly the sum of the findings' amounts.
    explained: Money
    #: `change - explained`.
    unexplained: Money
    #: |explained| / (|explained| + |unexplained|), in [0, 1]; equals |explained| / |change|
    #: whenever the two don't pull in opposite directions, and 1 when both are zero.
    explained_share: Decimal
    notes: tuple[str, ...] = ()
    #: Duplicate or retried charges; they don't change the invoice total, so they stand apart.
    duplicate_payments: tuple[Finding, ...] = ()
    #: Usage drawn from prepaid credit, when it changed: the total may not show it at all.
    prepaid: PrepaidBurn | None = None


@dataclass(frozen=True, slots=True)
class PrepaidBurn:
    """Prepaid credit or commit drawn by this invoice against the previous one."""

    drawn: Money  # credits applied to this invoice
    previous_drawn: Money  # to the previous invoice (zero when it drew none)
    #: drawn / previous_drawn; None when the previous invoice drew nothing.
    rate: Decimal | None
    #: The prepaid balance left now (the provider's credits and commits), when known; only for
    #: the latest invoice, where "now" and "after this invoice" are the same.
    remaining: Money | None
    period_days: int | None
    #: remaining / drawn: how many more periods like this one the balance covers.
    periods_left: Decimal | None
    #: At this invoice's daily rate, the day the balance runs out (None when unknown or gone).
    runs_out: date | None
    #: The usage findings (one per metric) behind the change in what was drawn.
    usage: tuple[Finding, ...] = ()


# --------------------------------------------------------------------------- picking invoices


def _order_key(inv: Invoice) -> tuple[datetime, datetime, str]:
    when = inv.created_at or inv.period_end or _MIN_DATE
    return (when, inv.period_end or _MIN_DATE, inv.id)


def _is_final(inv: Invoice) -> bool:
    return inv.status not in (InvoiceStatus.DRAFT, InvoiceStatus.VOID)


def _is_later(inv: Invoice, than: Invoice) -> bool:
    """True when `inv` is known to come after `than`: by invoice date when both have one, else
    by billing period (end, then start). Unknown order is not "later"."""
    for a, b in (
        (inv.created_at, than.created_at),
        (inv.period_end, than.period_end),
        (inv.period_start, than.period_start),
    ):
        if a is not None and b is not None and a != b:
            return a > b
    return False


def pick_invoices(
    invoices: Sequence[Invoice], invoice_id: str | None = None
) -> tuple[Invoice, list[Invoice]]:
    """The latest (or given) non-draft, non-void invoice and the older same-provider ones, newest
    first (`explain_invoice` picks the comparable one among them).

    Raises `InvalidIdentifier` for an invoice ID the account doesn't have, and `UserError` when the
    account has no finalised invoice.
    """
    ordered = sorted(invoices, key=_order_key, reverse=True)
    position: int | None = None
    if invoice_id is not None:
        wanted = invoice_id.strip()
        position = next((i for i, inv in enumerate(ordered) if inv.id == wanted), None)
        if position is None:
            # People paste the number printed on the PDF as often as the ID.
            position = next(
                (
                    i
                    for i, inv in enumerate(ordered)
                    if inv.number and inv.number.lower() == wanted.lower()
                ),
                None,
            )
        if position is None:
            recent = ", ".join(f"`{inv.id}`" for inv in ordered[:3])
            hint = f" Recent invoices: {recent}." if recent else " It has no invoices yet."
            raise InvalidIdentifier(f"This account has no invoice `{wanted}`.{hint}")
    else:
        position = next((i for i, inv in enumerate(ordered) if _is_final(inv)), None)
        if position is None:
            if not ordered:
                raise UserError("This account has no invoices yet, so there is nothing to explain.")
            raise UserError(
                "This account has only draft or void invoices, so there is nothing to explain yet."
            )
    current = ordered[position]
    older = [
        inv
        for inv in ordered[position + 1 :]
        if inv.provider == current.provider and _is_final(inv)
    ]
    return current, older


# Stripe billing_reason values plus the Orb/Metronome equivalents the mappers may use.
_ONE_OFF_REASONS = frozenset(
    {"manual", "quote_accept", "automatic_pending_invoice_item_invoice", "one_off", "adhoc"}
)
_MID_PERIOD_REASONS = frozenset(
    {"subscription_update", "subscription_threshold", "threshold", "partial"}
)


def _category(inv: Invoice) -> str:
    """`recurring`, `mid_period` (a change or threshold invoice), `one_off`, or `scheduled`."""
    reason = (inv.billing_reason or "").lower()
    if reason in _ONE_OFF_REASONS:
        return "one_off"
    if reason in _MID_PERIOD_REASONS:
        return "mid_period"
    if reason == "scheduled":
        # Metronome bills scheduled charges (commit installments, fixed fees) on invoices of
        # their own; they compare with each other, not with usage invoices.
        return "scheduled"
    if (
        not reason
        and inv.subscription_id is None
        and inv.lines
        and all(line.kind is LineKind.ONE_OFF for line in inv.lines)
    ):
        return "one_off"
    return "recurring"


def _pick_previous(
    current: Invoice, history: Sequence[Invoice]
) -> tuple[Invoice | None, Invoice | None, list[str]]:
    """(previous comparable invoice, other-currency invoice if that is all there is, notes)."""
    notes: list[str] = []
    candidates = [
        inv
        for inv in history
        if inv.id != current.id
        and inv.provider == current.provider
        and _is_final(inv)
        # A caller may pass every invoice; never compare with a later one (by its period when
        # an invoice has no date).
        and not _is_later(inv, current)
    ]
    candidates.sort(key=_order_key, reverse=True)
    category = _category(current)
    pool = [inv for inv in candidates if _category(inv) == category]
    if not pool and category == "mid_period":
        pool = [inv for inv in candidates if _category(inv) == "recurring"]
        if pool:
            notes.append(
                f"{current.id} is a mid-period invoice ({current.billing_reason}); "
                f"compared with the regular invoice {pool[0].id}."
            )
    if not pool:
        what = "one-off " if category == "one_off" else ""
        notes.append(
            f"There is no earlier comparable {what}invoice, so each finding is a part of "
            f"this invoice's total."
        )
        return None, None, notes
    currency = current.total.currency
    same_currency = [inv for inv in pool if inv.total.currency == currency]
    if not same_currency:
        other = pool[0]
        notes.append(
            f"The previous invoice {other.id} is in {other.total.currency.upper()} and this one "
            f"in {currency.upper()}; amounts in different currencies can't be compared, so no "
            f"change is attributed."
        )
        return None, other, notes
    if same_currency[0] is not pool[0]:
        notes.append(
            f"{pool[0].id} is more recent but in {pool[0].total.currency.upper()}; compared "
            f"with {same_currency[0].id} instead."
        )
    previous = same_currency[0]
    if current.subscription_id:
        same_sub = [
            inv for inv in same_currency if inv.subscription_id in (None, current.subscription_id)
        ]
        if same_sub:
            previous = same_sub[0]
        else:
            notes.append(
                f"No earlier invoice of subscription {current.subscription_id}; compared with "
                f"{previous.id} of subscription {previous.subscription_id}."
            )
    return previous, None, notes


# --------------------------------------------------------------------------- formatting


def _fmt(value: Decimal, currency: str) -> str:
    return Money(value, currency).format()


def _fmt_signed(value: Decimal, currency: str) -> str:
    text = Money(value, currency).format()
    return text if text.startswith("-") else f"+{text}"


def _fmt_price(value: Decimal, currency: str) -> str:
    """A unit price with as many decimals as it has (`$0.0001`), at least the currency's."""
    digits = exponent(currency)
    exp = value.normalize().as_tuple().exponent
    places = max(digits, -exp if isinstance(exp, int) else 0)
    body = f"{abs(value):,.{places}f}"
    sign = "-" if value < 0 else ""
    symbol = SYMBOLS.get(currency)
    return f"{sign}{symbol}{body}" if symbol else f"{sign}{body} {currency.upper()}"


def _fmt_qty(value: Decimal) -> str:
    norm = value.normalize()
    return "0" if norm == 0 else f"{norm:,f}"


def _fmt_signed_qty(value: Decimal) -> str:
    text = _fmt_qty(value)
    return text if value < 0 else f"+{text}"


def _fmt_rate(rate: Decimal) -> str:
    pct = (rate * 100).quantize(Decimal("0.001")).normalize()
    return f"{pct:f}%" if pct != 0 else "0%"


def _fmt_gap(delta: timedelta) -> str:
    minutes = int(abs(delta).total_seconds() // 60)
    if minutes < 1:
        return "under a minute"
    if minutes < 120:
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    hours = minutes // 60
    if hours < 48:
        return f"{hours} hours"
    return f"{hours // 24} days"


def _clean(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _label(lines: Sequence[InvoiceLine]) -> str:
    first = lines[0]
    if first.metric and (first.kind is LineKind.USAGE or first.kind is LineKind.OTHER):
        return first.metric
    if first.description.strip():
        return _clean(first.description)
    return first.metric or first.price_id or first.product_id or first.id or "a line"


def _dstr(value: Decimal) -> str:
    return f"{value.normalize():f}" if value != 0 else "0"


# --------------------------------------------------------------------------- one invoice's parts


@dataclass(slots=True)
class _Parts:
    """One invoice split into the components of the decomposition."""

    invoice: Invoice | None
    regular: list[InvoiceLine] = field(default_factory=list)
    prorations: list[InvoiceLine] = field(default_factory=list)
    minimums: list[InvoiceLine] = field(default_factory=list)
    discount_lines: list[InvoiceLine] = field(default_factory=list)
    credit_lines: list[InvoiceLine] = field(default_factory=list)
    tax_lines: list[InvoiceLine] = field(default_factory=list)
    lines_total: Decimal = ZERO
    discount: Decimal = ZERO
    tax: Decimal = ZERO
    credits: Decimal = ZERO
    balance: Decimal = ZERO  # customer balance applied inside `total`
    balance_outside: Decimal = ZERO  # applied to what's due only (Stripe's convention)
    residual: Decimal = ZERO
    skipped_lines: int = 0
    no_lines: bool = False

    @property
    def base(self) -> Decimal:
        """The taxable amount: lines after discounts and after prepaid credits, which every
        provider applies before tax (Stripe's pretax credits, Orb's credits on the line); a
        customer balance is applied after tax and is not part of it."""
        return self.lines_total - self.discount - self.credits


def _amount_in(money: Money | None, currency: str) -> Decimal | None:
    if money is None or money.currency != currency:
        return None
    return money.amount


def _sum(lines: Iterable[InvoiceLine]) -> Decimal:
    return sum((line.amount.amount for line in lines), ZERO)


def _options(
    invoice_level: Decimal | None, line_fields: Decimal | None, lines: Decimal
) -> list[Decimal]:
    """Readings of one component: on the invoice, on the lines, as lines of its own, or twice."""
    if invoice_level is not None:
        raw = [invoice_level, invoice_level + lines]
    else:
        fields = line_fields if line_fields is not None else ZERO
        raw = [fields + lines, fields, lines]
    out: list[Decimal] = []
    for value in raw:
        if value not in out:
            out.append(value)
    return out


def _parts(inv: Invoice) -> _Parts:
    currency = inv.total.currency
    parts = _Parts(invoice=inv)
    for line in inv.lines:
        if line.amount.currency != currency:
            parts.skipped_lines += 1
        elif line.kind is LineKind.DISCOUNT:
            parts.discount_lines.append(line)
        elif line.kind is LineKind.CREDIT:
            parts.credit_lines.append(line)
        elif line.kind is LineKind.TAX:
            parts.tax_lines.append(line)
        elif line.proration or line.kind is LineKind.PRORATION:
            parts.prorations.append(line)
        elif line.kind is LineKind.MINIMUM:
            parts.minimums.append(line)
        else:
            parts.regular.append(line)
    charges = [*parts.regular, *parts.prorations, *parts.minimums]
    lines_total = _sum(charges)
    subtotal = _amount_in(inv.subtotal, currency)
    if not charges:
        parts.no_lines = True
        if subtotal is not None:
            lines_total = subtotal

    def line_field(attr: str) -> Decimal | None:
        values = [_amount_in(getattr(line, attr), currency) for line in charges]
        known = [v for v in values if v is not None]
        return sum(known, ZERO) if known else None

    discount_opts = _options(
        _amount_in(inv.discount, currency),
        line_field("discount_amount"),
        -_sum(parts.discount_lines),
    )
    tax_opts = _options(
        _amount_in(inv.tax, currency), line_field("tax_amount"), _sum(parts.tax_lines)
    )
    credit_opts = _options(
        _amount_in(inv.credits_applied, currency),
        line_field("credits_applied"),
        -_sum(parts.credit_lines),
    )
    balance = _amount_in(inv.balance_applied, currency) or ZERO
    balance_opts = [(balance, ZERO), (ZERO, balance)] if balance else [(ZERO, ZERO)]
    total = inv.total.amount
    # The first reading under which the invoice adds up wins; if none does, the first reading
    # stands and the difference is the residual (reported as unexplained).
    chosen = None
    for d, t, c, (b_in, b_out) in product(discount_opts, tax_opts, credit_opts, balance_opts):
        residual = total - (lines_total - d + t - c - b_in)
        if chosen is None:
            chosen = (d, t, c, b_in, b_out, residual)
        if residual == 0:
            chosen = (d, t, c, b_in, b_out, residual)
            break
    assert chosen is not None  # every option list has at least one entry
    (
        parts.discount,
        parts.tax,
        parts.credits,
        parts.balance,
        parts.balance_outside,
        parts.residual,
    ) = chosen
    parts.lines_total = lines_total
    return parts


# --------------------------------------------------------------------------- line matching

_MONTHS = (
    r"jan(uary)?|feb(ruary)?|mar(ch)?|apr(il)?|may|june?|july?|aug(ust)?|"
    r"sep(t|tember)?|oct(ober)?|nov(ember)?|dec(ember)?"
)
_WEEKDAYS = r"mon(day)?|tue(s|sday)?|wed(nesday)?|thu(rs|rsday)?|fri(day)?|sat(urday)?|sun(day)?"
# Units that follow a quantity written without a space ("100GB", "1.5M", "720h", "3x").
_UNITS = r"k|m|mm|b|bn|kb|mb|gb|tb|pb|kib|mib|gib|tib|h|hr|hrs|min|mins|s|ms|x|st|nd|rd|th"
# Pieces of a description that change from one invoice to the next while the line stays the
# same thing: ISO dates and times, quantities and amounts standing alone or with a unit, period
# words ("Q3", "H1", "FY2025"), month and weekday names. Digits inside a name ("metric_59",
# "A100", "v2", "gpt-4o") are kept: they are part of what the line is.
_STRIP_RES = (
    re.compile(r"\d{4}-\d{2}-\d{2}(?:t\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:z|[+-]\d{2}:?\d{2})?)?"),
    re.compile(rf"(?<![a-z0-9_])[-+]?[$€£¥]?\d[\d,.:/-]*(?:\s?(?:{_UNITS}))?(?![a-z0-9_])"),
    re.compile(r"\b(?:q[1-4]|h[12]|fy\d{2,4})\b"),
    re.compile(rf"\b(?:{_MONTHS}|{_WEEKDAYS})\b"),
)
_NON_WORD_RE = re.compile(r"[^a-z0-9_]+")


def normalise_description(text: str) -> str | None:
    """A line description with quantities, prices, dates and period text stripped and case and
    whitespace folded, so that one line matches itself from invoice to invoice; None when
    nothing is left (a description that is only numbers names nothing)."""
    text = text.casefold()
    for pattern in _STRIP_RES:
        text = pattern.sub(" ", text)
    text = " ".join(_NON_WORD_RE.sub(" ", text).split())
    return text or None


#: Matching levels by ID, strongest first; lines left over are matched by description.
_ID_LEVELS = ("price", "product", "metric")


def _key(line: InvoiceLine, level: str) -> str | None:
    """The line's key at one ID level. Below the price level a different metric means a
    different thing, so it is part of the product key."""
    if level == "price":
        return line.price_id or None
    if level == "product":
        return f"{line.product_id}\x00{line.metric or ''}" if line.product_id else None
    return line.metric or None


@dataclass(slots=True)
class _Match:
    previous: list[InvoiceLine]
    current: list[InvoiceLine]
    level: str


def _group(lines: Iterable[InvoiceLine], level: str) -> dict[str, list[InvoiceLine]]:
    groups: dict[str, list[InvoiceLine]] = {}
    for line in lines:
        key = _key(line, level)
        if key is not None:
            groups.setdefault(key, []).append(line)
    return groups


def _compatible(a: InvoiceLine, b: InvoiceLine) -> bool:
    """Lines with one description are the same thing unless their metrics say otherwise."""
    return not (a.metric and b.metric and a.metric != b.metric)


def _pair_by_description(
    previous: list[InvoiceLine], current: list[InvoiceLine]
) -> tuple[list[_Match], list[InvoiceLine], list[InvoiceLine]]:
    """Pair lines one to one by normalised description: among equal descriptions, unchanged
    lines (same amount and quantity) pair first, so reordering them changes nothing; the rest
    pair by position."""
    by_key: dict[str, list[InvoiceLine]] = {}
    for line in previous:
        key = normalise_description(line.description)
        if key is not None:
            by_key.setdefault(key, []).append(line)
    matches: list[_Match] = []
    used: set[int] = set()
    waiting: list[tuple[InvoiceLine, list[InvoiceLine]]] = []
    for line in current:
        key = normalise_description(line.description)
        candidates = by_key.get(key) if key is not None else None
        if not candidates:
            continue
        twin = next(
            (
                p
                for p in candidates
                if id(p) not in used
                and p.amount == line.amount
                and p.quantity == line.quantity
                and _compatible(p, line)
            ),
            None,
        )
        if twin is None:
            waiting.append((line, candidates))
            continue
        used.update((id(twin), id(line)))
        matches.append(_Match([twin], [line], "description"))
    for line, candidates in waiting:
        first = next((p for p in candidates if id(p) not in used and _compatible(p, line)), None)
        if first is not None:
            used.update((id(first), id(line)))
            matches.append(_Match([first], [line], "description"))
    prev_left = [line for line in previous if id(line) not in used]
    cur_left = [line for line in current if id(line) not in used]
    return matches, prev_left, cur_left


def _match_lines(
    previous: list[InvoiceLine], current: list[InvoiceLine]
) -> tuple[list[_Match], list[InvoiceLine], list[InvoiceLine]]:
    """Match lines by the strongest key each side has: price ID, else product ID, else metric
    (lines sharing such a key on one invoice are taken together, e.g. a tiered price's tiers);
    else one to one by normalised description, position breaking ties. Returns the matches, the
    previous lines left unmatched (removed) and the current ones (new)."""
    prev_left, cur_left = previous, current
    matches: list[_Match] = []
    for level in _ID_LEVELS:
        if not prev_left or not cur_left:
            break
        prev_groups = _group(prev_left, level)
        cur_groups = _group(cur_left, level)
        used: set[int] = set()
        for key, cur_lines in cur_groups.items():
            prev_lines = prev_groups.get(key)
            if prev_lines is None:
                continue
            matches.append(_Match(prev_lines, cur_lines, level))
            used.update(id(line) for line in prev_lines)
            used.update(id(line) for line in cur_lines)
        if used:
            prev_left = [line for line in prev_left if id(line) not in used]
            cur_left = [line for line in cur_left if id(line) not in used]
    if prev_left and cur_left:
        pairs, prev_left, cur_left = _pair_by_description(prev_left, cur_left)
        matches.extend(pairs)
    return matches, prev_left, cur_left


def _is_usage(lines: Sequence[InvoiceLine]) -> bool:
    return any(
        line.kind is LineKind.USAGE or (line.kind is LineKind.OTHER and line.metric)
        for line in lines
    )


def _quantity(lines: Sequence[InvoiceLine]) -> Decimal | None:
    if any(line.quantity is None for line in lines):
        return None
    return sum((line.quantity for line in lines if line.quantity is not None), ZERO)


def _unit_price(lines: Sequence[InvoiceLine]) -> Decimal | None:
    prices = {line.unit_price for line in lines}
    if len(prices) != 1:
        return None
    return prices.pop()


def _line_refs(*groups: Iterable[InvoiceLine]) -> tuple[str, ...]:
    return _dedupe(line.id for group in groups for line in group)


def _dedupe(items: Iterable[str | None]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for item in items:
        if item:
            seen.setdefault(item, None)
    return tuple(seen)


# --------------------------------------------------------------------------- findings builder


class _Builder:
    """Collects findings for one invoice pair in one currency."""

    def __init__(
        self, current: Invoice, previous: Invoice | None, plans: Mapping[str, str]
    ) -> None:
        self.current = current
        self.previous = previous
        self.currency = current.total.currency
        self.minor = Decimal(1).scaleb(-exponent(self.currency))
        self.findings: list[Finding] = []
        self.notes: list[str] = []
        self.plan_now = _plan_name(current, plans)
        self.plan_before = _plan_name(previous, plans) if previous else None
        #: A recurring fee line matched from one invoice to the other.
        self.fee_kept = False

    @property
    def plan_switched(self) -> bool:
        return bool(self.plan_now and self.plan_before and self.plan_now != self.plan_before)

    def add(
        self,
        kind: FindingKind,
        amount: Decimal,
        summary: str,
        refs: tuple[str, ...],
        *,
        metric: str | None = None,
        detail: Mapping[str, str] | None = None,
    ) -> None:
        if amount == 0:
            return
        self.findings.append(
            Finding(
                kind=kind,
                amount=Money(amount, self.currency),
                summary=f"{summary}: {_fmt_signed(amount, self.currency)}",
                refs=refs,
                metric=metric,
                detail=dict(detail or {}),
            )
        )

    def m(self, value: Decimal) -> str:
        return _fmt(value, self.currency)

    def p(self, value: Decimal) -> str:
        return _fmt_price(value, self.currency)

    def invoice_refs(self, *groups: Iterable[InvoiceLine]) -> tuple[str, ...]:
        ids = [self.current.id, self.previous.id if self.previous else None]
        return _dedupe([*ids, *(line.id for group in groups for line in group)])

    # ---- matched lines

    def matched(self, match: _Match) -> None:
        before, now = match.previous, match.current
        if any(ln.kind is LineKind.SUBSCRIPTION for ln in before) and any(
            ln.kind is LineKind.SUBSCRIPTION for ln in now
        ):
            self.fee_kept = True
        a0, a1 = _sum(before), _sum(now)
        delta = a1 - a0
        if delta == 0 and not self._offsetting(before, now):
            return
        refs = _line_refs(before, now)
        label = _label(now)
        usage = _is_usage(now)
        metric = next((line.metric for line in now if line.metric), None)
        base_detail = {"old_amount": _dstr(a0), "new_amount": _dstr(a1)}
        subscription = any(line.kind is LineKind.SUBSCRIPTION for line in now)
        if subscription and match.level != "price" and self._plan_lines_differ(before, now):
            self._plan_change(before, now, delta)
            return
        q0, q1 = _quantity(before), _quantity(now)
        p0, p1 = _unit_price(before), _unit_price(now)
        qty_kind = FindingKind.USAGE_GROWTH if usage else FindingKind.QUANTITY_CHANGE
        if q0 is not None and q1 is not None and p0 is not None and p1 is not None:
            growth = (q1 - q0) * p0
            price = q1 * (p1 - p0)
            left = delta - growth - price
            # Providers round each line to the minor unit; what that leaves is folded into the
            # larger effect. More than that means the amounts don't follow quantity × price
            # (tiers, packages), and the stated prices can't be used.
            if abs(left) <= self.minor / 2 * (len(before) + len(now)):
                if growth != 0 and (price == 0 or abs(growth) >= abs(price)):
                    growth += left
                elif price != 0:
                    price += left
                else:
                    self._whole_delta(label, usage, metric, refs, q0, q1, a0, a1, base_detail)
                    return
                detail = {
                    **base_detail,
                    "old_quantity": _dstr(q0),
                    "new_quantity": _dstr(q1),
                    "old_unit_price": _dstr(p0),
                    "new_unit_price": _dstr(p1),
                }
                self._quantity_finding(qty_kind, label, metric, refs, q0, q1, growth, detail, p0)
                self._price_finding(label, usage, metric, refs, p0, p1, q1, price, detail)
                return
        self._whole_delta(label, usage, metric, refs, q0, q1, a0, a1, base_detail)

    @staticmethod
    def _offsetting(before: Sequence[InvoiceLine], now: Sequence[InvoiceLine]) -> bool:
        """True when a line's amount stayed the same only because its quantity and its unit
        price moved in opposite directions (twice the usage at half the price): both changes
        are reported, summing to zero, rather than "nothing changed"."""
        q0, q1 = _quantity(before), _quantity(now)
        p0, p1 = _unit_price(before), _unit_price(now)
        return None not in (q0, q1, p0, p1) and q0 != q1 and p0 != p1

    def _plan_lines_differ(self, before: Sequence[InvoiceLine], now: Sequence[InvoiceLine]) -> bool:
        old_products = {line.product_id for line in before if line.product_id}
        new_products = {line.product_id for line in now if line.product_id}
        if old_products and new_products and old_products.isdisjoint(new_products):
            return True
        return self.plan_switched

    def _quantity_finding(
        self,
        kind: FindingKind,
        label: str,
        metric: str | None,
        refs: tuple[str, ...],
        q0: Decimal,
        q1: Decimal,
        amount: Decimal,
        detail: Mapping[str, str],
        p0: Decimal | None,
    ) -> None:
        verb = "grew" if q1 > q0 else "fell"
        each = f" ({_fmt_signed_qty(q1 - q0)} × {self.p(p0)})" if p0 is not None else ""
        if kind is FindingKind.USAGE_GROWTH:
            summary = f"Usage of {label} {verb} from {_fmt_qty(q0)} to {_fmt_qty(q1)}{each}"
        else:
            summary = f"Quantity of {label} went from {_fmt_qty(q0)} to {_fmt_qty(q1)}{each}"
        self.add(kind, amount, summary, refs, metric=metric, detail=detail)

    def _price_finding(
        self,
        label: str,
        usage: bool,
        metric: str | None,
        refs: tuple[str, ...],
        p0: Decimal,
        p1: Decimal,
        q1: Decimal,
        amount: Decimal,
        detail: Mapping[str, str],
    ) -> None:
        what = "Unit price" if usage else "Price"
        times = f" (× {_fmt_qty(q1)})" if q1 != 1 else ""
        if p0 == p1:
            summary = f"Charge for {label} changed at the same price ({self.p(p1)}){times}"
        else:
            summary = f"{what} of {label} changed from {self.p(p0)} to {self.p(p1)}{times}"
        self.add(FindingKind.PRICE_CHANGE, amount, summary, refs, metric=metric, detail=detail)

    def _whole_delta(
        self,
        label: str,
        usage: bool,
        metric: str | None,
        refs: tuple[str, ...],
        q0: Decimal | None,
        q1: Decimal | None,
        a0: Decimal,
        a1: Decimal,
        detail: dict[str, str],
    ) -> None:
        """Unit prices unknown (or not followed): quantity moved → quantity; else price."""
        delta = a1 - a0
        amounts = f"{self.m(a0)} → {self.m(a1)}"
        if q0 is not None and q1 is not None:
            detail = {**detail, "old_quantity": _dstr(q0), "new_quantity": _dstr(q1)}
            if q0 != q1:
                kind = FindingKind.USAGE_GROWTH if usage else FindingKind.QUANTITY_CHANGE
                verb = "grew" if q1 > q0 else "fell"
                noun = "Usage" if usage else "Quantity"
                summary = (
                    f"{noun} of {label} {verb} from {_fmt_qty(q0)} to {_fmt_qty(q1)} ({amounts})"
                )
                self.add(kind, delta, summary, refs, metric=metric, detail=detail)
                return
            summary = (
                f"Charge for {label} changed from {self.m(a0)} to {self.m(a1)} "
                f"at the same quantity ({_fmt_qty(q1)})"
            )
            self.add(FindingKind.PRICE_CHANGE, delta, summary, refs, metric=metric, detail=detail)
            return
        if usage:
            verb = "rose" if delta > 0 else "fell"
            summary = f"Usage charges for {label} {verb} from {self.m(a0)} to {self.m(a1)}"
            self.add(FindingKind.USAGE_GROWTH, delta, summary, refs, metric=metric, detail=detail)
            return
        summary = f"Charge for {label} changed from {self.m(a0)} to {self.m(a1)}"
        self.add(FindingKind.PRICE_CHANGE, delta, summary, refs, metric=metric, detail=detail)

    # ---- unmatched lines

    def unmatched(self, removed: list[InvoiceLine], added: list[InvoiceLine]) -> None:
        old_plans = sorted(
            (line for line in removed if line.kind is LineKind.SUBSCRIPTION),
            key=lambda line: line.amount.amount,
            reverse=True,
        )
        new_plans = sorted(
            (line for line in added if line.kind is LineKind.SUBSCRIPTION),
            key=lambda line: line.amount.amount,
            reverse=True,
        )
        # A recurring fee that went away while another arrived is one plan change; the largest
        # fees pair up, extra ones are ordinary new or removed lines. Not when the plan's fee is
        # still there under the same plan: then an add-on went and another came (two lines).
        pairs = min(len(old_plans), len(new_plans))
        if self.fee_kept and not self.plan_switched:
            pairs = 0
        paired: set[int] = set()
        if pairs:
            before, now = old_plans[:pairs], new_plans[:pairs]
            paired = {id(line) for line in (*before, *now)}
            self._plan_change(before, now, _sum(now) - _sum(before))
        for line in removed:
            if id(line) not in paired:
                self._removed(line)
        for line in added:
            if id(line) not in paired:
                self._new(line)

    def _plan_change(
        self, before: Sequence[InvoiceLine], now: Sequence[InvoiceLine], delta: Decimal
    ) -> None:
        a0, a1 = _sum(before), _sum(now)
        if self.plan_switched:
            old_name, new_name = self.plan_before or "", self.plan_now or ""
        else:
            old_name = " + ".join(_dedupe(_label([line]) for line in before))
            new_name = " + ".join(_dedupe(_label([line]) for line in now))
        summary = f"Plan changed from {old_name} ({self.m(a0)}) to {new_name} ({self.m(a1)})"
        if delta == 0:
            self.notes.append(f"The plan changed from {old_name} to {new_name} at the same price.")
        detail = {
            "old_plan": old_name,
            "new_plan": new_name,
            "old_amount": _dstr(a0),
            "new_amount": _dstr(a1),
        }
        self.add(FindingKind.PLAN_CHANGE, delta, summary, _line_refs(before, now), detail=detail)

    def _line_text(self, line: InvoiceLine) -> str:
        label = _label([line])
        if line.quantity is not None and line.unit_price is not None and line.quantity != 1:
            return f"{label} ({_fmt_qty(line.quantity)} × {self.p(line.unit_price)})"
        return label

    def _line_detail(self, line: InvoiceLine) -> dict[str, str]:
        detail = {"amount": _dstr(line.amount.amount), "description": _clean(line.description)}
        if line.quantity is not None:
            detail["quantity"] = _dstr(line.quantity)
        if line.unit_price is not None:
            detail["unit_price"] = _dstr(line.unit_price)
        return detail

    def _new(self, line: InvoiceLine) -> None:
        what = "New usage line" if _is_usage([line]) else "New line"
        summary = f"{what}: {self._line_text(line)}"
        self.add(
            FindingKind.NEW_LINE,
            line.amount.amount,
            summary,
            _line_refs([line]),
            metric=line.metric,
            detail=self._line_detail(line),
        )

    def _removed(self, line: InvoiceLine) -> None:
        summary = f"Line no longer billed: {_label([line])} (was {self.m(line.amount.amount)})"
        self.add(
            FindingKind.REMOVED_LINE,
            -line.amount.amount,
            summary,
            _line_refs([line]),
            metric=line.metric,
            detail=self._line_detail(line),
        )

    # ---- prorations and minimums

    def prorations(self, now: list[InvoiceLine], before: list[InvoiceLine]) -> None:
        if now:
            charged = sum((ln.amount.amount for ln in now if ln.amount.amount > 0), ZERO)
            credited = sum((ln.amount.amount for ln in now if ln.amount.amount < 0), ZERO)
            count = f"{len(now)} line{'s' if len(now) != 1 else ''}"
            if self.plan_switched:
                why = f"for the plan change from {self.plan_before} to {self.plan_now}"
            else:
                why = "for a mid-period change"
            summary = (
                f"Prorations {why} ({count}: {self.m(charged)} charged, "
                f"{self.m(credited)} credited)"
            )
            detail = {"charged": _dstr(charged), "credited": _dstr(credited)}
            credits_for = _dedupe(_label([ln]) for ln in now if ln.amount.amount < 0)
            charges_for = _dedupe(_label([ln]) for ln in now if ln.amount.amount > 0)
            if credits_for and charges_for and set(credits_for) != set(charges_for):
                detail["from"] = "; ".join(credits_for)
                detail["to"] = "; ".join(charges_for)
            self.add(
                FindingKind.PRORATION, charged + credited, summary, _line_refs(now), detail=detail
            )
        if before and self.previous is not None:
            net = _sum(before)
            summary = f"The previous invoice's prorations (net {self.m(net)}) did not recur"
            self.add(FindingKind.PRORATION, -net, summary, _line_refs(before))

    def minimums(self, now: list[InvoiceLine], before: list[InvoiceLine]) -> None:
        m0, m1 = _sum(before), _sum(now)
        if m0 == 0:
            summary = f"Minimum commitment true-up of {self.m(m1)}"
        elif m1 == 0:
            summary = (
                f"No minimum commitment true-up this time (the previous invoice had {self.m(m0)})"
            )
        else:
            summary = f"Minimum commitment true-up went from {self.m(m0)} to {self.m(m1)}"
        detail = {"old_amount": _dstr(m0), "new_amount": _dstr(m1)}
        self.add(
            FindingKind.MINIMUM_COMMITMENT, m1 - m0, summary, _line_refs(before, now), detail=detail
        )

    # ---- invoice-level amounts

    def discounts(self, now: _Parts, before: _Parts) -> None:
        d0, d1 = before.discount, now.discount
        amount = d0 - d1
        names_before = _dedupe(_label([ln]) for ln in before.discount_lines)
        names_now = _dedupe(_label([ln]) for ln in now.discount_lines)
        refs = self.invoice_refs(before.discount_lines, now.discount_lines)
        detail = {"old_discount": _dstr(d0), "new_discount": _dstr(d1)}
        if amount > 0:
            gone = [n for n in names_before if n not in names_now]
            if gone:
                detail["coupon"] = "; ".join(gone)
            if d1 == 0:
                named = f" ({'; '.join(gone)})" if gone else ""
                prev_id = self.previous.id if self.previous else "the previous invoice"
                summary = (
                    f"The discount{named} no longer applies (it took {self.m(d0)} off {prev_id})"
                )
            else:
                summary = f"Discounts fell from {self.m(d0)} to {self.m(d1)}"
            self.add(FindingKind.DISCOUNT_ENDED, amount, summary, refs, detail=detail)
        elif amount < 0:
            new = [n for n in names_now if n not in names_before]
            if new:
                detail["coupon"] = "; ".join(new)
            if d0 == 0:
                named = f" ({'; '.join(new)})" if new else ""
                summary = f"A discount{named} took {self.m(d1)} off"
            else:
                summary = f"Discounts grew from {self.m(d0)} to {self.m(d1)}"
            self.add(FindingKind.DISCOUNT_ADDED, amount, summary, refs, detail=detail)

    def credits(self, now: _Parts, before: _Parts) -> None:
        c0, c1 = before.credits, now.credits
        amount = c0 - c1
        refs = self.invoice_refs(before.credit_lines, now.credit_lines)
        detail = {"old_credits": _dstr(c0), "new_credits": _dstr(c1)}
        if amount > 0:
            if c1 == 0:
                summary = (
                    f"No prepaid credits were applied this time "
                    f"(the previous invoice used {self.m(c0)})"
                )
            else:
                summary = f"Prepaid credits applied fell from {self.m(c0)} to {self.m(c1)}"
            self.add(FindingKind.CREDIT_DEPLETED, amount, summary, refs, detail=detail)
        elif amount < 0:
            if c0 == 0:
                summary = f"Prepaid credits covered {self.m(c1)} of this invoice"
            else:
                summary = f"Prepaid credits applied grew from {self.m(c0)} to {self.m(c1)}"
            self.add(FindingKind.CREDIT_ADDED, amount, summary, refs, detail=detail)

    def balance(self, now: _Parts, before: _Parts) -> None:
        b0, b1 = before.balance, now.balance
        if b0 == 0:
            summary = f"Customer balance of {self.m(b1)} was applied"
        else:
            summary = f"Customer balance applied went from {self.m(b0)} to {self.m(b1)}"
        detail = {"old_balance_applied": _dstr(b0), "new_balance_applied": _dstr(b1)}
        self.add(FindingKind.BALANCE_APPLIED, b0 - b1, summary, self.invoice_refs(), detail=detail)

    def tax(self, now: _Parts, before: _Parts) -> None:
        t0, t1 = before.tax, now.tax
        delta = t1 - t0
        if delta == 0:
            return
        refs = self.invoice_refs(before.tax_lines, now.tax_lines)
        base0, base1 = before.base, now.base
        if self.previous is None:
            rate = f" ({_fmt_rate(t1 / base1)} of {self.m(base1)})" if base1 > 0 else ""
            detail = {"new_tax": _dstr(t1), "new_base": _dstr(base1)}
            self.add(
                FindingKind.TAX_CHANGE, delta, f"Tax of {self.m(t1)}{rate}", refs, detail=detail
            )
            return
        if base0 <= 0 or base1 <= 0:
            summary = f"Tax went from {self.m(t0)} to {self.m(t1)}"
            self.add(
                FindingKind.TAX_CHANGE,
                delta,
                summary,
                refs,
                detail={"old_tax": _dstr(t0), "new_tax": _dstr(t1)},
            )
            return
        r0, r1 = t0 / base0, t1 / base1
        rate_effect = (base1 * (r1 - r0)).quantize(self.minor)
        # Each tax amount is rounded to the minor unit, so effective rates wobble a little;
        # a "rate change" smaller than that wobble is just rounding.
        tolerance = self.minor / 2 * (1 + base1 / base0)
        if abs(rate_effect) <= tolerance:
            rate_effect = ZERO
        base_effect = delta - rate_effect
        detail = {
            "old_tax": _dstr(t0),
            "new_tax": _dstr(t1),
            "old_base": _dstr(base0),
            "new_base": _dstr(base1),
            "old_rate": _fmt_rate(r0),
            "new_rate": _fmt_rate(r1),
        }
        if rate_effect != 0:
            summary = (
                f"Tax rate changed from {_fmt_rate(r0)} to {_fmt_rate(r1)} "
                f"on {self.m(base1)} of taxable charges"
            )
            self.add(
                FindingKind.TAX_CHANGE,
                rate_effect,
                summary,
                refs,
                detail={**detail, "effect": "rate"},
            )
            if base_effect != 0:
                summary = (
                    f"Tax on the change in taxable charges ({self.m(base0)} → {self.m(base1)}) "
                    f"at {_fmt_rate(r0)}"
                )
                self.add(
                    FindingKind.TAX_CHANGE,
                    base_effect,
                    summary,
                    refs,
                    detail={**detail, "effect": "base"},
                )
            return
        verb = "rose" if delta > 0 else "fell"
        summary = (
            f"Tax {verb} from {self.m(t0)} to {self.m(t1)} as taxable charges went from "
            f"{self.m(base0)} to {self.m(base1)} ({_fmt_rate(r1)})"
        )
        self.add(FindingKind.TAX_CHANGE, delta, summary, refs, detail={**detail, "effect": "base"})


def _plan_name(inv: Invoice | None, plans: Mapping[str, str]) -> str | None:
    if inv is None:
        return None
    if inv.plan_name:
        return inv.plan_name
    if inv.subscription_id:
        return plans.get(inv.subscription_id)
    return None


# --------------------------------------------------------------------------- duplicates


def _next_invoice(current: Invoice, history: Sequence[Invoice]) -> Invoice | None:
    """The first final invoice of the same provider after `current`, if the caller passed it."""
    later = [
        inv
        for inv in history
        if inv.id != current.id
        and inv.provider == current.provider
        and _is_final(inv)
        and _is_later(inv, current)
    ]
    return min(later, key=_order_key) if later else None


def _payment_window(
    current: Invoice, following: Invoice | None
) -> tuple[datetime | None, datetime | None]:
    """[start, end) of the invoice's own payment window: from the invoice until the next
    invoice of the same series (open when there is none yet). Charges not tied to an invoice
    count for the invoice whose window they fall in."""
    start = current.created_at or current.period_end or current.period_start
    end = None
    if following is not None:
        end = following.created_at or following.period_end or following.period_start
    return start, end


def _duplicates(
    current: Invoice,
    following: Invoice | None,
    payments: Sequence[Payment],
    aliases: Mapping[str, str],
) -> tuple[Finding, ...]:
    """Two successful charges of one amount for the same invoice, or within 24 h and not for two
    different invoices, in this invoice's payment window. `aliases` maps other IDs of an
    invoice (a Stripe copy that collected it) to the ID the explanation uses."""
    window = _payment_window(current, following)
    buckets: dict[tuple[str, Money], list[Payment]] = {}
    seen: set[str] = set()
    for pay in sorted(payments, key=lambda p: (p.created_at, p.id)):
        if pay.status is not PaymentStatus.SUCCEEDED or pay.id in seen:
            continue
        seen.add(pay.id)
        alias = aliases.get(pay.invoice_id) if pay.invoice_id else None
        if alias is not None:
            pay = replace(pay, invoice_id=alias)
        buckets.setdefault((pay.provider, pay.amount), []).append(pay)
    found: list[Finding] = []
    for group in buckets.values():
        for index, later in enumerate(group):
            for earlier in group[:index]:
                if _is_duplicate(current, window, earlier, later):
                    found.append(_duplicate_finding(earlier, later))
                    break
    found.sort(key=lambda f: (-abs(f.amount.amount), f.detail.get("duplicate_at", ""), f.refs))
    return tuple(found)


def _is_duplicate(
    current: Invoice,
    window: tuple[datetime | None, datetime | None],
    earlier: Payment,
    later: Payment,
) -> bool:
    if _same_payment(earlier, later):
        return False
    if earlier.invoice_id and earlier.invoice_id == later.invoice_id:
        return later.invoice_id == current.id
    if earlier.invoice_id and later.invoice_id:
        return False  # two invoices, two charges: not a duplicate
    if later.created_at - earlier.created_at > DUPLICATE_WINDOW:
        return False
    if current.id in (earlier.invoice_id, later.invoice_id):
        return True
    start, end = window
    if start is not None and later.created_at < start:
        return False  # the previous invoice's window
    return end is None or later.created_at < end


def _same_payment(a: Payment, b: Payment) -> bool:
    """A payment intent and its charge (or two records of one intent) are one payment."""
    if a.payment_intent_id and a.payment_intent_id == b.payment_intent_id:
        return True
    return a.id == b.payment_intent_id or b.id == a.payment_intent_id


def _duplicate_finding(earlier: Payment, later: Payment) -> Finding:
    currency = later.amount.currency
    amount = later.amount.format()
    gap = _fmt_gap(later.created_at - earlier.created_at)
    invoice = later.invoice_id or earlier.invoice_id
    if earlier.invoice_id and earlier.invoice_id == later.invoice_id:
        summary = (
            f"{invoice} was paid twice: {earlier.id} and {later.id} each charged {amount}, "
            f"{gap} apart"
        )
    else:
        summary = (
            f"{earlier.id} and {later.id} each charged {amount}, {gap} apart, "
            f"without separate invoices"
        )
    detail = {
        "first_payment": earlier.id,
        "duplicate_payment": later.id,
        "first_at": earlier.created_at.isoformat(),
        "duplicate_at": later.created_at.isoformat(),
    }
    if invoice:
        detail["invoice"] = invoice
    refunded = _amount_in(later.amount_refunded, currency)
    if refunded:
        summary += f"; {_fmt(refunded, currency)} of {later.id} is already refunded"
        detail["refunded"] = _dstr(refunded)
    return Finding(
        kind=FindingKind.DUPLICATE_CHARGE,
        amount=later.amount,
        summary=summary,
        refs=_dedupe([earlier.id, later.id, invoice]),
        detail=detail,
    )


# --------------------------------------------------------------------------- explain


def _rank_key(finding: Finding) -> tuple[Decimal, int, str, tuple[str, ...]]:
    return (-abs(finding.amount.amount), _KIND_ORDER[finding.kind], finding.summary, finding.refs)


def _share(explained: Decimal, unexplained: Decimal) -> Decimal:
    gross = abs(explained) + abs(unexplained)
    if gross == 0:
        return Decimal(1)
    return abs(explained) / gross


def _period_days(inv: Invoice) -> int | None:
    if inv.period_start is None or inv.period_end is None:
        return None
    return round((inv.period_end - inv.period_start).total_seconds() / 86400)


def explain_invoice(
    current: Invoice,
    history: Sequence[Invoice],
    *,
    payments: Sequence[Payment] = (),
    subscriptions: Sequence[Subscription] = (),
    balances: Sequence[CreditBalance] = (),
    invoice_aliases: Mapping[str, str] | None = None,
) -> Explanation:
    """Why `current` differs from the previous comparable invoice in `history`: ranked findings
    that sum exactly to `explained`, the rest `unexplained`, caveats in `notes`.

    `history` may hold the provider's other invoices before and after `current`: the earlier
    ones give the comparison, the next one closes this invoice's payment window (duplicates
    after it belong to a later invoice). `balances` are the account's prepaid credits and
    commits now, for how long they last at this invoice's rate (latest invoice only).
    `invoice_aliases` maps other IDs of an invoice (the Stripe copy that collected it) to its
    own, so its payments count as its own.
    """
    # Quantities × sub-cent prices need more digits than the default 28 to stay exact.
    with localcontext() as ctx:
        ctx.prec = 60
        return _explain(current, history, payments, subscriptions, balances, invoice_aliases or {})


def _explain(
    current: Invoice,
    history: Sequence[Invoice],
    payments: Sequence[Payment],
    subscriptions: Sequence[Subscription],
    balances: Sequence[CreditBalance],
    aliases: Mapping[str, str],
) -> Explanation:
    currency = current.total.currency
    notes: list[str] = []
    if current.status is InvoiceStatus.DRAFT:
        notes.append(f"{current.id} is a draft; its amounts may still change.")
    elif current.status is InvoiceStatus.VOID:
        notes.append(f"{current.id} is void; it was never collected.")
    previous, foreign, pick_notes = _pick_previous(current, history)
    notes.extend(pick_notes)
    following = _next_invoice(current, history)
    duplicates = _duplicates(current, following, payments, aliases)
    zero = Money.zero(currency)
    if foreign is not None:
        return Explanation(
            current=current,
            previous=foreign,
            change=current.total,
            findings=(),
            explained=zero,
            unexplained=current.total,
            explained_share=_share(ZERO, current.total.amount),
            notes=tuple(notes),
            duplicate_payments=duplicates,
        )

    plans = {s.id: s.plan_name for s in subscriptions if s.plan_name}
    now = _parts(current)
    before = _parts(previous) if previous is not None else _Parts(invoice=None)
    build = _Builder(current, previous, plans)
    matches, removed, added = _match_lines(before.regular, now.regular)
    for match in matches:
        build.matched(match)
    build.unmatched(removed, added)
    build.prorations(now.prorations, before.prorations)
    build.minimums(now.minimums, before.minimums)
    build.discounts(now, before)
    build.tax(now, before)
    build.credits(now, before)
    build.balance(now, before)

    findings = sorted(build.findings, key=_rank_key)
    change = current.total - previous.total if previous is not None else current.total
    explained = Money(sum((f.amount.amount for f in findings), ZERO), currency)
    unexplained = change - explained
    notes.extend(build.notes)
    notes.extend(_caveats(build, now, before, unexplained))
    prepaid = None
    if previous is not None:
        latest = following is None
        prepaid = _prepaid_burn(current, now, before, findings, balances if latest else ())
    return Explanation(
        current=current,
        previous=previous,
        change=change,
        findings=tuple(findings),
        explained=explained,
        unexplained=unexplained,
        explained_share=_share(explained.amount, unexplained.amount),
        notes=tuple(notes),
        duplicate_payments=duplicates,
        prepaid=prepaid,
    )


# --------------------------------------------------------------------------- prepaid burn


def _prepaid_burn(
    current: Invoice,
    now: _Parts,
    before: _Parts,
    findings: Sequence[Finding],
    balances: Sequence[CreditBalance],
) -> PrepaidBurn | None:
    """How fast this invoice drew on prepaid credit against the previous one, what is left and,
    at this rate, when it runs out. None when neither invoice drew any, or both drew the same."""
    c1, c0 = now.credits, before.credits
    if c1 <= 0 or c1 == c0:
        return None
    currency = current.total.currency
    prepaid = [
        b
        for b in balances
        if b.provider == current.provider
        and b.kind in ("credits", "commit")
        and b.remaining.currency == currency
    ]
    remaining = (
        Money(sum((b.remaining.amount for b in prepaid), ZERO), currency) if prepaid else None
    )
    days = _period_days(current)
    runs_out: date | None = None
    periods_left: Decimal | None = None
    if remaining is not None:
        periods_left = max(remaining.amount, ZERO) / c1
        end = current.period_end or current.created_at
        if days and end is not None and remaining.amount > 0:
            runs_out = (end + timedelta(days=float(periods_left * days))).date()
    usage = tuple(f for f in findings if f.kind is FindingKind.USAGE_GROWTH)
    return PrepaidBurn(
        drawn=Money(c1, currency),
        previous_drawn=Money(c0, currency),
        rate=(c1 / c0) if c0 > 0 else None,
        remaining=remaining,
        period_days=days,
        periods_left=periods_left,
        runs_out=runs_out,
        usage=usage,
    )


def _caveats(build: _Builder, now: _Parts, before: _Parts, unexplained: Money) -> list[str]:
    notes: list[str] = []
    half = build.minor / 2
    current, previous = build.current, build.previous
    if previous is not None:
        days_now, days_before = _period_days(current), _period_days(previous)
        if days_now and days_before and abs(days_now - days_before) > _PERIOD_SLACK_DAYS:
            notes.append(
                f"{current.id} covers {days_now} days and {previous.id} covers {days_before}, "
                f"so the amounts are not like for like."
            )
    for parts in (before, now):
        inv = parts.invoice
        if inv is None:
            continue
        if parts.no_lines and inv.total.amount != 0:
            notes.append(f"{inv.id} lists no line items.")
        if parts.skipped_lines:
            notes.append(
                f"{parts.skipped_lines} line(s) of {inv.id} are in another currency and were "
                f"left out."
            )
        if abs(parts.residual) >= half and not parts.no_lines:
            notes.append(
                f"The line items, discounts, tax and credits of {inv.id} come to "
                f"{build.m(inv.total.amount - parts.residual)}, not its total "
                f"{build.m(inv.total.amount)}."
            )
    if now.balance_outside:
        due = current.total.amount - now.balance_outside
        notes.append(
            f"Customer balance of {build.m(now.balance_outside)} was applied to {current.id}, "
            f"so {build.m(due)} was due; that doesn't change the invoice total."
        )
    if abs(unexplained.amount) >= half:
        notes.append(f"{unexplained.format()} of the change is not explained by line items.")
    return notes


# --------------------------------------------------------------------------- for the detectors


def duplicate_charges(
    current: Invoice,
    following: Invoice | None,
    payments: Sequence[Payment],
    aliases: Mapping[str, str] | None = None,
) -> tuple[Finding, ...]:
    """The duplicate or retried charges in `current`'s payment window (up to `following`, the
    next invoice of its series), as `Explanation.duplicate_payments`, without the rest of the
    explanation: the anomaly detectors' public way to this rule. `aliases` maps a Stripe copy's
    invoice ID to its source's (`BillingSnapshot.mirrors`)."""
    return _duplicates(current, following, payments, aliases or {})
