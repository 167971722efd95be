"""Settings: every DESIGN §2 variable validated at start, one clear line per problem, secrets
never printed."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from bot.errors import ConfigError
from bot.settings import Settings


def test_defaults_match_the_contract() -> None:
    """With nothing set: port 3000, /billing, SQLite, sandbox on, $1000 dual approval, 48 h TTL."""
    s = Settings.load()
    assert s.port == 3000
    assert s.billing_command == "/billing"
    assert s.database_url == "sqlite+aiosqlite:///billing-triage.db"
    assert s.use_sandbox
    assert s.dual_approval_above == Decimal("1000")
    assert s.request_ttl_hours == 48
    assert s.scan_interval_minutes == 15
    assert s.openai_model == "gpt-4o-mini"
    assert s.approvers == frozenset()


def test_every_bad_variable_is_reported_on_its_own_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several mistakes at once give one line each, naming the variable."""
    monkeypatch.setenv("FINANCE_CHANNEL", "#finance")
    monkeypatch.setenv("DATABASE_URL", "mysql://x")
    monkeypatch.setenv("DUAL_APPROVAL_ABOVE", "-5")
    monkeypatch.setenv("FINANCE_APPROVERS", "U123ABC,bob")
    monkeypatch.setenv("REQUEST_TTL_HOURS", "0")
    with pytest.raises(ConfigError) as info:
        Settings.load()
    lines = info.value.message.splitlines()
    assert len(lines) == 5
    text = info.value.message
    assert "FINANCE_CHANNEL: must be a Slack channel ID" in text
    assert "DATABASE_URL: must be sqlite+aiosqlite" in text
    assert "DUAL_APPROVAL_ABOVE: must be a non-negative amount" in text
    assert "FINANCE_APPROVERS" in text and "bob" in text
    assert "REQUEST_TTL_HOURS: must be a positive number" in text


def test_plain_postgres_urls_are_pointed_at_asyncpg(monkeypatch: pytest.MonkeyPatch) -> None:
    """A postgres:// URL is refused with the asyncpg form to use instead."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db/bt")
    with pytest.raises(ConfigError, match=r"postgresql\+asyncpg://"):
        Settings.load()


def test_each_mode_names_the_tokens_it_misses() -> None:
    """`serve` needs the bot token and signing secret; `socket` the bot and app tokens."""
    s = Settings.load()
    with pytest.raises(ConfigError) as http:
        s.require("http")
    assert http.value.message.splitlines() == [
        "SLACK_BOT_TOKEN is required for `serve` (HTTP mode).",
        "SLACK_SIGNING_SECRET is required for `serve` (HTTP mode).",
    ]
    with pytest.raises(ConfigError, match="SLACK_APP_TOKEN"):
        Settings.load(slack_bot_token="xoxb-1").require("socket")
    with pytest.raises(ConfigError, match="must be a bot token"):
        Settings.load(slack_bot_token="xoxp-1", slack_signing_secret="s").require("http")
    Settings.load(slack_bot_token="xoxb-1", slack_signing_secret="s").require("http")
    Settings.load(slack_bot_token="xoxb-1", slack_app_token="xapp-1").require("socket")


def test_secrets_never_print(monkeypatch: pytest.MonkeyPatch) -> None:
    """repr/str of the settings never contain a token or key."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-very-secret")
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_supersecret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-abcdefabcdefabcdef")
    s = Settings.load()
    for text in (repr(s), str(s), str(s.model_dump())):
        assert "very-secret" not in text
        assert "supersecret" not in text
        assert "abcdefabcdef" not in text


def test_a_provider_key_turns_the_sandbox_off_unless_forced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Setting a key enables that provider; SANDBOX=1 keeps the sandbox anyway."""
    monkeypatch.setenv("ORB_API_KEY", "orb-key")
    s = Settings.load()
    assert s.enabled_providers == ("orb",)
    assert not s.use_sandbox
    monkeypatch.setenv("SANDBOX", "1")
    assert Settings.load().use_sandbox


def test_sandbox_off_without_any_provider_key_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SANDBOX=0 with no provider key is refused with what to set, instead of starting the
    sandbox anyway; with a key it means the real providers."""
    monkeypatch.setenv("SANDBOX", "0")
    with pytest.raises(ConfigError) as info:
        Settings.load()
    assert info.value.message.splitlines() == [
        "SANDBOX: is 0 but no provider key is set; set STRIPE_API_KEY, ORB_API_KEY or "
        "METRONOME_API_KEY, or unset SANDBOX to use the built-in sandbox."
    ]
    monkeypatch.setenv("METRONOME_API_KEY", "met-key")
    settings = Settings.load()
    assert not settings.use_sandbox
    assert settings.enabled_providers == ("metronome",)
    monkeypatch.setenv("SANDBOX", "")  # blank is unset: the key decides
    assert not Settings.load().use_sandbox


def test_dotenv_in_the_working_directory_is_read(tmp_path: Path) -> None:
    """A `.env` file in the working directory configures the app (tests run in tmp_path)."""
    (tmp_path / ".env").write_text("BILLING_COMMAND=/billing-dev\nFINANCE_CHANNEL=C0FIN\n")
    s = Settings.load()
    assert s.billing_command == "/billing-dev"
    assert s.finance_channel == "C0FIN"


def test_amounts_accept_dollar_signs_and_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    """DUAL_APPROVAL_ABOVE may be written like an amount a person types."""
    monkeypatch.setenv("DUAL_APPROVAL_ABOVE", "$2,500")
    assert Settings.load().dual_approval_above == Decimal("2500")
