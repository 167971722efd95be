"""Explain and draft: why an account's invoice changed, in words for an engineer or a customer.

Deterministic first. The findings engine computes what changed; this module picks the invoice,
turns the `Explanation` into a bounded fact sheet and into deterministic texts, and asks `word()`
for LLM wording, which is used only when every amount, date and ID in it is in the facts.

Customer-controlled text (the customer's name, invoice memos, line descriptions) enters the fact
sheet only as quoted data: where a finding's sentence names a line by its description, the fact
line carries a `[line N]` reference instead, so nothing a customer typed becomes a fact or reads
as an instruction. No Slack imports.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from bot.domain.findings import (
    Explanation,
    Finding,
    FindingKind,
    PrepaidBurn,
    explain_invoice,
    pick_invoices,
)
from bot.domain.grounding import Facts, FactsBuilder, format_date
from bot.domain.identifiers import AccountIdentifier
from bot.domain.models import (
    PROVIDER_LABELS,
    BillingSnapshot,
    Invoice,
    InvoiceLine,
    InvoiceMirror,
    LineKind,
    ProviderFailure,
)
from bot.domain.money import Money, exponent
from bot.errors import UserError
from bot.services.wording import LLMClient, Wording, word

#: How long the LLM may take before the deterministic text is used (seconds).
LLM_DEADLINE = 8.0
#: Findings given to the model one by one; the rest are summed into one line. The prompt builder
#: drops lower-priority lines on top of this to stay within its token budget.
MAX_FINDING_FACTS = 40
#: Findings before the engine's notes in the fact sheet (the notes outrank the long tail).
TOP_FINDING_FACTS = 8
#: Reasons named in the engineer's summary and in the customer draft.
SUMMARY_REASONS = 3
DRAFT_REASONS = 5

KIND_LABELS: dict[FindingKind, str] = {
    FindingKind.USAGE_GROWTH: "usage",
    FindingKind.NEW_LINE: "new line",
    FindingKind.REMOVED_LINE: "removed line",
    FindingKind.PRICE_CHANGE: "price change",
    FindingKind.PLAN_CHANGE: "plan change",
    FindingKind.PRORATION: "proration",
    FindingKind.DISCOUNT_ENDED: "discount ended",
    FindingKind.DISCOUNT_ADDED: "discount",
    FindingKind.CREDIT_DEPLETED: "fewer prepaid credits",
    FindingKind.CREDIT_ADDED: "prepaid credits",
    FindingKind.TAX_CHANGE: "tax",
    FindingKind.MINIMUM_COMMITMENT: "minimum commitment",
    FindingKind.DUPLICATE_CHARGE: "duplicate charge",
    FindingKind.BALANCE_APPLIED: "customer balance",
    FindingKind.QUANTITY_CHANGE: "quantity change",
}

# Engineer notes that say the customer reports a double charge: the draft then leads with it.
_DOUBLE_CHARGE_RE = re.compile(
    r"\b(twice|double[ds]?|duplicate[ds]?|two charges|charged again)\b", re.IGNORECASE
)
# Lines the findings engine names by their description (see `findings._label`): not tax or
# credit lines, and not metered lines, which it names by their metric.
_UNNAMED_KINDS = frozenset({LineKind.TAX, LineKind.CREDIT})
_METRIC_NAMED_KINDS = frozenset({LineKind.USAGE, LineKind.OTHER})
_LABEL_LIMIT = 80  # `findings._clean`'s default: how a description is shortened in a summary


class SnapshotSource(Protocol):
    """What this service needs from the lookup service: an account's merged billing snapshot."""

    async def snapshot(self, ident: AccountIdentifier) -> BillingSnapshot:
        """The account's billing state from every enabled provider."""
        ...


@dataclass(frozen=True, slots=True)
class ExplainResult:
    """An explanation of one invoice, the facts it was worded from, and the wording used."""

    snapshot: BillingSnapshot
    explanation: Explanation
    facts: Facts
    #: The standard text (shown when the LLM is off, down, or its text was discarded).
    deterministic: str
    wording: Wording

    @property
    def missing(self) -> tuple[ProviderFailure, ...]:
        """Providers that did not answer; the explanation uses what the others returned."""
        return self.snapshot.failures


