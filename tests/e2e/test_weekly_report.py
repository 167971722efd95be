"""The weekly recurring-issue report: posted to REPORT_CHANNEL by one replica, once per ISO
week even across restarts, as a compact ranked table."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from bot.domain.money import Money
from bot.services.cases import record_case
from handlers.report import WEEKLY_JOB, enqueue_weekly
from integrations.sandbox.slack import LocalSlack, validate_blocks
from tests.support.app import serve_app

REPORT = "C0REPORTS"


async def test_one_weekly_post_per_week_across_replicas_and_restarts(
    local_slack: LocalSlack, tmp_path: Any
) -> None:
    """Two replicas run the job (and one restarts): one post this week, with the ranked table."""
    url = f"sqlite+aiosqlite:///{tmp_path}/weekly.db"
    async with serve_app(local_slack, url, report_channel=REPORT) as one:
        await record_case(
            one.deps.database,
            source="command",
            kind="explain",
            account_id="acct_a",
            findings=[("usage_growth", Money(Decimal("12"), "usd"))],
            invoice_id="in_1",
        )
        async with serve_app(local_slack, url, report_channel=REPORT) as two:
            assert WEEKLY_JOB in one.deps.scheduler.jobs  # type: ignore[union-attr]
            await one.deps.scheduler.run_now(WEEKLY_JOB)  # type: ignore[union-attr]
            await two.deps.scheduler.run_now(WEEKLY_JOB)  # type: ignore[union-attr]
            await enqueue_weekly(two.deps)
            await one.deps.delivery.drain()  # type: ignore[union-attr]
            await two.deps.delivery.drain()  # type: ignore[union-attr]
    async with serve_app(local_slack, url, report_channel=REPORT) as restarted:
        assert await enqueue_weekly(restarted.deps) is False
        next_week = datetime.now(UTC) + timedelta(days=7)
        assert await enqueue_weekly(restarted.deps, now=next_week) is True
    posts = [
        c.args for c in local_slack.calls_to("chat.postMessage") if c.args["channel"] == REPORT
    ]
    assert len(posts) == 1
    blocks = posts[0]["blocks"]
    blocks = json.loads(blocks) if isinstance(blocks, str) else blocks
    assert validate_blocks(blocks) == []
    text = json.dumps(blocks)
    assert "Weekly recurring-issue report" in text and "usage growth" in text


async def test_no_report_channel_no_job(local_slack: LocalSlack, tmp_path: Any) -> None:
    """Without REPORT_CHANNEL nothing is scheduled or posted."""
    async with serve_app(local_slack, f"sqlite+aiosqlite:///{tmp_path}/none.db") as running:
        assert WEEKLY_JOB not in running.deps.scheduler.jobs  # type: ignore[union-attr]
        assert await enqueue_weekly(running.deps) is False


async def test_slash_report_is_a_compact_ranked_table(
    local_slack: LocalSlack, tmp_path: Any
) -> None:
    """`/billing report 7d` answers with the ranked causes in a table; bad windows are refused."""
    async with serve_app(local_slack, f"sqlite+aiosqlite:///{tmp_path}/r.db") as running:
        for n, cause in enumerate(("usage_growth", "usage_growth", "tax_change")):
            await record_case(
                running.deps.database,
                source="command",
                kind="explain",
                account_id=f"acct_{n}",
                findings=[(cause, Money(Decimal("5"), "usd"))],
                invoice_id=f"in_{n}",
            )
        reply = await running.answer("report 7d")
        bad = await running.answer("report 5d", key="bad")
    text = json.dumps(reply["blocks"])
    assert "last 7 days" in text and "```" in text
    assert text.index("usage growth") < text.index("tax change")
    assert validate_blocks(reply["blocks"]) == []
    assert "is not a report window" in json.dumps(bad)
