"""`billing-triage scan [--json] [--post]`: one anomaly scan over every account of every enabled
provider, from the command line.

- stdout: with `--json`, one JSON object per alert per line, exactly the keys of DESIGN §5;
  without, one readable line per alert (and its sparkline). Alerts are read back from the
  database a page at a time, so the output does not hold every alert in memory.
- stderr: a progress bar when stderr is a terminal (none when piped), then a summary.
- `--post`: new and worse alerts go to `ONCALL_CHANNEL` through the outbox, which is drained
  before exiting (the CLI has no background worker). Without it nothing is posted; the alerts
  are stored, and the next posting scan (or `serve`) tells on-call about them.

Exit codes: 0 the scan completed (with or without alerts); 1 it could not run (no provider could
list its customers, or none is enabled); 2 usage or configuration error (e.g. `--post` without
`ONCALL_CHANNEL`); 3 it ran but is incomplete (some accounts or a provider's listing failed; the
summary names them).
"""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

from slack_sdk.web.async_client import AsyncWebClient

from bot.app import build_app, deps_of, shutdown, startup
from bot.domain.alert_payload import anomaly_from_payload
from bot.errors import ConfigError
from bot.services.jobs import replica_id
from bot.services.scan import Progress, ScanSummary
from bot.settings import Settings
from handlers.alerts import scan_service

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INCOMPLETE = 0, 1, 2, 3
BAR_WIDTH = 24


class ProgressBar:
    """A one-line progress bar on a terminal, redrawn at most 10 times a second."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._last = 0.0
        self._drawn = False

    def update(self, p: Progress) -> None:
        """Redraw with the latest counts (throttled)."""
        now = time.monotonic()
        if now - self._last < 0.1:
            return
        self._last = now
        done = p.scanned + p.skipped + p.failed
        total = max(p.listed, done, 1)
        filled = int(BAR_WIDTH * done / total)
        more = "" if p.listing_done else "+"
        bar = "█" * filled + "░" * (BAR_WIDTH - filled)
        self.out.write(
            f"\rscanning ▕{bar}▏ {done}/{total}{more} accounts · {p.alerts} alerts"
            + (f" · {p.failed} failed" if p.failed else "")
        )
        self.out.flush()
        self._drawn = True

    def close(self) -> None:
        """End the bar's line."""
        if self._drawn:
            self.out.write("\r\033[K")
            self.out.flush()


def summary_lines(s: ScanSummary) -> list[str]:
    """The summary printed on stderr."""
    state = "complete" if s.complete else "INCOMPLETE"
    calls = ", ".join(
        f"{name} {n} calls"
        + (f" ({s.throttled.get(name, 0)} rate-limited)" if s.throttled.get(name) else "")
        for name, n in s.calls.items()
    )
    lines = [
        f"scan {s.run_id} {state}: {s.accounts} accounts in {s.seconds:.1f} s, {s.alerts} alerts "
        f"({s.new_alerts} new)" + (f"; {calls}" if calls else "")
    ]
    for provider, reason in s.list_failures.items():
        lines.append(f"  could not list {provider} customers: {reason}")
    if s.failed_accounts:
        shown = ", ".join(s.failed_accounts[:20])
        more = f" and {len(s.failed_accounts) - 20} more" if len(s.failed_accounts) > 20 else ""
        lines.append(f"  {len(s.failed_accounts)} accounts could not be scanned: {shown}{more}")
    return lines


async def run_scan(
    settings: Settings,
    *,
    as_json: bool,
    post: bool,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run one scan, print its alerts and summary; the exit code."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    if post:
        problems = []
        if settings.oncall_channel is None:
            problems.append("ONCALL_CHANNEL is required for `scan --post`.")
        if settings.slack_bot_token is None:
            problems.append("SLACK_BOT_TOKEN is required for `scan --post`.")
        if problems:
            raise ConfigError("\n".join(problems))
    client = None
    if settings.slack_bot_token is None:
        # Nothing is posted without --post; Bolt still wants a client with a token to exist.
        client = AsyncWebClient(token="xoxb-scan-posts-nothing", base_url=settings.slack_api_url)  # noqa: S106
    app = build_app(settings, slack_client=client)
    deps = deps_of(app)
    try:
        await startup(app, background=False)
        if not deps.providers:
            err.write("billing-triage scan: no billing provider is enabled.\n")
            return EXIT_FAILED
        service = scan_service(deps, holder=f"cli:{replica_id()}")
        bar = ProgressBar(err) if err.isatty() else None
        try:
            summary = await service.run(post=post, on_progress=bar.update if bar else None)
        finally:
            if bar is not None:
                bar.close()
        after = 0
        while True:
            async with deps.database.uow() as uow:
                page = await uow.alerts.for_run(summary.run_id, after_id=after, limit=500)
            if not page:
                break
            for alert in page:
                after = alert.id
                anomaly = anomaly_from_payload(alert.payload)
                if as_json:
                    out.write(json.dumps(anomaly.to_json(), ensure_ascii=False) + "\n")
                else:
                    lines = anomaly.text_lines()
                    out.write(lines[0] + "\n")
                    spark = anomaly.sparkline()
                    if spark:
                        out.write(f"    {spark}\n")
            out.flush()
        if post and deps.delivery is not None:
            delivered = await deps.delivery.drain(timeout=120)
            if not delivered:
                err.write("billing-triage scan: some alerts are still waiting to be posted.\n")
        for line in summary_lines(summary):
            err.write(line + "\n")
        if summary.accounts == 0 and len(summary.list_failures) == len(deps.providers):
            return EXIT_FAILED
        return EXIT_OK if summary.complete else EXIT_INCOMPLETE
    finally:
        if post:
            await shutdown(app, drain_timeout=5)
        else:
            await deps.aclose()  # no outbox drain: a scan without --post posts nothing
