"""The `/billing` grammar of DESIGN §3: text after the command → a typed command, or a
`UsageError`/`InvalidAmount`/`InvalidIdentifier` that says what was wrong and how to fix it.

Mentions use the same grammar when they start with a subcommand; otherwise `parse_mention` finds
the account identifier and the intent in free text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from bot.domain.identifiers import (
    EMAIL_RE,
    STRIPE_CUSTOMER_RE,
    UUID_RE,
    AccountIdentifier,
    classify_account,
    strip_markup,
)
from bot.domain.money import AmountInput, currency_word, parse_amount_input
from bot.domain.tickets import TICKET_USAGE, looks_like_ticket_ref
from bot.errors import InvalidAmount, InvalidIdentifier, UsageError

PAYMENT_ID_RE = re.compile(r"^(ch|pi|in|py)_[A-Za-z0-9]{1,250}$")
REQUEST_ID_RE = re.compile(r"^(?:REQ|req)[-_][A-Za-z0-9]{4,32}$")
INVOICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{2,127}$")
MAX_REASON = 500
MAX_NOTES = 1500


@dataclass(frozen=True, slots=True)
class HelpCommand:
    """`/billing` or `/billing help`."""

    topic: str | None = None


@dataclass(frozen=True, slots=True)
class StatusCommand:
    """`/billing ACCOUNT` or `/billing status ACCOUNT`."""

    account: AccountIdentifier


@dataclass(frozen=True, slots=True)
class ExplainCommand:
    """`/billing explain ACCOUNT [INVOICE_ID]`."""

    account: AccountIdentifier
    invoice_id: str | None = None


@dataclass(frozen=True, slots=True)
class DraftCommand:
    """`/billing draft ACCOUNT [NOTES…]`."""

    account: AccountIdentifier
    notes: str | None = None


@dataclass(frozen=True, slots=True)
class RefundCommand:
    """`/billing refund ACCOUNT AMOUNT [PAYMENT_ID] REASON…`; missing parts are None."""

    account: AccountIdentifier
    amount: Decimal | None = None
    payment_id: str | None = None
    reason: str | None = None
    #: The amount as typed, with the currency written in it if any (checked against the
    #: payment's currency before anything is stored).
    amount_input: AmountInput | None = None

    @property
    def complete(self) -> bool:
        """True when amount and reason are both given."""
        return self.amount is not None and self.reason is not None


@dataclass(frozen=True, slots=True)
class CreditCommand:
    """`/billing credit ACCOUNT AMOUNT REASON…`; missing parts are None (a modal asks)."""

    account: AccountIdentifier
    amount: Decimal | None = None
    reason: str | None = None
    #: The amount as typed, with the currency written in it if any (checked against the
    #: account's currency before anything is stored).
    amount_input: AmountInput | None = None

    @property
    def complete(self) -> bool:
        """True when amount and reason are both given."""
        return self.amount is not None and self.reason is not None


@dataclass(frozen=True, slots=True)
class AlertsCommand:
    """`/billing alerts [open|all|stats]`: open alerts (the default), every alert, or the
    precision measured from on-call's feedback."""

    scope: Literal["open", "all", "stats"] = "open"


@dataclass(frozen=True, slots=True)
class HistoryCommand:
    """`/billing history ACCOUNT` or `/billing history REQUEST_ID`."""

    account: AccountIdentifier | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class TicketCommand:
    """`/billing ticket TICKET`: the reference as typed (checked against the Zendesk host later,
    before any request)."""

    ref: str


@dataclass(frozen=True, slots=True)
class ReportCommand:
    """`/billing report [7d|30d|90d]`."""

    days: int = 30


#: `/billing report` windows, in days.
REPORT_WINDOWS = {"7d": 7, "30d": 30, "90d": 90}


Command = (
    HelpCommand
    | StatusCommand
    | ExplainCommand
    | DraftCommand
    | RefundCommand
    | CreditCommand
    | AlertsCommand
    | HistoryCommand
    | TicketCommand
    | ReportCommand
)

SUBCOMMANDS = (
    "help",
    "status",
    "explain",
    "draft",
    "refund",
    "credit",
    "alerts",
    "history",
    "ticket",
    "report",
)

USAGE = {
    "status": "`/billing status ACCOUNT` (or just `/billing ACCOUNT`)",
    "explain": "`/billing explain ACCOUNT [INVOICE_ID]`",
    "draft": "`/billing draft ACCOUNT [NOTES…]`",
    "refund": "`/billing refund ACCOUNT AMOUNT [PAYMENT_ID] REASON…`",
    "credit": "`/billing credit ACCOUNT AMOUNT REASON…`",
    "alerts": "`/billing alerts [open|all|stats]`",
    "history": "`/billing history ACCOUNT` or `/billing history REQUEST_ID`",
    "ticket": "`/billing ticket TICKET` (a number, `#123`, or the ticket's link)",
    "report": "`/billing report [7d|30d|90d]`",
}


