"""Settings: every variable of DESIGN §2, read from the environment and `.env`, validated at start.

Secrets are `SecretStr` so they never print. `Settings.load()` collects every problem and raises
one `ConfigError` with one line per problem.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.errors import ConfigError

CHANNEL_RE = re.compile(r"^[CGD][A-Z0-9]{2,}$")
PRINCIPAL_RE = re.compile(r"^[UWS][A-Z0-9]{2,}$")
COMMAND_RE = re.compile(r"^/[a-z0-9_\-]{1,31}$")
Mode = Literal["http", "socket", "local"]


class Settings(BaseSettings):
    """All configuration. Field names are the environment variable names, lower-cased."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    slack_bot_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_api_url: str = "https://slack.com/api/"
    billing_command: str = "/billing"
    finance_channel: str | None = None
    oncall_channel: str | None = None
    finance_approvers: str = ""
    requesters: str = ""
    viewers: str = ""
    dual_approval_above: Decimal = Decimal("1000")
    #: Per-currency thresholds overriding DUAL_APPROVAL_ABOVE: `jpy=150000,eur=900`.
    dual_approval_above_by_currency: str = ""
    #: Hours; fractions allowed (`0.5` = 30 minutes).
    request_ttl_hours: float = 48
    #: How often the approvals job (expiry, then the reconciler) runs inside serve/socket.
    approvals_reconcile_seconds: float = Field(default=60.0, gt=0, le=3600)
    #: How long an executor holds a request between renewals before another replica's
    #: reconciler may take it over (a crashed process's request waits at most this long).
    approvals_lease_seconds: float = Field(default=30.0, gt=0, le=600)

    stripe_api_key: SecretStr | None = None
    stripe_api_base: str = "https://api.stripe.com"
    stripe_webhook_secret: SecretStr | None = None
    stripe_account_id_metadata_key: str = "account_id"
    #: Requests per second to each provider; unset = the provider's documented limit.
    stripe_rate_limit: float | None = Field(default=None, gt=0, le=10_000)
    orb_rate_limit: float | None = Field(default=None, gt=0, le=10_000)
    metronome_rate_limit: float | None = Field(default=None, gt=0, le=10_000)
    orb_api_key: SecretStr | None = None
    orb_api_base: str = "https://api.withorb.com/v1"
    orb_webhook_secret: SecretStr | None = None
    metronome_api_key: SecretStr | None = None
    metronome_api_base: str = "https://api.metronome.com"
    metronome_webhook_secret: SecretStr | None = None
    #: The Metronome product credits are granted on (else one from the customer's contract).
    metronome_credit_product_id: str | None = None

    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"

    zendesk_subdomain: str | None = None
    zendesk_api_base: str | None = None
    zendesk_email: str | None = None
    zendesk_api_token: SecretStr | None = None
    zendesk_webhook_secret: SecretStr | None = None
    zendesk_account_field: str | None = None
    triage_channel: str | None = None
    report_channel: str | None = None

    database_url: str = "sqlite+aiosqlite:///billing-triage.db"
    sandbox: bool | None = None
    auto_migrate: bool = True
    scan_interval_minutes: int = 15
    #: Accounts one process scans at once (each holds one snapshot in memory).
    scan_concurrency: int = Field(default=32, ge=1, le=512)
    #: Accounts per work item: the page a replica claims and scans as one.
    scan_page_size: int = Field(default=100, ge=1, le=100)
    #: Seconds a replica's claim on a page lasts without renewal: how soon a page whose
    #: replica died is scanned by another (its coordinator is taken for dead after 2.5×).
    scan_lease_seconds: float = Field(default=120.0, ge=0.5, le=3600)
    #: Alert thresholds (DESIGN §5 "default thresholds are configurable"); money in major units.
    alert_spike_min_impact: Decimal = Decimal(50)
    alert_spike_min_ratio: Decimal = Decimal("1.5")
    alert_spike_sigmas: Decimal = Decimal(4)
    alert_jump_min_impact: Decimal = Decimal(100)
    alert_jump_min_percent: Decimal = Decimal(25)
    alert_payment_min_amount: Decimal = Decimal(1)
    alert_duplicate_min_amount: Decimal = Decimal(1)
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "console"
    port: int = Field(default=3000, ge=1, le=65535)

    @field_validator(
        "slack_bot_token", "slack_signing_secret", "slack_app_token", "stripe_api_key",
        "stripe_webhook_secret", "orb_api_key", "orb_webhook_secret", "metronome_api_key",
        "metronome_webhook_secret", "openai_api_key", "zendesk_api_token", "zendesk_webhook_secret",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _blank_secret_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator(
        "finance_channel", "oncall_channel", "triage_channel", "report_channel",
        "openai_base_url", "sandbox", "stripe_rate_limit", "orb_rate_limit", "metronome_rate_limit",
        "metronome_credit_product_id", "zendesk_subdomain", "zendesk_api_base", "zendesk_email",
        "zendesk_account_field", mode="before",
    )  # fmt: skip
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator(
        "dual_approval_above", "alert_spike_min_impact", "alert_jump_min_impact",
        "alert_payment_min_amount", "alert_duplicate_min_amount", mode="before",
    )  # fmt: skip
    @classmethod
    def _amount(cls, value: Any) -> Any:
        try:
            dec = Decimal(str(value).strip().lstrip("$").replace(",", ""))
        except InvalidOperation:
            raise ValueError(f"must be an amount in major units like 1000, got {value!r}") from None
        if not dec.is_finite() or dec < 0:
            raise ValueError(f"must be a non-negative amount, got {value!r}")
        return dec

    @field_validator("alert_spike_min_ratio", "alert_spike_sigmas", "alert_jump_min_percent")
    @classmethod
    def _positive_number(cls, value: Decimal) -> Decimal:
        if not value.is_finite() or value <= 0:
            raise ValueError(f"must be a positive number, got {value}")
        return value

    @field_validator("request_ttl_hours")
    @classmethod
    def _positive_ttl(cls, value: float) -> float:
        if not value > 0 or value != value or value == float("inf"):
            raise ValueError("must be a positive number of hours")
        return value

    @field_validator("dual_approval_above_by_currency")
    @classmethod
    def _per_currency(cls, value: str) -> str:
        _currency_thresholds(value)  # raises ValueError naming the bad item
        return value

    @field_validator("scan_interval_minutes")
    @classmethod
    def _non_negative_interval(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be 0 (off) or a positive number of minutes")
        return value

    @field_validator("finance_channel", "oncall_channel", "triage_channel", "report_channel")
    @classmethod
    def _channel(cls, value: str | None) -> str | None:
        if value is not None and not CHANNEL_RE.match(value.strip()):
            raise ValueError(f"must be a Slack channel ID like C0123ABCD, got {value!r}")
        return value.strip() if value else value

    @field_validator("finance_approvers", "requesters", "viewers")
    @classmethod
    def _principals(cls, value: str) -> str:
        bad = [p for p in _split(value) if not PRINCIPAL_RE.match(p)]
        if bad:
            raise ValueError(
                "must be comma-separated Slack user IDs (U…, W…) or user-group IDs (S…); "
                f"not valid: {', '.join(bad)}"
            )
        return value

    @field_validator("zendesk_subdomain")
    @classmethod
    def _subdomain(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[a-z0-9][a-z0-9\-]{0,62}$", value.strip()):
            raise ValueError(f"must be a Zendesk subdomain like acme, got {value!r}")
        return value.strip() if value else value

    @field_validator("billing_command")
    @classmethod
    def _command(cls, value: str) -> str:
        if not COMMAND_RE.match(value):
            raise ValueError(
                f"must look like /billing (a slash and up to 31 characters), got {value!r}"
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if not (value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://"))):
            if value.startswith(("postgres://", "postgresql://")):
                raise ValueError(
                    "must use the asyncpg driver: postgresql+asyncpg://user:pass@host/db"
                )
            raise ValueError(
                "must be sqlite+aiosqlite:///path.db or postgresql+asyncpg://user:pass@host/db"
            )
        return value

    @field_validator(
        "slack_api_url",
        "stripe_api_base",
        "orb_api_base",
        "metronome_api_base",
        "openai_base_url",
        "zendesk_api_base",
    )
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return upper

    @field_validator("log_format", mode="before")
    @classmethod
    def _format(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    # --- derived -------------------------------------------------------------------------

    @property
    def approvers(self) -> frozenset[str]:
        """FINANCE_APPROVERS as a set of user and user-group IDs."""
        return frozenset(_split(self.finance_approvers))

    @property
    def requester_set(self) -> frozenset[str]:
        """REQUESTERS as a set; empty means everyone."""
        return frozenset(_split(self.requesters))

    @property
    def dual_approval_thresholds(self) -> dict[str, Decimal]:
        """DUAL_APPROVAL_ABOVE_BY_CURRENCY as currency (lowercase) → threshold in major units."""
        return _currency_thresholds(self.dual_approval_above_by_currency)

    @property
    def viewer_set(self) -> frozenset[str]:
        """VIEWERS as a set; empty means everyone in the workspace."""
        return frozenset(_split(self.viewers))

    @property
    def zendesk_enabled(self) -> bool:
        """True when a Zendesk API token is set (else the sandbox serves its own tickets)."""
        return self.zendesk_api_token is not None

    @property
    def zendesk_base(self) -> str | None:
        """The Zendesk instance: ZENDESK_API_BASE, else https://{ZENDESK_SUBDOMAIN}.zendesk.com."""
        if self.zendesk_api_base:
            return self.zendesk_api_base.rstrip("/")
        if self.zendesk_subdomain:
            return f"https://{self.zendesk_subdomain}.zendesk.com"
        return None

    @property
    def enabled_providers(self) -> tuple[str, ...]:
        """Providers whose API key is set, in display order."""
        keys = {
            "stripe": self.stripe_api_key,
            "orb": self.orb_api_key,
            "metronome": self.metronome_api_key,
        }
        return tuple(name for name, key in keys.items() if key is not None)

    @property
    def use_sandbox(self) -> bool:
        """True when SANDBOX=1, or no provider key is set and SANDBOX is not 0 (`load()` refuses
        SANDBOX=0 without a key, so this never means "no providers at all")."""
        if self.sandbox is not None:
            return self.sandbox
        return not self.enabled_providers

    def combination_problems(self) -> list[str]:
        """Problems of variables that are each valid but do not go together."""
        problems: list[str] = []
        if self.sandbox is False and not self.enabled_providers:
            problems.append(
                "SANDBOX: is 0 but no provider key is set; set STRIPE_API_KEY, ORB_API_KEY or "
                "METRONOME_API_KEY, or unset SANDBOX to use the built-in sandbox."
            )
        return problems

    def require(self, mode: Mode) -> None:
        """Check what `mode` needs; raise `ConfigError` with one line per problem."""
        problems: list[str] = []
        if mode == "http":
            if self.slack_bot_token is None:
                problems.append("SLACK_BOT_TOKEN is required for `serve` (HTTP mode).")
            if self.slack_signing_secret is None:
                problems.append("SLACK_SIGNING_SECRET is required for `serve` (HTTP mode).")
        if mode == "socket":
            if self.slack_bot_token is None:
                problems.append("SLACK_BOT_TOKEN is required for `socket` (Socket Mode).")
            if self.slack_app_token is None:
                problems.append("SLACK_APP_TOKEN (xapp-…) is required for `socket` (Socket Mode).")
        if mode in ("http", "socket"):
            token = self.slack_bot_token
            if token is not None and not token.get_secret_value().startswith("xoxb-"):
                problems.append("SLACK_BOT_TOKEN must be a bot token starting with xoxb-.")
        if mode == "socket":
            app_token = self.slack_app_token
            if app_token is not None and not app_token.get_secret_value().startswith("xapp-"):
                problems.append("SLACK_APP_TOKEN must be an app-level token starting with xapp-.")
        if self.zendesk_enabled:
            if not self.zendesk_email:
                problems.append("ZENDESK_EMAIL is required with ZENDESK_API_TOKEN (token auth).")
            if self.zendesk_base is None:
                problems.append(
                    "ZENDESK_SUBDOMAIN or ZENDESK_API_BASE is required with ZENDESK_API_TOKEN."
                )
        if problems:
            raise ConfigError("\n".join(problems))

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Read the environment (and `.env`); raise `ConfigError` listing every bad variable."""
        try:
            settings = cls(**overrides)
        except ValidationError as exc:
            lines = []
            for err in exc.errors():
                name = str(err["loc"][0]).upper() if err["loc"] else "SETTINGS"
                msg = str(err["msg"]).removeprefix("Value error, ")
                lines.append(f"{name}: {msg}")
            raise ConfigError("\n".join(lines)) from None
        problems = settings.combination_problems()
        if problems:
            raise ConfigError("\n".join(problems))
        return settings


def _currency_thresholds(value: str) -> dict[str, Decimal]:
    """`jpy=150000, eur=900` → {"jpy": 150000, "eur": 900}; ValueError on a bad item."""
    thresholds: dict[str, Decimal] = {}
    for item in _split(value):
        code, sep, amount = item.partition("=")
        code = code.strip().lower()
        if not sep or not re.match(r"^[a-z]{3}$", code):
            raise ValueError(f"must be CUR=AMOUNT items like jpy=150000,eur=900; not {item!r}")
        try:
            dec = Decimal(amount.strip().replace(",", "").replace("_", ""))
        except InvalidOperation:
            raise ValueError(f"{item!r}: {amount.strip()!r} is not an amount") from None
        if not dec.is_finite() or dec < 0:
            raise ValueError(f"{item!r}: the amount must be non-negative")
        thresholds[code] = dec
    return thresholds


def _split(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]
