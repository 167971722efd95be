"""Provider webhooks end to end (signed deliveries to the served app → alerts in on-call), and
`billing-triage scan` run for real as a subprocess (output format, exit codes, no progress bar
when piped)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.domain.webhooks import sign_stripe
from integrations.sandbox.slack import LocalSlack
from integrations.sandbox.world import build_world
from tests.e2e.test_cli import _run
from tests.support.app import serve_app, wait_until
from tests.support.providers import FakeProviders

SECRET = "whsec_e2e"
KEYS = {"account", "kind", "severity", "period", "expected", "actual", "impact", "currency",
        "summary"}  # fmt: skip


def _dispute(event_id: str, *, kind: str = "charge.dispute.created") -> bytes:
    now = int(time.time())
    return json.dumps({
        "id": event_id, "object": "event", "type": kind, "created": now,
        "data": {"object": {"id": "dp_e2e1", "object": "dispute", "amount": 45000,
                            "currency": "usd", "reason": "fraudulent", "status": "needs_response",
                            "charge": "ch_e2e1", "customer": "cus_e2e1", "created": now,
                            "evidence_details": {"due_by": now + 5 * 86400}}},
    }).encode()  # fmt: skip


async def test_stripe_webhooks_become_alerts_once_and_bad_ones_are_refused(
    local_slack: LocalSlack, tmp_path: Any
) -> None:
    """A signed dispute is answered 200 and posted to on-call with amount, reason and evidence
    due date; its replay, a bad and a stale signature post nothing more (bad/stale → 400);
    an event type we don't handle is answered 200 and ignored."""
    async with serve_app(local_slack, f"sqlite+aiosqlite:///{tmp_path}/hooks.db",
                         oncall_channel="C0ONCALL", stripe_webhook_secret=SECRET,
                         scan_interval_minutes=0) as running:  # fmt: skip
        body = _dispute("evt_e2e_1")
        good = {"Stripe-Signature": sign_stripe(body, SECRET, timestamp=int(time.time()))}
        first = await running.http.post("/webhooks/stripe", content=body, headers=good)
        assert first.status_code == 200
        await wait_until(lambda: bool(local_slack.calls_to("chat.postMessage")))
        post = local_slack.calls_to("chat.postMessage")[0].args
        text = json.dumps(post["blocks"])
        assert post["channel"] == "C0ONCALL" and "$450.00" in text and "fraudulent" in text
        assert "evidence due" in text

        replay = await running.http.post("/webhooks/stripe", content=body, headers=good)
        assert replay.status_code == 200 and replay.json().get("duplicate") is True
        bad = await running.http.post("/webhooks/stripe", content=_dispute("evt_e2e_2"),
                                      headers=good)  # fmt: skip
        stale_body = _dispute("evt_e2e_3")
        stale = {"Stripe-Signature": sign_stripe(stale_body, SECRET,
                                                 timestamp=int(time.time()) - 400)}  # fmt: skip
        old = await running.http.post("/webhooks/stripe", content=stale_body, headers=stale)
        assert bad.status_code == 400 and old.status_code == 400
        other = _dispute("evt_e2e_4", kind="customer.created")
        ignored = await running.http.post(
            "/webhooks/stripe", content=other,
            headers={"Stripe-Signature": sign_stripe(other, SECRET, timestamp=int(time.time()))},
        )  # fmt: skip
        assert ignored.status_code == 200
        await running.settle()
        async with running.deps.database.uow() as uow:
            assert await uow.webhooks.get("stripe", "evt_e2e_2") is None
            assert await uow.webhooks.get("stripe", "evt_e2e_3") is None
            ignored_event = await uow.webhooks.get("stripe", "evt_e2e_4")
            alerts = await uow.alerts.listing(statuses=None, limit=10, now=datetime.now(UTC))
        assert ignored_event is not None and ignored_event.processed_at is not None
        assert len(alerts) == 1
        assert len(local_slack.calls_to("chat.postMessage")) == 1
        orb = await running.http.post("/webhooks/orb", content=b"{}")
        assert orb.status_code == 404  # no ORB_WEBHOOK_SECRET: nothing can be verified


