"""`billing-triage shell` and `ask`: the real app driven locally, answers rendered as text,
exit codes as DESIGN §1 says."""

from __future__ import annotations

import functools

import pytest

from bot.app import build_app
from bot.console.shell import LocalSession, run_ask, run_shell
from bot.settings import Settings


def _settings() -> Settings:
    return Settings.load(database_url="sqlite+aiosqlite:///shell.db")


def _no_providers() -> functools.partial[object]:
    return functools.partial(build_app, providers={})


async def test_ask_help_prints_usage_and_exits_zero() -> None:
    """`ask help` prints the usage as readable text and exits 0."""
    out: list[str] = []
    code = await run_ask(_settings(), "help", user_id="U0TEST", write=out.append)
    assert code == 0
    text = "\n".join(out)
    assert "Billing Triage" in text
    assert "/billing explain ACCOUNT [INVOICE_ID]" in text
    assert "{" not in text  # rendered, not raw Block Kit JSON


@pytest.mark.parametrize(
    ("text", "code", "fragment"),
    [
        ("refund acct_1 abc reason", 1, "not an amount"),
        ("status jane@", 1, "not a valid email"),
        ("frobnicate a b", 2, "Unknown subcommand"),
        ("explain", 2, "Which account?"),
        ("alerts", 0, "No open alerts"),
    ],
)
async def test_ask_exit_codes(text: str, code: int, fragment: str) -> None:
    """User errors exit 1, usage errors 2, successes 0; the message is printed either way."""
    async with LocalSession(_settings(), build=_no_providers()) as session:
        outcome = await session.command(text)
    assert outcome.exit_code == code
    assert fragment in outcome.output


async def test_shell_switches_user_and_survives_bad_lines() -> None:
    """The interactive shell runs commands, `:as` switches the user, unknown `:x` is explained."""
    lines = iter(["help", ":as U0FINANCE", ":as nobody", ":bogus", "", ":click 1", ":quit"])
    out: list[str] = []
    code = await run_shell(
        _settings(), user_id="U0SUPPORT", read=lambda _p: next(lines), write=out.append
    )
    text = "\n".join(out)
    assert code == 0
    assert "You are U0SUPPORT" in text
    assert "You are now U0FINANCE." in text
    assert "Usage: :as U123" in text
    assert "Unknown shell command :bogus" in text
    assert "No such button" in text


async def test_shell_ends_cleanly_on_end_of_input() -> None:
    """Ctrl-D (EOF) leaves the shell with exit code 0."""

    def eof(_prompt: str) -> str:
        raise EOFError

    assert await run_shell(_settings(), user_id="U0SUPPORT", read=eof, write=lambda _s: None) == 0


async def test_shell_scan_digest_entries_can_be_acknowledged() -> None:
    """`:scan` posts a burst of alerts as one digest whose per-alert menus the shell lists as
    choices; choosing "Acknowledge" for one alert answers privately and updates the digest to
    say who acknowledged it."""
    from bot.domain.anomalies import DetectorConfig
    from bot.services.scan import usage_days_needed
    from integrations.sandbox.providers import sandbox_providers
    from integrations.sandbox.world import build_world

    world = build_world(ordinary_accounts=0, population=False)
    providers = sandbox_providers(
        world, usage_days=usage_days_needed(DetectorConfig()), clock=lambda: world.now
    )
    build = functools.partial(build_app, providers=providers, sandbox=True)
    async with LocalSession(_settings(), build=build) as session:
        scanned = await session.scan()
        assert "new billing alerts" in scanned.output
        assert "[⋯ Acknowledge | Not an anomaly | Snooze 24h]" in scanned.output
        choices = scanned.output.split("(buttons:")[-1]
        number = next(
            part.split("]")[0].strip("[ ")
            for part in choices.split("  ")
            if "Acknowledge · " in part and "acct_globex" in part
        )

        clicked = await session.click(number)

    assert "You acknowledged Duplicate charge on `acct_globex`" in clicked.output
    assert "Acknowledged by @U0LOCALUSER" in clicked.output
