"""The sandbox's Zendesk on a fresh clone: with no Zendesk token and no provider keys, the
shell triages the planted stories' tickets through the real Zendesk client, and a click posts the
draft as an internal note once."""

from __future__ import annotations

from typing import Any

import pytest

from bot.app import deps_of
from bot.console.shell import LocalSession, run_ask
from bot.settings import Settings


def _settings(tmp_path: Any) -> Settings:
    return Settings.load(database_url=f"sqlite+aiosqlite:///{tmp_path}/sandbox.db")


@pytest.mark.parametrize(
    ("ticket", "expected"),
    [
        ("1001", "`acct_northwind` · matched by organization external ID"),
        ("1002", "`acct_globex` · matched by invoice number"),
        ("1003", "`acct_fabrikam` · matched by account field"),
        ("1004", "`acct_contoso` · matched by requester email"),
        ("1005", "No account matches this ticket"),
    ],
)
async def test_ask_ticket_works_on_a_fresh_clone(tmp_path: Any, ticket: str, expected: str) -> None:
    """`billing-triage ask "ticket 1001"` answers from the sandbox with nothing configured."""
    out: list[str] = []
    code = await run_ask(
        _settings(tmp_path), f"ticket {ticket}", user_id="U0TEST", write=out.append
    )
    assert code == 0
    assert expected in out[0]
    assert "4242 4242 4242 4242" not in out[0]


async def test_the_shell_posts_a_sandbox_note(tmp_path: Any) -> None:
    """Clicking "Post as internal note" in the shell adds the draft to the sandbox ticket as a
    private comment, and the message says so; a second click posts nothing more."""
    async with LocalSession(_settings(tmp_path), user_id="U0TEST") as session:
        await session.command("ticket 1002")
        posted = await session.click("post")
        again = await session.click("post")
        assert session.app is not None
        tickets = deps_of(session.app).tickets
        assert tickets is not None
        comments = await tickets.comments(1002)
    assert "posted as an internal note on" in posted.output
    assert again.exit_code == 2 or "Already posted as an internal note" in again.output
    notes = [c for c in comments if not c.public]
    assert len(notes) == 1 and "— Billing Triage draft" in notes[0].body