def test_scan_cli_json_lines_exit_zero_and_no_progress_when_piped(tmp_path: Path) -> None:
    """`scan --json` piped: every line is exactly the DESIGN §5 object, the summary is on
    stderr without a progress bar, and the exit code is 0."""
    done = _run("scan", "--json", cwd=tmp_path, DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/s.db")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines and all(set(obj) == KEYS for obj in lines)
    assert all(obj["severity"] in ("low", "medium", "high") for obj in lines)
    assert "scanning ▕" not in done.stderr and "\r" not in done.stderr
    assert "complete" in done.stderr


def test_scan_cli_post_without_a_channel_is_a_configuration_error(tmp_path: Path) -> None:
    """`scan --post` without ONCALL_CHANNEL says what is missing and exits 2."""
    done = _run("scan", "--post", cwd=tmp_path, DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/s.db")
    assert done.returncode == 2
    assert "ONCALL_CHANNEL is required" in done.stderr


async def test_a_dispute_whose_account_cannot_be_looked_up_now_waits_instead_of_a_wrong_key(
    local_slack: LocalSlack,
    fake_providers: FakeProviders,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stripe failing while we look the disputed customer up: the event is kept (200, stored)
    but not alerted under the bare `cus_…` ID; the webhooks job tries again and the alert is
    keyed by our account ID, once."""
    account = fake_providers.world.account("acct_fabrikam")
    assert account is not None and account.stripe_customer_id
    now = int(time.time())
    body = json.dumps({
        "id": "evt_later_1", "object": "event", "type": "charge.dispute.created", "created": now,
        "data": {"object": {"id": "dp_later1", "object": "dispute", "amount": 2500,
                            "currency": "usd", "reason": "fraudulent", "status": "needs_response",
                            "charge": "ch_later1", "customer": account.stripe_customer_id,
                            "created": now, "evidence_details": {"due_by": now + 5 * 86400}}},
    }).encode()  # fmt: skip
    async with serve_app(
        local_slack, f"sqlite+aiosqlite:///{tmp_path}/later.db",
        providers=fake_providers.clients(), oncall_channel="C0ONCALL",
        stripe_webhook_secret=SECRET, scan_interval_minutes=0,
    ) as running:  # fmt: skip
        fake_providers.stripe.fail(500, times=None, path=r"^/v1/customers")
        headers = {"Stripe-Signature": sign_stripe(body, SECRET, timestamp=now)}
        first = await running.http.post("/webhooks/stripe", content=body, headers=headers)
        assert first.status_code == 200
        await running.settle()
        async with running.deps.database.uow() as uow:
            assert await uow.alerts.listing(statuses=None, limit=10, now=datetime.now(UTC)) == []
            stored = await uow.webhooks.get("stripe", "evt_later_1")
        assert stored is not None and stored.processed_at is None

        fake_providers.stripe.clear_faults()
        # The job's own wait for a crashed replica's events, skipped for the test.
        monkeypatch.setattr("bot.services.webhooks.RECONCILE_AFTER", timedelta(0))
        assert running.deps.scheduler is not None
        await running.deps.scheduler.run_now("webhooks")
        async with running.deps.database.uow() as uow:
            alerts = await uow.alerts.listing(statuses=None, limit=10, now=datetime.now(UTC))
        assert [a.account_id for a in alerts] == ["acct_fabrikam"]


ROOT = Path(__file__).resolve().parents[2]
#: The planted stories alone (the provider process's world with these arguments).
STORIES = build_world(ordinary_accounts=0, population=False)


@contextlib.contextmanager
def provider_process(*faults: str) -> Iterator[dict[str, str]]:
    """The sandbox providers served by their own process with scripted `--fault`s; yields the
    environment that points the app at them (real-provider mode, paced fast enough)."""
    args = [sys.executable, "-m", "tests.support.provider_process", "--ordinary", "0",
            "--no-population", *(a for f in faults for a in ("--fault", f))]  # fmt: skip
    proc = subprocess.Popen(
        args, cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.communicate(timeout=10)[1][-2000:]
        info = json.loads(line)
        yield {**info["env"], "STRIPE_RATE_LIMIT": "500", "ORB_RATE_LIMIT": "500",
               "METRONOME_RATE_LIMIT": "500"}  # fmt: skip
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_scan_cli_rides_out_a_provider_429ing_for_a_while(tmp_path: Path) -> None:
    """Stripe answers 25 charge lists with 429 and `Retry-After: 1`: the scan slows down, still
    scans every account, says how many calls were rate limited, and exits 0."""
    with provider_process("stripe:429:/v1/charges:25:1") as env:
        done = _run("scan", "--json", cwd=tmp_path,
                    DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/s.db", **env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"complete: {len(STORIES.accounts)} accounts" in done.stderr
    assert "rate-limited" in done.stderr and "accounts could not be scanned" not in done.stderr
    assert {json.loads(line)["account"] for line in done.stdout.splitlines()} >= {
        "acct_globex", "acct_fabrikam", "acct_contoso"
    }  # fmt: skip


def test_scan_cli_exits_3_naming_the_accounts_a_provider_never_served(tmp_path: Path) -> None:
    """Orb answers every invoice list with 429 for good: the Orb-billed accounts could not be
    scanned and the summary names them, the others' alerts are still printed, exit code 3."""
    orb_billed = {a.account_id for a in STORIES.accounts if a.orb_customer_id}
    assert orb_billed
    with provider_process("orb:429:/v1/invoices:forever:0") as env:
        done = _run("scan", "--json", cwd=tmp_path,
                    DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/s.db", **env)  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "INCOMPLETE" in done.stderr
    failed = next(
        line for line in done.stderr.splitlines() if "accounts could not be scanned:" in line
    )
    assert all(account in failed for account in orb_billed), failed
    assert f"{len(orb_billed)} accounts could not be scanned" in failed
    assert "acct_fabrikam" in {json.loads(line)["account"] for line in done.stdout.splitlines()}
    assert "Traceback" not in done.stderr
