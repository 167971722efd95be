"""Every user-visible string and Block Kit builder of the Slack edge, in one place.

Builders enforce Slack's limits themselves (50 blocks, 3000-char section text, 2000-char fields,
150-char headers, 75-char button text) so a large account never produces `invalid_blocks`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

Block = dict[str, Any]

MAX_BLOCKS = 50
MAX_SECTION = 3000
MAX_FIELD = 2000
MAX_HEADER = 150
MAX_BUTTON = 75
SHARE_ACTION = "share_in_channel"


@dataclass(frozen=True)
class Reply:
    """A message to show: fallback text plus blocks; `shareable` adds "Share in channel"."""

    text: str
    blocks: list[Block] = field(default_factory=list)
    shareable: bool = False
    share_value: str | None = None

    def render_blocks(self, *, with_share: bool = True) -> list[Block]:
        """Blocks with the share button appended when wanted, within the block limit."""
        blocks = list(self.blocks) or [section(self.text)]
        if with_share and self.shareable and self.share_value:
            blocks = blocks[: MAX_BLOCKS - 1]
            blocks.append(share_actions(self.share_value))
        return blocks[:MAX_BLOCKS]


def escape(text: str) -> str:
    """Escape `&`, `<`, `>` in customer-controlled text before it goes into mrkdwn."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    """Shorten to `limit` characters with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def section(text: str, *, fields: Sequence[str] = ()) -> Block:
    """A mrkdwn section, clipped to Slack's limits."""
    block: Block = {"type": "section", "text": {"type": "mrkdwn", "text": clip(text, MAX_SECTION)}}
    if fields:
        block["fields"] = [{"type": "mrkdwn", "text": clip(f, MAX_FIELD)} for f in fields[:10]]
    return block


def header(text: str) -> Block:
    """A plain-text header."""
    return {"type": "header", "text": {"type": "plain_text", "text": clip(text, MAX_HEADER)}}


def context(*texts: str) -> Block:
    """A context line (≤ 10 elements)."""
    return {
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": clip(t, MAX_SECTION)} for t in texts[:10]],
    }


def divider() -> Block:
    """A divider."""
    return {"type": "divider"}


def button(text: str, action_id: str, value: str, *, style: str | None = None) -> Block:
    """A button element."""
    element: Block = {
        "type": "button",
        "text": {"type": "plain_text", "text": clip(text, MAX_BUTTON)},
        "action_id": action_id,
        "value": value[:2000],
    }
    if style:
        element["style"] = style
    return element


def share_actions(value: str) -> Block:
    """The "Share in channel" button; `value` is the command text to re-run and post."""
    return {
        "type": "actions",
        "block_id": "share",
        "elements": [button("Share in channel", SHARE_ACTION, value)],
    }


# --- help and simple answers ----------------------------------------------------------------


def help_reply(command: str, topic: str | None = None) -> Reply:
    """Usage with examples."""
    c = command
    lines = [
        f"*`{c} ACCOUNT`* or *`{c} status ACCOUNT`* — the account's billing state in Stripe, "
        "Orb and Metronome, side by side.",
        f"*`{c} explain ACCOUNT [INVOICE_ID]`* — why the latest (or given) invoice differs "
        "from the previous one.",
        f"*`{c} draft ACCOUNT [NOTES…]`* — a customer-ready reply, shown only to you.",
        f"*`{c} refund ACCOUNT AMOUNT [PAYMENT_ID] REASON…`* — ask finance to approve a refund.",
        f"*`{c} credit ACCOUNT AMOUNT REASON…`* — ask finance to approve a credit.",
        f"*`{c} alerts [open|all|stats]`* — billing anomaly alerts (open by default), or "
        "their measured precision.",
        f"*`{c} history ACCOUNT`* or *`{c} history REQUEST_ID`* — refund and credit requests "
        "and their audit trail.",
        f"*`{c} ticket TICKET`* — a Zendesk ticket triaged: its account, billing state, the "
        "explanation and a draft you can post as an internal note.",
        f"*`{c} report [7d|30d|90d]`* — the recurring-issue report: causes ranked, repeats, "
        "refunds and alerts.",
    ]
    examples = [
        f"`{c} jane@acme.com`",
        f"`{c} status cus_NffrFeUfNV2Hib`",
        f"`{c} explain acct_northwind`",
        f"`{c} draft acct_northwind customer says they were charged twice`",
        f"`{c} refund jane@acme.com $25 ch_3MmlLrLkdIwHu7ix0snN0B15 duplicate charge`",
        f"`{c} ticket 1001`",
        f"`{c} report 7d`",
    ]
    account_kinds = (
        "ACCOUNT is an email, a Stripe customer ID (`cus_…`), our account ID, or an Orb or "
        "Metronome customer ID. AMOUNT is `25`, `25.00`, `$25` or `$1,250.50`."
    )
    blocks = [
        header("Billing Triage"),
        section("\n".join(lines)),
        section("*Examples*\n" + "\n".join(examples)),
        context(account_kinds),
    ]
    subs = "status | explain | draft | refund | credit | alerts | history | ticket | report"
    text = f"Billing Triage: {c} ACCOUNT | {subs}"
    return Reply(text=text, blocks=blocks)


def coming_soon_reply(what: str, summary: str) -> Reply:
    """A subcommand whose feature has not landed yet; the arguments were valid."""
    text = f"`{what}` is coming soon. Your arguments look right: {summary}."
    return Reply(text=text, blocks=[section(f":construction: {text}")])


def error_reply(message: str) -> Reply:
    """A known error, said plainly."""
    return Reply(text=message, blocks=[section(f":warning: {message}")])


def unknown_error_reply(ref: str) -> Reply:
    """An unexpected error: only the reference, which is in the log."""
    text = (
        f"Something went wrong (ref {ref}). Nothing was changed. "
        "Try again, or give this reference to whoever runs Billing Triage."
    )
    return Reply(text=text, blocks=[section(f":x: {text}")])


def progress_reply(text: str) -> Reply:
    """A short "working on it" message, replaced by the answer."""
    return Reply(text=text, blocks=[context(f":hourglass_flowing_sand: {text}")])


def command_value(command_text: str) -> str:
    """A button value carrying the command to re-run (Share, Regenerate); JSON keeps it
    unambiguous and under Slack's 2,000-character limit."""
    return json.dumps({"cmd": command_text[:1800]})


def command_of(action: dict[str, Any]) -> str:
    """The command text a `command_value` button carries ('' when unreadable)."""
    try:
        return str(json.loads(action.get("value") or "{}").get("cmd", ""))
    except (ValueError, AttributeError):
        return ""
