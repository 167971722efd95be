"""The one Retry-After parser used for providers, the LLM and Slack."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from bot.domain.retry import parse_retry_after

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
        ({"Retry-After": "-3"}, 0.0),
        ({"Retry-After": format_datetime(datetime(2026, 12, 4, 12, 0, 30, tzinfo=UTC))}, 30.0),
        ({"Retry-After": format_datetime(datetime(2026, 12, 4, 11, 0, tzinfo=UTC))}, 0.0),
        ({}, None),
        ({"Retry-After": ""}, None),
        ({"Retry-After": "soon"}, None),
        ({"retry-after-ms": "x", "Retry-After": "2"}, 2.0),
    ],
)
def test_retry_after_reads_seconds_dates_and_milliseconds(
    headers: dict[str, str], seconds: float | None
) -> None:
    """Delta seconds, HTTP dates and retry-after-ms give a wait; garbage gives none."""
    assert parse_retry_after(headers, now=lambda: NOW) == seconds
