"""The /billing grammar and mention parsing: what users type, including Slack markup."""

from __future__ import annotations

from decimal import Decimal

import pytest

from bot.domain.commands import (
    AlertsCommand,
    CreditCommand,
    DraftCommand,
    ExplainCommand,
    HelpCommand,
    HistoryCommand,
    RefundCommand,
    StatusCommand,
    parse_command,
    parse_mention,
)
from bot.domain.identifiers import IdentifierKind, classify_account, strip_markup
from bot.domain.money import parse_amount_input
from bot.errors import InvalidAmount, InvalidIdentifier, UsageError


@pytest.mark.parametrize("text", ["", "   ", "help", "HELP", "help refund"])
def test_help_and_empty_text_give_usage(text: str) -> None:
    """Empty text and `help` ask for usage."""
    assert isinstance(parse_command(text), HelpCommand)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("jane@acme.com", IdentifierKind.EMAIL),
        ("<mailto:jane@acme.com|jane@acme.com>", IdentifierKind.EMAIL),
        ("cus_NffrFeUfNV2Hib", IdentifierKind.STRIPE_CUSTOMER),
        ("acct_northwind", IdentifierKind.ACCOUNT_ID),
        ("4b3a1c2d-0e9f-4a8b-9c7d-6e5f4a3b2c1d", IdentifierKind.METRONOME_CUSTOMER),
        ("XimGiw3pnsgusvc3", IdentifierKind.ACCOUNT_ID),
    ],
)
def test_a_bare_account_is_a_status_lookup(text: str, kind: IdentifierKind) -> None:
    """`/billing ACCOUNT` looks the account up, whatever kind of identifier it is."""
    cmd = parse_command(text)
    assert isinstance(cmd, StatusCommand)
    assert cmd.account.primary is kind


def test_opaque_ids_may_be_ours_or_orbs() -> None:
    """An opaque ID is tried as our account ID first, then as an Orb customer ID."""
    assert classify_account("XimGiw3pnsgusvc3").kinds == (
        IdentifierKind.ACCOUNT_ID,
        IdentifierKind.ORB_CUSTOMER,
    )


def test_each_subcommand_parses_its_arguments() -> None:
    """Every subcommand of DESIGN §3 yields its typed command."""
    assert isinstance(parse_command("status acct_1"), StatusCommand)
    explain = parse_command("explain acct_1 in_1MtHbELkdIwHu7ixl4OzzPMv")
    assert isinstance(explain, ExplainCommand)
    assert explain.invoice_id == "in_1MtHbELkdIwHu7ixl4OzzPMv"
    draft = parse_command("draft acct_1 customer says they were charged twice")
    assert isinstance(draft, DraftCommand)
    assert draft.notes == "customer says they were charged twice"
    refund = parse_command("refund jane@acme.com $1,250.50 ch_3Mml duplicate charge")
    assert refund == RefundCommand(
        classify_account("jane@acme.com"),
        Decimal("1250.50"),
        "ch_3Mml",
        "duplicate charge",
        parse_amount_input("$1,250.50"),
    )
    no_payment = parse_command("refund acct_1 25 goodwill")
    assert isinstance(no_payment, RefundCommand)
    assert (no_payment.payment_id, no_payment.reason) == (None, "goodwill")
    credit = parse_command("credit acct_1 25.00 outage on Oct 3")
    assert isinstance(credit, CreditCommand)
    assert credit.amount == Decimal("25.00")
    assert credit.reason == "outage on Oct 3"
    assert isinstance(parse_command("alerts"), AlertsCommand)
    assert parse_command("history REQ-7F3K9Q") == HistoryCommand(request_id="REQ-7F3K9Q")
    by_account = parse_command("history acct_1")
    assert isinstance(by_account, HistoryCommand)
    assert by_account.account is not None


def test_missing_refund_parts_are_left_for_a_modal() -> None:
    """`refund ACCOUNT` alone is not an error: the missing amount and reason are asked later."""
    cmd = parse_command("refund acct_1")
    assert isinstance(cmd, RefundCommand)
    assert not cmd.complete
    with_amount = parse_command("refund acct_1 25")
    assert isinstance(with_amount, RefundCommand)
    assert with_amount.reason is None


