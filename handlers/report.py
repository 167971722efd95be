"""`/billing report [7d|30d|90d]` (DESIGN §11): the recurring-issue report as a compact ranked
table, and its weekly post to `REPORT_CHANNEL` (one post per ISO week, whichever replica runs
the job: the outbox key names the week)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from slack_bolt.async_app import AsyncApp

from bot.deps import Deps
from bot.domain.commands import ReportCommand
from bot.domain.records import OutgoingMessage, RenderedMessage
from bot.services.jobs import Job
from bot.services.report import Report, build_report, cause_label, requests_line, table_lines
from handlers import views

log = logging.getLogger("handlers.report")

WEEKLY_JOB = "weekly_report"
WEEKLY_RENDERER = "weekly_report"
#: Causes in the Slack table (the CLI shows more).
SLACK_ROWS = 10


def report_view(report: Report, *, title: str | None = None) -> views.Reply:
    """The report for Slack: a ranked table people can read at a glance, then what recurs."""
    heading = title or f"Recurring issues · last {report.window_days} days"
    change = report.cases - report.previous_cases
    trend = f"{change:+d}" if change else "no change"
    blocks: list[views.Block] = [
        views.header(heading),
        views.context(
            f"*{report.cases}* cases ({trend} vs the {report.window_days} days before) · "
            f"{report.since:%b %-d} – {report.until:%b %-d, %Y}"
        ),
    ]
    if report.causes:
        table = "\n".join(table_lines(report, limit=SLACK_ROWS))
        blocks.append(views.section(f"*Root causes, ranked*\n```\n{table}\n```"))
        by_money = max(report.causes, key=lambda c: c.amount)
        blocks.append(
            views.context(
                f"Most money: *{cause_label(by_money.cause)}* {by_money.money.format()} · "
                "`billing-triage report --json` for everything"
            )
        )
    else:
        blocks.append(views.section("No root causes recorded in this window yet."))
    if report.recurring:
        rows = [
            f"• `{views.escape(r.account_id)}` {cause_label(r.cause)} ×{r.cases}"
            + (f" ({', '.join(views.escape(e) for e in r.examples[:2])})" if r.examples else "")
            for r in report.recurring[:8]
        ]
        blocks.append(views.section("*Recurring on the same account*\n" + "\n".join(rows)))
    if report.waves:
        rows = [
            f"• *{cause_label(w.cause)}* hit {w.accounts} accounts ({w.previous_accounts} the "
            f"window before), e.g. " + ", ".join(f"`{views.escape(e)}`" for e in w.examples)
            for w in report.waves[:5]
        ]
        blocks.append(views.section("*Many accounts at once*\n" + "\n".join(rows)))
    lines = [requests_line(report)]
    for reason in report.reasons[:3]:
        lines.append(
            f"• {views.escape(reason.reason)}: {reason.requested} requested, "
            f"{reason.approved} approved, {reason.denied} denied"
        )
    if report.alerts:
        alerts = ", ".join(
            f"{cause_label(a.kind)} {a.alerts}"
            + (f" (precision {a.precision:.2f})" if a.precision is not None else "")
            for a in report.alerts[:6]
        )
        lines.append(f"Alerts: {alerts}")
    blocks.append(views.context(*[views.clip(line, 2900) for line in lines[:10]]))
    text = f"{heading}: {report.cases} cases"
    return views.Reply(text=text, blocks=blocks[:50])


async def report_reply(cmd: ReportCommand, deps: Deps) -> views.Reply:
    """`/billing report`: the report over the stored cases."""
    report = await build_report(deps.database, days=cmd.days)
    return report_view(report)


def week_key(now: datetime) -> str:
    """The outbox key of the weekly report of `now`'s ISO week."""
    year, week, _ = now.astimezone(UTC).isocalendar()
    return f"report:weekly:{year}-W{week:02d}"


async def enqueue_weekly(deps: Deps, *, now: datetime | None = None) -> bool:
    """Enqueue this week's report post (once per ISO week); True when it was new."""
    channel = deps.settings.report_channel
    if not channel:
        return False
    when = now or datetime.now(UTC)
    async with deps.database.uow() as uow:
        added = await uow.outbox.enqueue(
            OutgoingMessage(
                key=week_key(when),
                op="post",
                channel=channel,
                render=WEEKLY_RENDERER,
                payload={"days": 7, "until": when.isoformat()},
            ),
            now=when,
        )
        await uow.commit()
    if added and deps.delivery is not None:
        deps.delivery.wake()
    return added


def register(app: AsyncApp, deps: Deps) -> None:
    """Register the weekly report renderer, and its job when `REPORT_CHANNEL` is set."""
    del app  # the command is answered through handlers.dispatch
    if deps.delivery is not None:

        async def render(payload: Mapping[str, Any]) -> RenderedMessage:
            until = datetime.fromisoformat(str(payload["until"]))
            report = await build_report(deps.database, days=int(payload["days"]), now=until)
            reply = report_view(report, title=f"Weekly recurring-issue report · {until:%b %-d}")
            return RenderedMessage(text=reply.text, blocks=reply.blocks)

        deps.delivery.register_renderer(WEEKLY_RENDERER, render)
    if deps.scheduler is not None and deps.settings.report_channel:

        async def run() -> None:
            await enqueue_weekly(deps)

        # Hourly: the first run in each ISO week enqueues its post; the key makes it one.
        deps.scheduler.add(Job(WEEKLY_JOB, every=3600.0, run=run, exclusive=True, first_delay=30.0))
