"""Shared test configuration: a clean environment per test, and the fixture modules in
tests/support/."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

pytest_plugins = [
    "tests.support.postgres",
    "tests.support.slack",
    "tests.support.app",
    "tests.support.providers",
    "tests.support.fake_openai",
    "tests.support.zendesk",
]

_PREFIXES = (
    "SLACK_", "STRIPE_", "ORB_", "METRONOME_", "OPENAI_", "FINANCE_", "ONCALL_", "ZENDESK_",
    "TRIAGE_", "REPORT_", "ALERT_", "PROMETHEUS_", "APPROVALS_", "SCAN_",
)  # fmt: skip
_NAMES = {
    "DATABASE_URL", "SANDBOX", "REQUESTERS", "VIEWERS", "DUAL_APPROVAL_ABOVE", "REQUEST_TTL_HOURS",
    "DUAL_APPROVAL_ABOVE_BY_CURRENCY",
    "SCAN_INTERVAL_MINUTES", "LOG_LEVEL", "LOG_FORMAT", "BILLING_COMMAND", "AUTO_MIGRATE", "PORT",
}  # fmt: skip


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]) -> Iterator[None]:
    """Every test starts with none of the app's variables set and runs in its own directory,
    so a developer's `.env` or keys never leak in."""
    for name in list(os.environ):
        if name.startswith(_PREFIXES) or name in _NAMES:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    yield