@pytest.mark.parametrize(
    ("text", "error", "fragment"),
    [
        ("status", UsageError, "Which account?"),
        ("status a b", UsageError, "one account"),
        ("explain", UsageError, "Which account?"),
        ("explain acct_1 in_1 extra", UsageError, "at most one invoice"),
        ("explain acct_1 in_1!!", InvalidIdentifier, "not an invoice ID"),
        ("draft", UsageError, "Which account?"),
        ("refund", UsageError, "Which account?"),
        ("refund acct_1 abc reason", InvalidAmount, "not an amount"),
        ("refund acct_1 -5 reason", InvalidAmount, "negative"),
        ("refund acct_1 0 reason", InvalidAmount, "more than zero"),
        ("refund acct_1 1e3 reason", InvalidAmount, "not an amount"),
        ("refund acct_1 5 re_123 reason", InvalidIdentifier, "not a payment"),
        ("credit", UsageError, "Which account?"),
        ("credit acct_1 lots because", InvalidAmount, "not an amount"),
        ("alerts now", UsageError, "takes `open`, `all` or `stats`"),
        ("history", UsageError, "one account or request ID"),
        ("frobnicate acct_1", UsageError, "Unknown subcommand"),
        ("status jane@", InvalidIdentifier, "not a valid email"),
        ("status ch_3MmlLrLkdIwHu7ix", InvalidIdentifier, "charge ID, not an account"),
        ("status in_1MtHb", InvalidIdentifier, "invoice ID, not an account"),
        ("status a/b", InvalidIdentifier, "not an account identifier"),
        ("status " + "x" * 300, InvalidIdentifier, "too long"),
        ("draft acct_1 " + "n" * 1600, UsageError, "keep it under"),
        ("💸", UsageError, "neither a subcommand nor an account"),
    ],
)
def test_argument_errors_say_what_was_wrong(
    text: str, error: type[Exception], fragment: str
) -> None:
    """Bad arguments for each subcommand raise the right error with a fixable message."""
    with pytest.raises(error) as info:
        parse_command(text)
    assert fragment in str(info.value)


def test_slack_markup_is_unwrapped_once() -> None:
    """Links, emails and escapes arrive in Slack markup; targets are used, labels dropped."""
    assert strip_markup("<mailto:a@b.co|a@b.co> &amp; &lt;x&gt;") == "a@b.co & <x>"
    assert strip_markup("<https://x.example/a|label>") == "https://x.example/a"
    assert strip_markup("<!here> <#C1|general> <!subteam^S1|@fin>") == "  "
    assert strip_markup("&amp;lt;") == "&lt;"  # unescaped once, not twice


def test_mentions_find_the_account_and_intent() -> None:
    """A mention names the account anywhere in a sentence; the words pick the intent."""
    why = parse_mention(
        "<@UBOT> why was <mailto:jane@acme.com|jane@acme.com> charged twice?", bot_user_id="UBOT"
    )
    assert isinstance(why, ExplainCommand)
    assert why.account.value == "jane@acme.com"
    draft = parse_mention("<@UBOT> draft a reply for acct_northwind please", bot_user_id="UBOT")
    assert isinstance(draft, DraftCommand)
    status = parse_mention("<@UBOT> cus_NffrFeUfNV2Hib", bot_user_id="UBOT")
    assert isinstance(status, StatusCommand)
    explicit = parse_mention("<@UBOT> refund acct_1 25 goodwill", bot_user_id="UBOT")
    assert isinstance(explicit, RefundCommand)
    assert isinstance(parse_mention("<@UBOT>", bot_user_id="UBOT"), HelpCommand)


def test_a_mention_sentence_starting_with_a_subcommand_finds_the_account_later() -> None:
    """ "draft a reply for acct_x" drafts for acct_x, not for an account called "a"."""
    draft = parse_mention("<@UBOT> draft a reply for acct_northwind please", bot_user_id="UBOT")
    assert isinstance(draft, DraftCommand)
    assert draft.account.value == "acct_northwind"
    explain = parse_mention("<@UBOT> explain the bill of jane@acme.com", bot_user_id="UBOT")
    assert isinstance(explain, ExplainCommand)
    assert explain.account.value == "jane@acme.com"
    direct = parse_mention("<@UBOT> draft acct_1 customer is upset", bot_user_id="UBOT")
    assert isinstance(direct, DraftCommand)
    assert direct.account.value == "acct_1"


def test_a_mention_without_an_account_says_how_to_ask() -> None:
    """A question with no identifier gets an example of how to ask."""
    with pytest.raises(UsageError, match="couldn't find an account"):
        parse_mention("<@UBOT> why is everything so expensive?", bot_user_id="UBOT")