@dataclass(frozen=True, slots=True)
class RefundSuggestion:
    """What a refund request started from a draft would be prefilled with (approvals work)."""

    payment_id: str
    amount: Money
    reason: str


@dataclass(frozen=True, slots=True)
class DraftResult:
    """A customer-ready reply for the engineer to review, with what it was built from."""

    snapshot: BillingSnapshot
    explanation: Explanation
    facts: Facts
    deterministic: str
    wording: Wording
    notes: str | None
    #: Prefill for a "Request refund" button: the duplicate charge, when there is one.
    refund_suggestion: RefundSuggestion | None = None

    @property
    def missing(self) -> tuple[ProviderFailure, ...]:
        """Providers that did not answer."""
        return self.snapshot.failures


# --------------------------------------------------------------------------- picking


def provider_label(provider: str) -> str:
    """`Stripe`, `Orb`, `Metronome`."""
    return PROVIDER_LABELS.get(provider, provider)


def _missing_text(failures: Sequence[ProviderFailure]) -> str:
    names = ", ".join(f"{provider_label(f.provider)} ({f.reason})" for f in failures)
    return f"{names} did not answer"


def _copy_named(snapshot: BillingSnapshot, invoice_id: str) -> InvoiceMirror | None:
    """The mirror whose Stripe copy `invoice_id` names, by ID or by its printed number."""
    wanted = invoice_id.strip()
    for mirror in snapshot.mirrors:
        copy = mirror.copy
        if copy.id == wanted or (copy.number and copy.number.casefold() == wanted.casefold()):
            return mirror
    return None


def select_invoice(
    snapshot: BillingSnapshot, invoice_id: str | None = None
) -> tuple[Invoice, list[Invoice]]:
    """The latest (or given) final invoice across providers and its provider's older invoices.
    A Stripe copy of another provider's invoice stands for its source.

    Raises `UserError`/`InvalidIdentifier` saying what is missing; when a provider did not answer,
    the message names it.
    """
    if invoice_id is not None:
        mirror = _copy_named(snapshot, invoice_id)
        if mirror is not None:
            invoice_id = mirror.source.id
    failures = snapshot.failures
    if failures and not snapshot.invoices:
        raise UserError(
            f"No invoices could be read for this account: {_missing_text(failures)}. "
            "Try again in a minute."
        )
    try:
        return pick_invoices(snapshot.invoices, invoice_id)
    except UserError as exc:
        if not failures:
            raise
        its = "its" if len(failures) == 1 else "their"
        message = f"{exc.message} {_missing_text(failures)}, so {its} invoices were not searched."
        raise type(exc)(message) from None


def explain_snapshot(snapshot: BillingSnapshot, invoice_id: str | None = None) -> Explanation:
    """Run the findings engine on the snapshot's latest (or given) invoice: the billing
    provider's invoice, never a Stripe copy of it, with the copy's payments counted as its own."""
    current, _ = select_invoice(snapshot, invoice_id)
    # The provider's invoices before and after: the next one bounds the payment window.
    history = [i for i in snapshot.invoices if i.provider == current.provider and i is not current]
    subscriptions = [s for p in snapshot.providers for s in p.subscriptions]
    balances = [b for p in snapshot.providers for b in p.balances]
    aliases = {m.copy.id: m.source.id for m in snapshot.mirrors}
    # Every provider's payments: an Orb- or Metronome-billed account pays through Stripe, and
    # duplicates are found per provider anyway.
    explanation = explain_invoice(
        current,
        history,
        payments=snapshot.payments,
        subscriptions=subscriptions,
        balances=balances,
        invoice_aliases=aliases,
    )
    notes = _mirror_notes(snapshot, explanation, invoice_id)
    return replace(explanation, notes=(*notes, *explanation.notes)) if notes else explanation


