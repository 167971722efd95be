"""The shell on the built-in sandbox: a readable lookup for every planted story, as a support
engineer would see it in `billing-triage shell` or `ask`."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.app import build_app
from bot.console.shell import LocalSession
from bot.settings import Settings
from integrations.sandbox.providers import sandbox_providers
from tests.support.providers import small_world

STORY_LOOKUPS = {
    "acct_northwind": ["Northwind Traders", "Orb", "API requests"],
    "acct_initech": ["Initech", "Recent invoices"],
    "acct_hooli": ["Hooli", "Recent invoices"],
    "acct_globex": ["Globex", "balance", "Recent payments"],
    "acct_contoso": ["Contoso", "Failed payments", "past due"],
    "acct_fabrikam": ["Fabrikam", "Open disputes", "evidence due"],
    "acct_tyrell": ["Tyrell", "Metronome"],
    "acct_soylent": ["Soylent", "Recent invoices"],
    "acct_cyberdyne": ["Cyberdyne", "Metronome"],
    "acct_wonka": ["Wonka", "Stripe", "Orb", "Metronome"],
}


@pytest.mark.parametrize(("account", "expected"), sorted(STORY_LOOKUPS.items()))
async def test_every_story_reads_well_in_the_shell(account: str, expected: list[str]) -> None:
    """Each planted story's lookup renders as plain text with its telling details, exit 0."""
    world = small_world()
    providers = sandbox_providers(world)
    settings = Settings.load(database_url="sqlite+aiosqlite:///shell.db")
    build = functools.partial(build_app, providers=providers, sandbox=True)
    async with LocalSession(settings, build=build) as session:
        outcome = await session.command(account)
    assert outcome.exit_code == 0, outcome.output
    for text in [account, "sandbox data", *expected]:
        assert text in outcome.output, f"{text!r} missing from:\n{outcome.output}"
    assert '{"type"' not in outcome.output  # rendered, not Block Kit JSON
    assert "Share in channel" in outcome.output


async def test_ambiguous_story_asks_which_account() -> None:
    """The shared-email story answers with both candidate accounts and exit code 1."""
    providers = sandbox_providers(small_world())
    settings = Settings.load(database_url="sqlite+aiosqlite:///shell.db")
    build = functools.partial(build_app, providers=providers, sandbox=True)
    async with LocalSession(settings, build=build) as session:
        outcome = await session.command("billing@aperture.example")
    assert outcome.exit_code == 1
    assert "acct_aperture" in outcome.output and "acct_aperture_labs" in outcome.output


def test_the_readme_quick_start_lookup_runs_as_a_real_process(tmp_path: Path) -> None:
    """`python -m bot ask acct_northwind` with nothing configured prints the lookup, exit 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "STRIPE_", "ORB_"))}
    result = subprocess.run(
        [sys.executable, "-m", "bot", "ask", "acct_northwind"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Northwind Traders" in result.stdout
    assert "Traceback" not in result.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "bot", "ask", "refund", "acct_northwind", "abc", "oops"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert bad.returncode == 1
    assert "not an amount" in bad.stdout
