"""The `billing-triage` processes as an operator runs them: configuration errors, `serve` up and
down on SIGTERM, `db upgrade`, graceful drain of work in flight."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bot.domain.models import AccountRef, BillingSnapshot
from integrations.sandbox.slack import LocalSlack
from tests.support.app import serve_app


def _env(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "STRIPE_", "ORB_"))}
    return {**keep, **extra}


def _run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_serve_without_tokens_names_what_is_missing(tmp_path: Path) -> None:
    """`serve` with no Slack credentials exits 2 with one line per missing variable."""
    result = _run("serve", cwd=tmp_path)
    assert result.returncode == 2
    assert "SLACK_BOT_TOKEN is required for `serve`" in result.stderr
    assert "SLACK_SIGNING_SECRET is required for `serve`" in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_settings_exit_2_before_anything_starts(tmp_path: Path) -> None:
    """A bad channel ID and a bad database URL are both reported; nothing runs."""
    result = _run("ask", "help", cwd=tmp_path, FINANCE_CHANNEL="finance", DATABASE_URL="mysql://x")
    assert result.returncode == 2
    assert "FINANCE_CHANNEL" in result.stderr and "DATABASE_URL" in result.stderr


def test_sandbox_off_without_keys_exits_2_and_says_what_to_set(tmp_path: Path) -> None:
    """`SANDBOX=0` with no provider key is a configuration error (exit 2), not the sandbox."""
    result = _run("ask", "acct_northwind", cwd=tmp_path, SANDBOX="0")
    assert result.returncode == 2
    assert "SANDBOX: is 0 but no provider key is set" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Northwind" not in result.stdout


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    """Unknown commands and bad `--as` values are usage errors (exit 2)."""
    assert _run("frobnicate", cwd=tmp_path).returncode == 2
    assert _run("ask", "help", "--as", "bob", cwd=tmp_path).returncode == 2


def test_db_upgrade_creates_the_schema_and_hides_the_password(tmp_path: Path) -> None:
    """`db upgrade` migrates the configured database and is safe to run twice."""
    url = f"sqlite+aiosqlite:///{tmp_path}/bt.db"
    first = _run("db", "upgrade", cwd=tmp_path, DATABASE_URL=url)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "bt.db").exists()
    assert _run("db", "upgrade", cwd=tmp_path, DATABASE_URL=url).returncode == 0


def test_serve_answers_health_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """`serve` comes up healthy on its port and exits 0 on SIGTERM."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        env=_env(
            SLACK_BOT_TOKEN="xoxb-test",
            SLACK_SIGNING_SECRET="secret",
            SLACK_API_URL="http://127.0.0.1:9/api/",
            DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/serve.db",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "serve did not come up"
                time.sleep(0.1)
        assert response.status_code == 200
        assert response.json() == {"ok": True}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


async def test_stopping_the_server_lets_running_work_finish(
    local_slack: LocalSlack, tmp_path: Any
) -> None:
    """A lookup still running when the server is asked to stop still gets its answer posted."""
    async with serve_app(local_slack, f"sqlite+aiosqlite:///{tmp_path}/drain.db") as running:

        async def slow(*_a: Any, **_k: Any) -> BillingSnapshot:
            await asyncio.sleep(0.5)
            return BillingSnapshot(account=AccountRef("acct_drain", {}), providers=())

        running.deps.lookup.snapshot = slow  # type: ignore[method-assign]
        response = await running.command("status acct_drain")
        assert response.status_code == 200
        # Leaving the block stops the server while the lookup is still sleeping.
    answers = [c.args for c in local_slack.responses_to("cmd")]
    assert answers and "acct_drain" in str(answers[-1])


def _audited_db(tmp_path: Path) -> str:
    """A database holding three audit events on three days (the 1st, 2nd and 3rd of Dec)."""
    from datetime import UTC, datetime

    from bot.domain.records import AuditEvent
    from bot.storage.db import Database
    from bot.storage.migrate import upgrade

    url = f"sqlite+aiosqlite:///{tmp_path}/audit.db"

    async def fill() -> None:
        await upgrade(url)
        db = Database(url)
        try:
            async with db.uow() as uow:
                for day, action in ((1, "request.created"), (2, "click.approve"),
                                    (3, "provider.result")):  # fmt: skip
                    await uow.audit.append(AuditEvent(
                        None, datetime(2026, 12, day, 9, tzinfo=UTC), "U0FIN", action,
                        "request:REQ-AAAAAAAA", {"note": "a, \"quoted\" value"}, f"tr.{day}",
                    ))  # fmt: skip
                await uow.commit()
        finally:
            await db.dispose()

    asyncio.run(fill())
    return url


def test_audit_exports_the_trail_as_text_csv_and_json(tmp_path: Path) -> None:
    """`billing-triage audit [--since DATE] [--csv|--json]` prints the append-only trail for
    auditors, oldest first, from a date on; CSV has a header, JSON one object per line."""
    import csv
    import io
    import json

    url = _audited_db(tmp_path)
    text = _run("audit", cwd=tmp_path, DATABASE_URL=url)
    assert text.returncode == 0, text.stderr
    assert [line.split("  ")[2] for line in text.stdout.splitlines()] == [
        "request.created", "click.approve", "provider.result"
    ]  # fmt: skip
    since = _run("audit", "--since", "2026-12-02", "--csv", cwd=tmp_path, DATABASE_URL=url)
    rows = list(csv.DictReader(io.StringIO(since.stdout)))
    assert [r["action"] for r in rows] == ["click.approve", "provider.result"]
    assert rows[0]["slack_request"] == "tr.2" and json.loads(rows[0]["detail"])["note"]
    as_json = _run("audit", "--json", "--since", "2026-12-03T00:00", cwd=tmp_path,
                   DATABASE_URL=url)  # fmt: skip
    [event] = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert event["action"] == "provider.result" and event["at"].startswith("2026-12-03T09:00")
    assert "Traceback" not in text.stderr + since.stderr + as_json.stderr


def test_audit_refuses_a_date_it_cannot_read(tmp_path: Path) -> None:
    """A bad `--since` is a usage error (exit 2) naming the format, not a traceback."""
    result = _run("audit", "--since", "yesterday", cwd=tmp_path)
    assert result.returncode == 2
    assert "not a date like 2026-12-01" in result.stderr and "Traceback" not in result.stderr
