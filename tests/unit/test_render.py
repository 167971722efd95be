"""bot.console.render: Block Kit and Slack markup shown as terminal text."""

from __future__ import annotations

from typing import Any

import pytest

from bot.console.render import (
    button_refs,
    buttons,
    describe_call,
    mrkdwn_to_text,
    render_call,
    render_message,
    render_view,
)
from integrations.sandbox.slack import SlackCall


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def _plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text}


def _button(text: str, action_id: str, value: str | None = None, **extra: Any) -> dict[str, Any]:
    el: dict[str, Any] = {"type": "button", "text": _plain(text), "action_id": action_id}
    if value is not None:
        el["value"] = value
    return {**el, **extra}


APPROVAL = [
    {"type": "header", "text": _plain("Refund request R-12")},
    {"type": "section", "text": _mrkdwn("*Acme Corp* wants *$25.00* back")},
    {
        "type": "section",
        "fields": [
            _mrkdwn("*Amount*\n$25.00"),
            _mrkdwn("*Requester*\n<@U0SUPPORT>"),
            _mrkdwn("*Payment*\nch_123"),
        ],
    },
    {"type": "divider"},
    {"type": "context", "elements": [_mrkdwn("Requested <!date^1700000000^{date}|Nov 14>")]},
    {
        "type": "actions",
        "block_id": "approval",
        "elements": [
            _button("Approve", "approve", "R-12", style="primary"),
            _button("Deny", "deny", "R-12", style="danger"),
        ],
    },
]


@pytest.mark.parametrize(
    ("markup", "shown"),
    [
        (
            "see <https://dashboard.stripe.com/x|Stripe>",
            "see Stripe (https://dashboard.stripe.com/x)",
        ),
        ("<https://example.com>", "https://example.com"),
        ("<https://example.com|https://example.com>", "https://example.com"),
        ("asked by <@U123>", "asked by @U123"),
        ("asked by <@U123|jane>", "asked by @jane"),
        ("in <#C1|finance>", "in #finance"),
        ("in <#C1>", "in #C1"),
        ("<!subteam^S1|@finance-approvers> please", "@finance-approvers please"),
        ("<!subteam^S1> please", "@S1 please"),
        ("<!here> look", "@here look"),
        ("due <!date^1700000000^{date_short}|Nov 14, 2023>", "due Nov 14, 2023"),
        ("mail <mailto:jane@acme.com|jane@acme.com>", "mail jane@acme.com"),
        ("a &lt; b &gt; c &amp; d", "a < b > c & d"),
        ("&amp;lt;not a tag&amp;gt;", "&lt;not a tag&gt;"),
        ("&lt;@U123&gt;", "<@U123>"),
        ("*bold* stays", "*bold* stays"),
    ],
)
def test_mrkdwn_markup_becomes_readable(markup: str, shown: str) -> None:
    """Links, mentions, dates and escapes read as a person would say them."""
    assert mrkdwn_to_text(markup) == shown


def test_bold_is_rendered_only_with_color() -> None:
    """`*bold*` turns into a bold escape only when colour is asked for."""
    assert mrkdwn_to_text("*Total* is due") == "*Total* is due"
    assert mrkdwn_to_text("*Total* is due", color=True) == "\x1b[1mTotal\x1b[0m is due"


def test_approval_message_renders_every_block_type() -> None:
    """Header, section text, fields, divider, context and buttons all show, in order."""
    assert render_message(text="fallback", blocks=APPROVAL) == "\n".join(
        [
            "Refund request R-12",
            "===================",
            "*Acme Corp* wants *$25.00* back",
            "Amount: $25.00     Requester: @U0SUPPORT",
            "Payment: ch_123",
            "-" * 40,
            "  Requested Nov 14",
            "[Approve] [Deny]",
        ]
    )


def test_plain_output_has_no_escape_codes_but_color_does() -> None:
    """No ANSI codes unless asked; with colour the header is bold-underlined and context dim."""
    plain = render_message(text=None, blocks=APPROVAL)
    coloured = render_message(text=None, blocks=APPROVAL, color=True)
    assert "\x1b" not in plain
    assert coloured.startswith("\x1b[1;4mRefund request R-12\x1b[0m\n")
    assert "\x1b[2mRequested Nov 14\x1b[0m" in coloured


def test_text_only_message_shows_its_text() -> None:
    """A message without blocks shows its text, markup converted."""
    assert render_message(text="Hi <@U1>, see <#C9|finance>", blocks=None) == "Hi @U1, see #finance"
    assert render_message(text=None, blocks=None) == ""


def test_fields_with_a_single_line_show_as_is() -> None:
    """A field without a label line is shown as its text."""
    blocks = [{"type": "section", "fields": [_plain("one"), _plain("two"), _plain("three")]}]
    assert render_message(text=None, blocks=blocks) == "one      two\nthree"


def test_section_accessory_button_and_selects_show_as_brackets() -> None:
    """Accessory buttons and select menus appear as clickable-looking labels."""
    blocks = [
        {
            "type": "section",
            "text": _mrkdwn("Share this?"),
            "accessory": _button("Share in channel", "share", "r1"),
        },
        {
            "type": "actions",
            "elements": [
                {
                    "type": "static_select",
                    "action_id": "pick",
                    "placeholder": _plain("Choose a payment"),
                    "options": [{"text": _plain("ch_1"), "value": "ch_1"}],
                },
                {"type": "overflow", "action_id": "more", "options": []},
            ],
        },
    ]
    assert render_message(text=None, blocks=blocks) == (
        "Share this?\n[Share in channel]\n[Choose a payment ▾] […]"
    )


