"""Ticket references, identifiers written in tickets, the customer's latest comment, and the
`ticket` / `report` grammar (commands and mentions)."""

from __future__ import annotations

import pytest

from bot.domain.commands import ReportCommand, TicketCommand, parse_command, parse_mention
from bot.domain.identifiers import IdentifierKind
from bot.domain.tickets import (
    TicketComment,
    identifiers_in,
    invoice_named,
    latest_public_comment,
)
from bot.errors import InvalidIdentifier, UsageError


def test_identifiers_in_ticket_text_are_found_in_order() -> None:
    """`cus_…`, `in_…`, `ch_…` and invoice numbers are found, each once, in order."""
    found = identifiers_in(
        [
            "Invoice B02734D1-0017 and in_1zpXGiSb7xQ01zgk were charged (ch_168yQHSb7xQ01zgk)",
            "customer cus_k8GNvhcmNZEUAA; again in_1zpXGiSb7xQ01zgk",
        ]
    )
    assert [(i.value, i.primary) for i in found] == [
        ("B02734D1-0017", IdentifierKind.INVOICE_NUMBER),
        ("in_1zpXGiSb7xQ01zgk", IdentifierKind.STRIPE_INVOICE),
        ("ch_168yQHSb7xQ01zgk", IdentifierKind.STRIPE_CHARGE),
        ("cus_k8GNvhcmNZEUAA", IdentifierKind.STRIPE_CUSTOMER),
    ]
    assert invoice_named(found) == "B02734D1-0017"


def test_text_without_identifiers_finds_none() -> None:
    """Prose, prices, dates and emails are not account identifiers."""
    assert identifiers_in(["We paid $1,234.50 on 2026-11-03, mail jane@acme.example"]) == []


def test_the_customers_latest_public_comment_is_theirs() -> None:
    """The requester's latest public comment; internal notes and agents' replies are skipped."""
    comments = [
        TicketComment(1, 10, "first question", True),
        TicketComment(2, 99, "agent reply", True),
        TicketComment(3, 99, "internal", False),
        TicketComment(4, 10, "follow-up", True),
        TicketComment(5, 99, "agent again", True),
    ]
    latest = latest_public_comment(comments, requester_id=10)
    assert latest is not None and latest.body == "follow-up"
    assert latest_public_comment([TicketComment(3, 99, "x", False)], requester_id=10) is None


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("ticket 1001", "1001"),
        ("ticket #1001", "#1001"),
        (
            "ticket <https://acme.zendesk.com/agent/tickets/7>",
            "https://acme.zendesk.com/agent/tickets/7",
        ),
    ],
)
def test_ticket_commands_parse(text: str, ref: str) -> None:
    """`ticket TICKET` takes a number, `#N`, or a ticket link (Slack markup removed)."""
    assert parse_command(text) == TicketCommand(ref)


@pytest.mark.parametrize(
    "text",
    [
        "ticket",
        "ticket abc",
        "ticket 1 2",
        "ticket 0",
        "ticket https://acme.zendesk.com/agent/users/1",
    ],
)
def test_bad_ticket_commands_are_refused(text: str) -> None:
    """Anything that is not a ticket reference is refused before any request."""
    with pytest.raises((UsageError, InvalidIdentifier)):
        parse_command(text)


def test_report_windows_parse() -> None:
    """`report` is 30 days; `7d`, `30d`, `90d` are the windows; others are refused."""
    assert parse_command("report") == ReportCommand(30)
    assert parse_command("report 90D") == ReportCommand(90)
    for bad in ("report 5d", "report abc", "report 7d 30d"):
        with pytest.raises(UsageError, match="7d"):
            parse_command(bad)


def test_mentions_name_tickets() -> None:
    """`@Billing Triage ticket 1001`, or a sentence naming a ticket, triages it."""
    assert parse_mention("<@UBOT> ticket 1001", bot_user_id="UBOT") == TicketCommand("1001")
    assert parse_mention("<@UBOT> could you look at ticket #1002?", bot_user_id="UBOT") == (
        TicketCommand("#1002")
    )
    assert parse_mention(
        "<@UBOT> see <https://acme.zendesk.com/agent/tickets/9>", bot_user_id="UBOT"
    ) == TicketCommand("https://acme.zendesk.com/agent/tickets/9")