def _usage(sub: str, problem: str) -> UsageError:
    return UsageError(f"{problem} Usage: {USAGE[sub]}.")


def _account(sub: str, tokens: list[str]) -> AccountIdentifier:
    if not tokens:
        raise _usage(sub, "Which account?")
    return classify_account(tokens[0])


def _reason(tokens: list[str], *, limit: int = MAX_REASON) -> str | None:
    text = " ".join(tokens).strip()
    if not text:
        return None
    if len(text) > limit:
        raise UsageError(f"That text is {len(text)} characters; keep it under {limit}.")
    return text


def parse_command(text: str) -> Command:
    """Parse the text after `/billing` (Slack markup allowed)."""
    plain = strip_markup(text or "")
    tokens = plain.split()
    if not tokens:
        return HelpCommand()
    head = tokens[0].lower()
    rest = tokens[1:]
    if head in ("help", "-h", "--help", "?"):
        topic = rest[0].lower() if rest else None
        return HelpCommand(topic if topic in USAGE else None)
    if head == "status":
        if len(rest) > 1:
            raise _usage("status", "`status` takes one account.")
        return StatusCommand(_account("status", rest))
    if head == "explain":
        account = _account("explain", rest)
        if len(rest) > 2:
            raise _usage("explain", "`explain` takes an account and at most one invoice ID.")
        invoice_id = rest[1] if len(rest) == 2 else None
        if invoice_id is not None and not INVOICE_ID_RE.match(invoice_id):
            raise InvalidIdentifier(f"`{invoice_id}` is not an invoice ID.")
        return ExplainCommand(account, invoice_id)
    if head == "draft":
        account = _account("draft", rest)
        return DraftCommand(account, _reason(rest[1:], limit=MAX_NOTES))
    if head == "refund":
        return _parse_refund(rest)
    if head == "credit":
        account = _account("credit", rest)
        if len(rest) < 2:
            return CreditCommand(account)
        written, tail = _amount(rest[1:])
        return CreditCommand(account, written.value, _reason(tail), written)
    if head == "alerts":
        scope = rest[0].lower() if rest else "open"
        if len(rest) > 1 or scope not in ("open", "all", "stats"):
            raise _usage("alerts", "`alerts` takes `open`, `all` or `stats`.")
        return AlertsCommand(scope)  # type: ignore[arg-type]  # checked just above
    if head == "history":
        if len(rest) != 1:
            raise _usage("history", "Give one account or request ID.")
        if REQUEST_ID_RE.match(rest[0]):
            return HistoryCommand(request_id=rest[0].upper().replace("_", "-"))
        return HistoryCommand(account=classify_account(rest[0]))
    if head == "ticket":
        if len(rest) != 1:
            raise _usage("ticket", "`ticket` takes one ticket.")
        if not looks_like_ticket_ref(rest[0]):
            raise InvalidIdentifier(f"`{rest[0][:80]}` is not a ticket. {TICKET_USAGE}")
        return TicketCommand(rest[0])
    if head == "report":
        return _parse_report(rest)
    if len(tokens) == 1:
        try:
            return StatusCommand(classify_account(tokens[0]))
        except InvalidIdentifier:
            raise UsageError(
                f"`{tokens[0]}` is neither a subcommand nor an account. Try `/billing help`."
            ) from None
    raise UsageError(
        f"Unknown subcommand `{tokens[0]}`. Subcommands: {', '.join(SUBCOMMANDS)}. "
        "Try `/billing help`."
    )


def _parse_report(rest: list[str]) -> ReportCommand:
    if not rest:
        return ReportCommand()
    window = rest[0].lower()
    if len(rest) > 1 or window not in REPORT_WINDOWS:
        raise _usage(
            "report", f"`{' '.join(rest)[:40]}` is not a report window; use `7d`, `30d` or `90d`."
        )
    return ReportCommand(REPORT_WINDOWS[window])


def _parse_refund(rest: list[str]) -> RefundCommand:
    account = _account("refund", rest)
    if len(rest) < 2:
        return RefundCommand(account)
    written, tail = _amount(rest[1:])
    payment_id: str | None = None
    if tail and PAYMENT_ID_RE.match(tail[0]):
        payment_id = tail[0]
        tail = tail[1:]
    elif tail and re.match(r"^(ch|pi|in|py|re|cus)_", tail[0]):
        raise InvalidIdentifier(
            f"`{tail[0]}` is not a payment to refund; give a charge (`ch_…`), payment intent "
            "(`pi_…`) or invoice (`in_…`) ID."
        )
    return RefundCommand(account, written.value, payment_id, _reason(tail), written)