def _mirror_notes(
    snapshot: BillingSnapshot, explanation: Explanation, invoice_id: str | None
) -> list[str]:
    mirror = snapshot.mirror_of(explanation.current.id)
    if mirror is None:
        return []
    source, copy = mirror.source, mirror.copy
    label = provider_label(source.provider)
    notes = []
    if invoice_id is not None and _copy_named(snapshot, invoice_id) is mirror:
        notes.append(
            f"{copy.id} is Stripe's copy of {label} invoice {source.id}; it is explained from "
            f"{label}'s invoice, which is what was billed."
        )
    if copy.total != source.total:
        notes.append(
            f"Stripe's copy {copy.id} totals {copy.total.format()}, not "
            f"{source.total.format()}: it was changed in Stripe or Stripe added to it."
        )
    return notes


# --------------------------------------------------------------------------- formatting


def signed(money: Money) -> str:
    """`+$5.00` / `-$5.00`."""
    text = money.format()
    return text if text.startswith("-") else f"+{text}"


def percent(share: Decimal) -> str:
    """A share in [0, 1] as `96.3%` (one decimal, trailing zeros dropped)."""
    value = (share * 100).quantize(Decimal("0.1")).normalize()
    return f"{value:f}%"


def _change_percent(explanation: Explanation) -> str | None:
    previous = explanation.previous
    if previous is None or not comparable(explanation) or previous.total.amount == 0:
        return None
    ratio = explanation.change.amount / abs(previous.total.amount)
    value = (ratio * 100).quantize(Decimal("0.1")).normalize()
    return f"{value:+f}%"


def comparable(explanation: Explanation) -> bool:
    """True when there is a previous invoice in the same currency to compare with."""
    previous = explanation.previous
    return previous is not None and previous.total.currency == explanation.current.total.currency


def without_amount(finding: Finding) -> str:
    """The finding's sentence without its trailing `: +$5.00` (shown separately)."""
    tail = f": {signed(finding.amount)}"
    text = finding.summary
    return text[: -len(tail)] if text.endswith(tail) else text


def invoice_name(invoice: Invoice) -> str:
    """The invoice's number when it has one (what customers see on the PDF), else its ID."""
    return invoice.number or invoice.id


def _date(invoice: Invoice) -> str | None:
    when = invoice.created_at or invoice.period_end
    return format_date(when.date()) if when else None


def _half_minor(currency: str) -> Decimal:
    return Decimal(1).scaleb(-exponent(currency)) / 2


def has_unexplained(explanation: Explanation) -> bool:
    """True when the findings leave at least half a minor unit of the change unexplained."""
    currency = explanation.unexplained.currency
    return abs(explanation.unexplained.amount) >= _half_minor(currency)


def collected_text(mirror: InvoiceMirror) -> str:
    """`Stripe collected it as invoice in_… (its copy of the Orb invoice).`"""
    label = provider_label(mirror.source.provider)
    return (
        f"{label} issued it; Stripe collected it as invoice {mirror.copy.id} (a copy of the "
        f"{label} invoice, matched by {mirror.evidence})."
    )


def _pace(rate: Decimal) -> str:
    """`2× as fast` for a big step, `12% more` for a small one (where "1× as fast" would hide
    it)."""
    if rate >= Decimal("1.5"):
        return f"{rate.quantize(Decimal('0.1')).normalize():f}× as fast"
    more = ((rate - 1) * 100).quantize(Decimal(1))
    return f"{more:f}% more"


def prepaid_text(burn: PrepaidBurn) -> str:
    """How fast the invoice drew on prepaid credit, what is left and when it runs out, as one or
    two sentences with the amounts (grounded: every figure is in the burn itself)."""
    drawn, before = burn.drawn.format(), burn.previous_drawn.format()
    if burn.rate is None:
        text = f"it covered {drawn} of this invoice; the previous invoice drew none."
    elif burn.drawn > burn.previous_drawn:
        text = f"it covered {drawn} of this invoice, up from {before} ({_pace(burn.rate)})."
    else:
        text = f"it covered {drawn} of this invoice, down from {before}."
    remaining = burn.remaining
    if remaining is None:
        return text
    if remaining.amount <= 0:
        return text + " None of it is left."
    text += f" {remaining.format()} is left"
    if burn.runs_out is not None:
        return text + f"; at this rate it runs out around {format_date(burn.runs_out)}."
    if burn.periods_left is not None:
        left = burn.periods_left.quantize(Decimal("0.1")).normalize()
        return text + f", about {left:f} more invoices at this rate."
    return text + "."