def test_other_blocks_render_sensibly() -> None:
    """Images, markdown, rich text and unknown blocks still show something readable."""
    blocks = [
        {"type": "image", "image_url": "https://example.com/a.png", "alt_text": "usage chart"},
        {"type": "markdown", "text": "**Total** $5"},
        {
            "type": "rich_text",
            "elements": [
                {
                    "type": "rich_text_section",
                    "elements": [
                        {"type": "text", "text": "ping "},
                        {"type": "user", "user_id": "U1"},
                        {"type": "link", "url": "https://x.test", "text": "doc"},
                    ],
                }
            ],
        },
        {"type": "video"},
    ]
    assert render_message(text=None, blocks=blocks) == (
        "[image: usage chart]\n**Total** $5\nping @U1doc (https://x.test)\n[video block]"
    )


def test_modal_renders_title_inputs_and_footer() -> None:
    """A modal shows its title, each input as `label: ____`, and its Cancel/Submit buttons."""
    view = {
        "type": "modal",
        "title": _plain("Deny request"),
        "submit": _plain("Deny"),
        "close": _plain("Cancel"),
        "blocks": [
            {"type": "section", "text": _mrkdwn("Refund *R-12* for $25.00")},
            {
                "type": "input",
                "block_id": "reason",
                "label": _plain("Reason"),
                "element": {"type": "plain_text_input", "action_id": "reason"},
                "hint": _plain("The requester sees this"),
            },
            {
                "type": "input",
                "label": _plain("Note"),
                "optional": True,
                "element": {
                    "type": "plain_text_input",
                    "action_id": "note",
                    "initial_value": "dup",
                },
            },
        ],
    }
    assert render_view(view) == "\n".join(
        [
            "Deny request",
            "============",
            "Refund *R-12* for $25.00",
            "Reason: ____",
            "  The requester sees this",
            "Note (optional): dup",
            "[Cancel] [Deny]",
        ]
    )


def test_buttons_lists_what_the_shell_can_click() -> None:
    """Every button is listed in display order with its action_id and value (and block_id)."""
    blocks = [
        {"type": "section", "text": _mrkdwn("x"), "accessory": _button("Share", "share")},
        *APPROVAL,
    ]
    assert buttons(blocks) == [
        ("Share", "share", None),
        ("Approve", "approve", "R-12"),
        ("Deny", "deny", "R-12"),
    ]
    assert [b.block_id for b in button_refs(blocks)] == [None, "approval", "approval"]
    assert buttons(None) == []


def _call(method: str, args: dict[str, Any], ok: bool = True, **response: Any) -> SlackCall:
    return SlackCall(method=method, args=args, response={"ok": ok, **response}, ok=ok)


@pytest.mark.parametrize(
    ("call", "heading"),
    [
        (_call("chat.postMessage", {"channel": "C123", "text": "x"}), "posted in C123"),
        (
            _call("chat.postMessage", {"channel": "C123", "thread_ts": "1700000000.000100"}),
            "posted in C123 (thread 1700000000.000100)",
        ),
        (_call("chat.postMessage", {"channel": "U123"}, channel="DU123"), "DM to U123"),
        (
            _call("chat.postEphemeral", {"channel": "C1", "user": "U9"}),
            "ephemeral reply to U9 in C1",
        ),
        (_call("chat.update", {"channel": "C1", "ts": "1700.1"}), "updated message 1700.1"),
        (_call("chat.delete", {"channel": "C1", "ts": "1700.1"}), "deleted message 1700.1"),
        (_call("response_url", {"key": "k", "text": "hi"}), "ephemeral reply"),
        (
            _call("response_url", {"key": "k", "response_type": "in_channel"}),
            "posted in channel",
        ),
        (
            _call("response_url", {"key": "k", "replace_original": True}),
            "replaced the original message",
        ),
        (
            _call("response_url", {"key": "k", "delete_original": True}),
            "deleted the original message",
        ),
        (
            _call("views.open", {"view": {"title": _plain("Deny request")}}),
            "opened modal 'Deny request'",
        ),
        (
            _call("chat.postMessage", {"channel": "C1"}, ok=False, error="invalid_blocks"),
            "chat.postMessage failed: invalid_blocks",
        ),
        (_call("auth.test", {}), None),
        (_call("usergroups.users.list", {"usergroup": "S1"}), None),
    ],
)
def test_describe_call_gives_one_line_headings(call: SlackCall, heading: str | None) -> None:
    """Each call the shell prints gets a short heading; look-ups get none."""
    assert describe_call(call) == heading


def test_render_call_combines_heading_and_body() -> None:
    """A posted message renders as its heading then its content; look-ups render as nothing."""
    posted = _call("chat.postMessage", {"channel": "C1", "text": "Hi <@U1>"})
    assert render_call(posted) == "── posted in C1\nHi @U1"
    opened = _call("views.open", {"view": {"type": "modal", "title": _plain("T"), "blocks": []}})
    assert render_call(opened) == "── opened modal 'T'\nT\n===\n[Cancel]"
    assert render_call(_call("auth.test", {})) is None