def _amount(tokens: list[str]) -> tuple[AmountInput, list[str]]:
    """The amount at the start of `tokens` with a currency written as a word of its own before
    or after it (`EUR 25`, `25 EUR`), and the tokens after it."""
    if len(tokens) > 1 and currency_word(tokens[0]) is not None:
        try:
            written = parse_amount_input(tokens[1])
        except InvalidAmount:
            written = None
        if written is not None:
            return _with_currency(written, tokens[0], before=True), tokens[2:]
    written = parse_amount_input(tokens[0])
    if len(tokens) > 1 and currency_word(tokens[1]) is not None:
        return _with_currency(written, tokens[1], before=False), tokens[2:]
    return written, tokens[1:]


def _with_currency(written: AmountInput, word: str, *, before: bool) -> AmountInput:
    """`written` with the currency `word` names; two that disagree (`€25 USD`) are refused."""
    named = currency_word(word)
    assert named is not None
    text = f"{word} {written.text}" if before else f"{written.text} {word}"
    currencies = named if written.currencies is None else written.currencies & named
    if not currencies:
        raise InvalidAmount(f"`{text}` names two different currencies; write one.")
    return AmountInput(written.value, currencies, text)


# --- mentions ---------------------------------------------------------------------------

_EXPLAIN_WORDS = re.compile(
    r"\b(why|explain|higher|increase[ds]?|more|jump(ed)?|spike[ds]?|went up|charged|twice"
    r"|double)\b",
    re.IGNORECASE,
)
_SENTENCE_HEADS = ("status", "explain", "draft")
_DRAFT_WORDS = re.compile(r"\b(draft|reply|respond|response|write)\b", re.IGNORECASE)


def _find_identifier(words: list[str]) -> AccountIdentifier | None:
    cleaned = [w.strip(".,;:!?()[]{}\"'`") for w in words]
    for pattern in (EMAIL_RE, STRIPE_CUSTOMER_RE, UUID_RE):
        for word in cleaned:
            if pattern.match(word):
                return classify_account(word)
    for word in cleaned:
        if re.match(r"^[A-Za-z][A-Za-z0-9]*[_\-][A-Za-z0-9_\-]+$", word) and not re.match(
            r"^(ch|pi|in|re|dp|sub|il)_", word
        ):
            try:
                return classify_account(word)
            except InvalidIdentifier:
                continue
    return None


_TICKET_WORD_RE = re.compile(r"^tickets?$", re.IGNORECASE)


def _find_ticket(words: list[str]) -> str | None:
    """A ticket named in a sentence: `ticket 123`, `ticket #123`, or a Zendesk ticket link."""
    cleaned = [w.strip(".,;:!?()[]{}\"'`") for w in words]
    for index, word in enumerate(cleaned):
        if word.startswith(("http://", "https://")) and looks_like_ticket_ref(word):
            return word
        if _TICKET_WORD_RE.match(word) and index + 1 < len(cleaned):
            nxt = cleaned[index + 1]
            if looks_like_ticket_ref(nxt):
                return nxt
    return None


def parse_mention(text: str, *, bot_user_id: str | None = None) -> Command:
    """Parse an `@Billing Triage …` mention: a command when it starts with a subcommand,
    otherwise the account identifier and the intent (explain / draft / status) found in the text."""
    plain = strip_markup(text or "", drop_user=bot_user_id).strip()
    words = plain.split()
    if not words or words[0].lower() in SUBCOMMANDS:
        head = words[0].lower() if words else ""
        later = _find_identifier(words[2:]) if head in _SENTENCE_HEADS else None
        if later is not None and _find_identifier(words[1:2]) is None:
            # "draft a reply for acct_x …": a sentence, the account further on.
            if head == "draft":
                return DraftCommand(later, _reason([plain], limit=MAX_NOTES))
            return ExplainCommand(later) if head == "explain" else StatusCommand(later)
        return parse_command(plain)
    ticket = _find_ticket(words)
    if ticket is not None:
        return TicketCommand(ticket)
    account = _find_identifier(words)
    if account is None:
        if len(words) == 1:
            return parse_command(plain)
        raise UsageError(
            "I couldn't find an account in that. Mention an email, a `cus_…` ID or an account ID, "
            "e.g. `@Billing Triage why was jane@acme.com charged more?`"
        )
    if _DRAFT_WORDS.search(plain):
        return DraftCommand(account, _reason([plain], limit=MAX_NOTES))
    if _EXPLAIN_WORDS.search(plain):
        return ExplainCommand(account)
    return StatusCommand(account)
