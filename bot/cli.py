"""The `billing-triage` command line (DESIGN §1). Exit codes: 0 success, 1 user error, 2 usage
or configuration error; `scan` adds 1 (could not scan) and 3 (incomplete), see
`bot.console.scan`."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from bot.errors import BotError, ConfigError
from bot.logs import configure
from bot.settings import Settings

USER_RE = re.compile(r"^[UW][A-Z0-9]{2,}$")


def _user(value: str) -> str:
    if not USER_RE.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a Slack user ID like U0123ABCD")
    return value


def _since(value: str) -> datetime:
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a date like 2026-12-01 or a time like 2026-12-01T09:30"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _days(value: str) -> int:
    from bot.services.report import MAX_DAYS, MIN_DAYS

    try:
        days = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a number of days; e.g. --days 30"
        ) from None
    if not MIN_DAYS <= days <= MAX_DAYS:
        raise argparse.ArgumentTypeError(
            f"must be between {MIN_DAYS} and {MAX_DAYS} days (got {days})"
        )
    return days


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="billing-triage",
        description="Billing Triage: billing lookups, explanations, approvals and alerts in Slack.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="HTTP mode (production): POST /slack/events")
    serve.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")  # noqa: S104
    serve.add_argument("--port", type=int, default=None, help="port (default 3000, or PORT)")
    sub.add_parser("socket", help="Socket Mode (development)")
    shell = sub.add_parser("shell", help="local console, no Slack needed")
    shell.add_argument("--as", dest="user", type=_user, default="U0LOCALUSER", metavar="USER_ID")
    ask = sub.add_parser("ask", help="run one /billing command locally and print the answer")
    ask.add_argument("text", nargs="+", help="what you would type after /billing")
    ask.add_argument("--as", dest="user", type=_user, default="U0LOCALUSER", metavar="USER_ID")
    scan = sub.add_parser("scan", help="one anomaly scan over all accounts")
    scan.add_argument("--json", action="store_true", help="one JSON object per alert per line")
    scan.add_argument("--post", action="store_true", help="post new alerts to ONCALL_CHANNEL")
    report = sub.add_parser("report", help="the recurring-issue report over stored cases")
    report.add_argument(
        "--days", type=_days, default=30, metavar="N", help="window in days (default 30)"
    )
    report_fmt = report.add_mutually_exclusive_group()
    report_fmt.add_argument("--json", action="store_true", help="one JSON object (DESIGN §11)")
    report_fmt.add_argument("--csv", action="store_true", help="CSV: ranked causes, then recurring")
    audit = sub.add_parser("audit", help="export the append-only audit trail for auditors")
    audit.add_argument(
        "--since", type=_since, default=None, metavar="DATE",
        help="only events at or after DATE (YYYY-MM-DD, or an ISO time; UTC unless given)",
    )  # fmt: skip
    fmt = audit.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV with a header row")
    fmt.add_argument("--json", action="store_true", help="one JSON object per event per line")
    db = sub.add_parser("db", help="database commands")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    db_sub.add_parser("upgrade", help="create or migrate the schema")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and `python -m bot`."""
    args = _parser().parse_args(argv)
    try:
        settings = Settings.load()
    except ConfigError as exc:
        print(f"billing-triage: configuration error:\n{exc.message}", file=sys.stderr)
        return 2
    quiet = (
        args.command in ("ask", "shell", "scan", "audit", "report") and settings.log_level == "INFO"
    )
    configure("WARNING" if quiet else settings.log_level, settings.log_format)
    try:
        return asyncio.run(_run(args, settings))
    except ConfigError as exc:
        print(f"billing-triage: configuration error:\n{exc.message}", file=sys.stderr)
        return 2
    except BotError as exc:
        print(f"billing-triage: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`billing-triage audit | head`): stop quietly, as `cat` does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "db":
        from bot.storage.migrate import upgrade

        await upgrade(settings.database_url)
        print(f"database is up to date ({_safe_url(settings.database_url)})")
        return 0
    if args.command == "serve":
        settings.require("http")
        from bot.app import build_app
        from bot.server import serve_forever

        port = args.port if args.port is not None else settings.port
        await serve_forever(build_app(settings), host=args.host, port=port)
        return 0
    if args.command == "socket":
        settings.require("socket")
        from bot.app import build_app
        from bot.server import socket_forever

        assert settings.slack_app_token is not None
        await socket_forever(build_app(settings), settings.slack_app_token.get_secret_value())
        return 0
    if args.command == "shell":
        from bot.console.shell import run_shell

        return await run_shell(settings, user_id=args.user)
    if args.command == "ask":
        from bot.console.shell import run_ask

        return await run_ask(settings, " ".join(args.text), user_id=args.user)
    if args.command == "report":
        return await _report(args, settings)
    if args.command == "audit":
        return await _export_audit(settings, since=args.since, csv_out=args.csv, json_out=args.json)
    if args.command == "scan":
        from bot.console.scan import run_scan

        return await run_scan(settings, as_json=args.json, post=args.post)
    raise AssertionError(args.command)


async def _report(args: argparse.Namespace, settings: Settings) -> int:
    """`billing-triage report`: a table on a terminal, or JSON / CSV on stdout."""
    import json

    from bot.services.report import build_report, text_report
    from bot.storage.db import Database
    from bot.storage.migrate import upgrade

    if settings.auto_migrate:
        await upgrade(settings.database_url)
    database = Database(settings.database_url)
    try:
        report = await build_report(database, days=args.days)
    finally:
        await database.dispose()
    if args.json:
        print(json.dumps(report.to_json()))
    elif args.csv:
        sys.stdout.write(report.to_csv())
    else:
        print(text_report(report))
    return 0


AUDIT_COLUMNS = ("id", "at", "actor", "action", "subject", "slack_request", "detail")


async def _export_audit(
    settings: Settings, *, since: datetime | None, csv_out: bool, json_out: bool
) -> int:
    """Print the audit trail, oldest first, paged so any size streams in bounded memory."""
    import csv
    import json

    from bot.storage.db import Database, json_dumps
    from bot.storage.migrate import upgrade

    if settings.auto_migrate:
        await upgrade(settings.database_url)
    database = Database(settings.database_url)
    writer = csv.writer(sys.stdout, lineterminator="\n") if csv_out else None
    if writer is not None:
        writer.writerow(AUDIT_COLUMNS)
    try:
        after = 0
        while True:
            async with database.uow() as uow:
                events = await uow.audit.since(since, after_id=after, limit=1000)
            if not events:
                break
            for event in events:
                row = {
                    "id": event.id,
                    "at": event.at.isoformat(),
                    "actor": event.actor,
                    "action": event.action,
                    "subject": event.subject,
                    "slack_request": event.slack_request,
                    "detail": dict(event.detail),
                }
                if json_out:
                    print(json_dumps(row))
                elif writer is not None:
                    writer.writerow([*(row[c] for c in AUDIT_COLUMNS[:-1]),
                                     json.dumps(row["detail"], ensure_ascii=False)])  # fmt: skip
                else:
                    print(
                        f"{row['at']}  {event.actor}  {event.action}  {event.subject}  "
                        f"{json.dumps(row['detail'], ensure_ascii=False)}"
                        + (f"  ({event.slack_request})" if event.slack_request else "")
                    )
                after = event.id or after
    finally:
        await database.dispose()
    return 0


def _safe_url(url: str) -> str:
    """The database URL without its password."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