# --------------------------------------------------------------------------- facts


def _described(line: InvoiceLine) -> bool:
    """True when the findings engine names this line by its (customer-controlled) description."""
    if line.kind in _UNNAMED_KINDS or not line.description.strip():
        return False
    return not (line.metric and line.kind in _METRIC_NAMED_KINDS)


def _clean(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _LABEL_LIMIT else text[: _LABEL_LIMIT - 1] + "…"


class _Quoter:
    """Replaces line descriptions inside engine sentences with `[line N]` quoted references."""

    def __init__(self, facts: FactsBuilder, invoices: Iterable[Invoice | None]) -> None:
        self._facts = facts
        self._lines: dict[str, InvoiceLine] = {}
        for invoice in invoices:
            if invoice is None:
                continue
            for line in invoice.lines:
                if _described(line):
                    self._lines.setdefault(line.id, line)
        self._tags: dict[str, str] = {}
        self._patterns: dict[str, re.Pattern[str]] = {}

    def _tag(self, label: str, line: InvoiceLine) -> str:
        tag = self._tags.get(label)
        if tag is None:
            tag = self._facts.add_quoted(f"line {len(self._tags) + 1}", line.description)
            self._tags[label] = tag
        return tag

    def _replace(self, text: str, lines: Iterable[InvoiceLine]) -> str:
        # Longest first, so "Pro annual" is quoted whole before "Pro" could match inside it.
        for line in sorted(lines, key=lambda ln: -len(_clean(ln.description))):
            label = _clean(line.description)
            if label not in text:
                continue
            pattern = self._patterns.get(label)
            if pattern is None:
                pattern = re.compile(rf"(?<!\w){re.escape(label)}(?!\w)")
                self._patterns[label] = pattern
            if pattern.search(text):
                # A function replacement: a tag must never be read as a backreference.
                tag = self._tag(label, line)
                text = pattern.sub(lambda _m: tag, text)  # noqa: B023 - used at once
        return text

    def finding(self, finding: Finding) -> str:
        """The finding's sentence with the descriptions of its own lines quoted."""
        lines = [self._lines[ref] for ref in finding.refs if ref in self._lines]
        return self._replace(finding.summary, lines)

    def note(self, note: str) -> str:
        """An engine note with any line description quoted."""
        return self._replace(note, self._lines.values())


def _invoice_fact(invoice: Invoice, what: str) -> str:
    parts = [f"{what} {invoice.id}"]
    if invoice.number and invoice.number != invoice.id:
        parts.append(f"(number {invoice.number})")
    parts.append(f"from {provider_label(invoice.provider)}")
    dated = _date(invoice)
    if dated:
        parts.append(f"dated {dated}")
    if invoice.period_start and invoice.period_end:
        start = format_date(invoice.period_start.date())
        end = format_date(invoice.period_end.date())
        parts.append(f"for the period {start} to {end}")
    parts.append(f"total {invoice.total.format()}, status {invoice.status.value.replace('_', ' ')}")
    return " ".join(parts) + "."


def build_facts(snapshot: BillingSnapshot, explanation: Explanation) -> Facts:
    """The fact sheet of an explanation, most important first (the prompt drops from the end)."""
    facts = FactsBuilder()
    current, previous = explanation.current, explanation.previous
    quoter = _Quoter(facts, (current, previous))
    account = snapshot.account
    who = f"Account {account.account_id}" if account.account_id else "The account"
    if account.display_name:
        name = facts.add_quoted("customer name", account.display_name)
        facts.add_line(f"{who}; customer name {name}.")
    else:
        facts.add_line(f"{who}.")
    facts.add_line(_invoice_fact(current, "Invoice"))
    mirror = snapshot.mirror_of(current.id)
    if mirror is not None:
        facts.add_line(collected_text(mirror) + " Its payments and refunds are on the Stripe copy.")
    for line in _comparison_facts(explanation):
        facts.add_line(line)
    if explanation.prepaid is not None:
        facts.add_line(f"Prepaid credit: {prepaid_text(explanation.prepaid)}")
    for finding in explanation.duplicate_payments:
        facts.add_line(f"Duplicate charge: {finding.summary}{_charge_dates(finding)}.")
    listed = explanation.findings[:MAX_FINDING_FACTS]
    numbered = [
        f"Finding {i} ({KIND_LABELS[f.kind]}): {quoter.finding(f)}"
        for i, f in enumerate(listed, start=1)
    ]
    facts.add_lines(numbered[:TOP_FINDING_FACTS])
    for note in explanation.notes:
        facts.add_line(f"Note: {quoter.note(note)}")
    for failure in snapshot.failures:
        facts.add_line(
            f"{provider_label(failure.provider)} did not answer ({failure.reason}); its invoices "
            "and payments are not included."
        )
    if current.memo:
        facts.add_line(f"Invoice memo: {facts.add_quoted('invoice memo', current.memo)}")
    facts.add_lines(numbered[TOP_FINDING_FACTS:])
    rest = explanation.findings[MAX_FINDING_FACTS:]
    if rest:
        facts.add_line(
            f"{len(rest)} smaller findings are not listed; together {signed(_net(rest))}."
        )
    tail = explanation.findings[DRAFT_REASONS:]
    if tail:
        # The customer draft names the first few findings and sums up the rest.
        facts.add_line(
            f"The {len(tail)} findings after the first {DRAFT_REASONS} together come to "
            f"{signed(_net(tail))}."
        )
    return facts.build()


def _net(findings: Sequence[Finding]) -> Money:
    currency = findings[0].amount.currency
    return Money(sum((f.amount.amount for f in findings), Decimal(0)), currency)


def _comparison_facts(explanation: Explanation) -> list[str]:
    current, previous = explanation.current, explanation.previous
    if previous is None:
        return [
            "There is no earlier comparable invoice, so each finding is a part of this invoice's "
            "total."
        ]
    if not comparable(explanation):
        return [
            _invoice_fact(previous, "Previous invoice"),
            f"The previous invoice is in {previous.total.currency.upper()} and this one in "
            f"{current.total.currency.upper()}, so no change is attributed.",
        ]
    lines = [_invoice_fact(previous, "Previous comparable invoice")]
    change = explanation.change
    if change.is_zero():
        lines.append(f"{current.id} totals the same as {previous.id}.")
    else:
        more = "more" if change.amount > 0 else "less"
        pct = _change_percent(explanation)
        rel = f" ({pct})" if pct else ""
        lines.append(
            f"{current.id} is {abs_money(change).format()} {more} than {previous.id}{rel}."
        )
    if explanation.findings or not change.is_zero():
        text = (
            f"The findings explain {percent(explanation.explained_share)} of the change "
            f"({explanation.explained.format()} of {change.format()})."
        )
        if has_unexplained(explanation):
            text += f" {explanation.unexplained.format()} is not explained by line items."
        lines.append(text)
    return lines


def abs_money(money: Money) -> Money:
    """The absolute value of `money`."""
    return money if money.amount >= 0 else -money


# --------------------------------------------------------------------------- texts


def _reason_label(finding: Finding, facts: Facts) -> str:
    label = KIND_LABELS[finding.kind]
    metric = finding.metric
    if metric:
        # Named only where the fact sheet names it as a whole word too (an ID-like metric must
        # appear verbatim), so the text stays grounded.
        whole = re.compile(rf"(?<![\w-]){re.escape(metric)}(?![\w-])")
        if any(whole.search(line) for line in facts.lines):
            return f"{label} of {metric}"
    return label


def explain_text(explanation: Explanation, facts: Facts) -> str:
    """The engineer's standard summary: the main reasons with amounts, and how much they explain.

    Names no customer text, so it is grounded in `facts` by construction.
    """
    current, previous = explanation.current, explanation.previous
    parts: list[str] = []
    top = explanation.findings[:SUMMARY_REASONS]
    burn = explanation.prepaid
    if burn is not None and comparable(explanation) and explanation.change.is_zero():
        # "Nothing changed" would be wrong: the total hides usage paid from prepaid credit.
        usage = "; ".join(
            f"{_reason_label(f, facts)} {signed(f.amount)}" for f in burn.usage[:SUMMARY_REASONS]
        )
        grew = "grew" if burn.drawn > burn.previous_drawn else "fell"
        parts.append(
            f"The total is unchanged, but usage paid from prepaid credit {grew}"
            + (f": {usage}." if usage else ".")
        )
        parts.append(f"Prepaid credit: {prepaid_text(burn)}")
        return " ".join([*parts, *_duplicate_sentence(explanation)])
    if previous is not None and not comparable(explanation):
        parts.append(
            f"{previous.id} is in {previous.total.currency.upper()} and {current.id} in "
            f"{current.total.currency.upper()}, so the change can't be attributed."
        )
    elif top:
        reasons = "; ".join(f"{_reason_label(f, facts)} {signed(f.amount)}" for f in top)
        if previous is None:
            parts.append(f"No earlier comparable invoice. Largest parts: {reasons}.")
        else:
            noun = "reason" if len(top) == 1 else "reasons"
            parts.append(f"Main {noun}: {reasons}.")
        if len(explanation.findings) > len(top):
            parts.append("The smaller findings are listed below.")
    elif previous is not None and explanation.change.is_zero():
        parts.append(f"Nothing changed between {previous.id} and {current.id}.")
    else:
        parts.append("No line item accounts for the change.")
    if comparable(explanation) and not explanation.change.is_zero():
        parts.append(f"Together they explain {percent(explanation.explained_share)} of the change.")
        if has_unexplained(explanation):
            parts.append(f"{explanation.unexplained.format()} is not explained by line items.")
    if burn is not None:
        parts.append(f"Prepaid credit: {prepaid_text(burn)}")
    parts.extend(_duplicate_sentence(explanation))
    return " ".join(parts)


def _duplicate_sentence(explanation: Explanation) -> list[str]:
    dups = explanation.duplicate_payments
    if not dups:
        return []
    amounts = ", ".join(f.amount.format() for f in dups)
    noun = "charge" if len(dups) == 1 else "charges"
    return [f"Duplicate {noun} found: {amounts}."]


def _customer_reason(finding: Finding, *, comparable_invoice: bool) -> str:
    text = without_amount(finding)
    if not comparable_invoice:
        return f"- {text}: {finding.amount.format()}"
    if finding.amount.amount > 0:
        return f"- {text}: {finding.amount.format()} more"
    return f"- {text}: {(-finding.amount).format()} less"


def _duplicate_dates(finding: Finding) -> list[str]:
    days: list[str] = []
    for key in ("first_at", "duplicate_at"):
        raw = finding.detail.get(key)
        if raw:
            day = format_date(datetime.fromisoformat(raw).date())
            if day not in days:
                days.append(day)
    return days


def _charge_dates(finding: Finding) -> str:
    days = _duplicate_dates(finding)
    return f" (charged on {' and '.join(days)})" if days else ""


def _customer_duplicate(finding: Finding, snapshot: BillingSnapshot) -> str:
    days = _duplicate_dates(finding)
    when = f" on {' and '.join(days)}" if days else ""
    amount = finding.amount.format()
    invoice_id = finding.detail.get("invoice")
    if invoice_id and finding.detail.get("first_payment") and invoice_id in finding.summary:
        invoice = next((i for i in snapshot.invoices if i.id == invoice_id), None)
        name = invoice_name(invoice) if invoice else invoice_id
        if f"{invoice_id} was paid twice" in finding.summary:
            return f"- Invoice {name} was paid twice: two charges of {amount}{when}."
    return f"- Two charges of {amount}{when} that were not for separate invoices."


def _duplicate_paragraph(snapshot: BillingSnapshot, explanation: Explanation) -> str:
    dups = explanation.duplicate_payments
    lines = [_customer_duplicate(f, snapshot) for f in dups]
    noun, it = ("a duplicate charge", "it") if len(dups) == 1 else ("duplicate charges", "them")
    return (
        f"We also see {noun} on your account:\n"
        + "\n".join(lines)
        + f"\nOur billing team is reviewing {it} and will follow up with you directly."
    )


def _no_duplicate_paragraph(explanation: Explanation) -> str:
    return (
        f"We checked the payments around invoice {invoice_name(explanation.current)} and found "
        "no duplicate charge: each payment we see belongs to a separate invoice. If you see two "
        "charges on your statement, please send us their dates and amounts and we'll look into it."
    )


def _opening(explanation: Explanation) -> str:
    current = explanation.current
    dated = _date(current)
    when = f" dated {dated}" if dated else ""
    return f"Thanks for reaching out about your invoice {invoice_name(current)}{when}."


def _change_paragraph(explanation: Explanation, *, listing: bool, subject: str = "It") -> str:
    current, previous = explanation.current, explanation.previous
    total = current.total.format()
    if previous is None:
        made_of = ", so here is what it is made up of:" if listing else "."
        return (
            f"{subject} totals {total}, and it is the first invoice of its kind on your "
            f"account{made_of}"
        )
    if not comparable(explanation):
        return (
            f"{subject} totals {total}. Your previous invoice {invoice_name(previous)} was in "
            f"{previous.total.currency.upper()}, so the two totals can't be compared directly."
        )
    change = explanation.change
    if change.is_zero():
        return (
            f"{subject} totals {total}, the same as your previous invoice {invoice_name(previous)}."
        )
    more = "more" if change.amount > 0 else "less"
    return (
        f"{subject} totals {total}, which is {abs_money(change).format()} {more} than your "
        f"previous invoice {invoice_name(previous)} ({previous.total.format()})."
        + (" Here is what changed:" if listing else "")
    )


def _tips(explanation: Explanation) -> list[str]:
    kinds = {f.kind for f in explanation.findings[:DRAFT_REASONS]}
    tips: list[str] = []
    if FindingKind.USAGE_GROWTH in kinds:
        tips.append(
            "- Usage-based charges follow the volume used, so it's worth checking which of your "
            "workloads drove the higher usage."
        )
    if FindingKind.TAX_CHANGE in kinds:
        tips.append(
            "- If you think the tax on this invoice is wrong (for example, if you are tax-exempt), "
            "send us your tax details."
        )
    if explanation.prepaid is not None and explanation.prepaid.drawn > (
        explanation.prepaid.previous_drawn
    ):
        tips.append(
            "- Your prepaid balance is being used faster than before; we can go over your usage "
            "and your prepaid options with you."
        )
    if FindingKind.CREDIT_DEPLETED in kinds:
        tips.append(
            "- Your prepaid balance covered less of this invoice; we can go over your prepaid "
            "options with you."
        )
    if FindingKind.PRORATION in kinds:
        tips.append(
            "- The prorated amounts cover the part of the period after your plan change; they "
            "are one-off and don't repeat on your regular invoices."
        )
    tips.append(
        "- Compare the line items on the invoice with your own records, and tell us if anything "
        "doesn't match what you expected."
    )
    return tips


def draft_text(
    snapshot: BillingSnapshot, explanation: Explanation, *, notes: str | None = None
) -> str:
    """The standard customer reply: greeting, what changed and why with amounts, duplicate
    charges, what the customer can do, and an offer of next steps. It promises no money back."""
    name = snapshot.account.display_name
    reported_double = bool(notes and _DOUBLE_CHARGE_RE.search(notes))
    duplicates: str | None = None
    if explanation.duplicate_payments:
        duplicates = _duplicate_paragraph(snapshot, explanation)
    elif reported_double:
        duplicates = _no_duplicate_paragraph(explanation)
    blocks: list[str] = [f"Hi {name}," if name else "Hi there,"]
    opening = _opening(explanation)
    subject = "It"
    if duplicates and reported_double:
        # The customer's own concern first; the rest of the invoice after.
        blocks.append(opening + "\n\n" + duplicates.replace("We also see", "We see", 1))
        duplicates, opening = None, ""
        subject = f"Invoice {invoice_name(explanation.current)}"
    is_comparable = comparable(explanation)
    reasons: list[str] = []
    if explanation.previous is None or is_comparable:
        shown = explanation.findings[:DRAFT_REASONS]
        reasons = [_customer_reason(f, comparable_invoice=is_comparable) for f in shown]
        rest = explanation.findings[DRAFT_REASONS:]
        if rest:
            smaller = f"{len(rest)} smaller change{'s' if len(rest) != 1 else ''}"
            reasons.append(f"- {smaller}, together {signed(_net(rest))}")
        if has_unexplained(explanation) and is_comparable:
            reasons.append(
                f"- A further {abs_money(explanation.unexplained).format()} of the difference "
                "isn't broken out on the invoice lines; we're checking that part for you."
            )
    change = _change_paragraph(explanation, listing=bool(reasons), subject=subject)
    blocks.append("\n".join([f"{opening} {change}".strip(), *reasons]))
    if explanation.prepaid is not None:
        blocks.append(_prepaid_paragraph(explanation.prepaid))
    if duplicates:
        blocks.append(duplicates)
    blocks.append("What you can do:\n" + "\n".join(_tips(explanation)))
    blocks.append(
        "If it helps, we're happy to walk through the invoice with you line by line. Just reply "
        "to this message with any questions."
    )
    return "\n\n".join(blocks)


def _prepaid_paragraph(burn: PrepaidBurn) -> str:
    """For the customer: how much of the invoice the prepaid balance covered, and how long the
    rest lasts at this rate."""
    text = f"Your prepaid balance covered {burn.drawn.format()} of this invoice"
    if burn.rate is not None and burn.drawn > burn.previous_drawn:
        text += (
            f", compared with {burn.previous_drawn.format()} on the previous one, because more "
            "usage was drawn from it"
        )
    elif burn.rate is not None:
        text += f", compared with {burn.previous_drawn.format()} on the previous one"
    text += "."
    remaining = burn.remaining
    if remaining is not None and remaining.amount <= 0:
        text += " Your prepaid balance is now used up."
    elif remaining is not None and burn.runs_out is not None:
        text += (
            f" {remaining.format()} of it is left, which at the current rate would last until "
            f"around {format_date(burn.runs_out)}."
        )
    elif remaining is not None:
        text += f" {remaining.format()} of it is left."
    return text


def refund_suggestion(explanation: Explanation) -> RefundSuggestion | None:
    """The duplicate charge a refund request could be prefilled with, if there is one."""
    for finding in explanation.duplicate_payments:
        payment_id = finding.detail.get("duplicate_payment")
        if not payment_id:
            continue
        amount = finding.amount
        refunded = finding.detail.get("refunded")
        if refunded:
            amount = amount - Money(Decimal(refunded), amount.currency)
        if amount.amount > 0:
            return RefundSuggestion(payment_id=payment_id, amount=amount, reason="duplicate charge")
    return None


# --------------------------------------------------------------------------- services


async def explain_account(
    *,
    lookup: SnapshotSource,
    ident: AccountIdentifier,
    invoice_id: str | None,
    llm: LLMClient | None,
    deadline: float = LLM_DEADLINE,
) -> ExplainResult:
    """Why the account's latest (or given) invoice differs from the previous one, worded by the
    LLM when it answers in time with grounded text, else by the standard template."""
    snapshot = await lookup.snapshot(ident)
    explanation = explain_snapshot(snapshot, invoice_id)
    facts = build_facts(snapshot, explanation)
    text = explain_text(explanation, facts)
    wording = await word(
        kind="explain", facts=facts, deterministic=text, llm=llm, deadline=deadline
    )
    return ExplainResult(
        snapshot=snapshot,
        explanation=explanation,
        facts=facts,
        deterministic=text,
        wording=wording,
    )


async def draft_reply(
    *,
    lookup: SnapshotSource,
    ident: AccountIdentifier,
    notes: str | None,
    llm: LLMClient | None,
    deadline: float = LLM_DEADLINE,
) -> DraftResult:
    """A customer-ready reply about the account's latest invoice, for the engineer to review;
    grounded in the findings, with the engineer's notes as context."""
    snapshot = await lookup.snapshot(ident)
    explanation = explain_snapshot(snapshot)
    facts = build_facts(snapshot, explanation)
    text = draft_text(snapshot, explanation, notes=notes)
    wording = await word(
        kind="draft",
        facts=facts,
        deterministic=text,
        llm=llm,
        engineer_notes=notes,
        deadline=deadline,
    )
    return DraftResult(
        snapshot=snapshot,
        explanation=explanation,
        facts=facts,
        deterministic=text,
        wording=wording,
        notes=notes,
        refund_suggestion=refund_suggestion(explanation),
    )
