"""Anomaly alerts end to end: the app served over HTTP with the local Slack, the fake providers
on loopback, a scan into `ONCALL_CHANNEL`, dedupe and escalation, the buttons and what they
teach, `/billing alerts`, precision on `/metrics`, and a provider that answers 429 mid-scan."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest_asyncio
from sqlalchemy import update

from bot.services.scan import ScanService, ScanSummary
from handlers.alert_views import ACK_ACTION, NOT_ANOMALY_ACTION, SNOOZE_ACTION
from handlers.alerts import scan_service
from integrations.sandbox.metronome_server import MetronomeSandboxServer
from integrations.sandbox.orb_server import OrbSandboxServer
from integrations.sandbox.slack import LocalSlack
from integrations.sandbox.stripe_server import StripeSandboxServer
from integrations.sandbox.world import SandboxWorld, build_world
from tests.support.app import RunningApp, serve_app
from tests.support.fakeserver import FakeProviderServer
from tests.support.providers import FIXED_NOW, KEYS, FakeProviders
from tests.support.slack import FORM, block_actions_body, signed_headers

ONCALL = "C0ONCALL"


@cache
def story_world() -> SandboxWorld:
    """The planted stories only (fast to scan): four of them are anomalies."""
    return build_world(now=FIXED_NOW, ordinary_accounts=0, population=False)


@dataclass
class Scanning:
    running: RunningApp
    providers: FakeProviders

    def service(self) -> ScanService:
        service = scan_service(self.running.deps, holder="test")
        service.clock = lambda: FIXED_NOW.replace(hour=6)
        return service

    async def scan(self, *, post: bool = True) -> ScanSummary:
        summary = await self.service().run(post=post, today=FIXED_NOW.date())
        await outbox_empty(self.running)
        return summary


async def outbox_empty(running: RunningApp, timeout: float = 30.0) -> None:  # noqa: ASYNC109
    """Wait until the outbox worker delivered everything (it paces posts 1 s per channel)."""
    import asyncio
    import time

    delivery = running.deps.delivery
    assert delivery is not None
    deadline = time.monotonic() + timeout
    while (await delivery.health())["pending"]:
        if time.monotonic() > deadline:
            from sqlalchemy import select

            from bot.storage.tables import OutboxRow

            async with running.deps.database.uow() as uow:
                rows = (await uow.session.scalars(select(OutboxRow))).all()  # type: ignore[attr-defined]
                stuck = [(r.key, r.attempts, r.last_error) for r in rows if r.status == "pending"]
            raise AssertionError(f"the outbox did not empty: {stuck}")
        delivery.wake()
        await asyncio.sleep(0.1)


@pytest_asyncio.fixture
async def scanning(local_slack: LocalSlack, database_url: str) -> AsyncIterator[Scanning]:
    """The app with the story world's fake providers and an on-call channel."""
    world = story_world()
    fakes = FakeProviders(
        world,
        FakeProviderServer(StripeSandboxServer(world, api_key=KEYS["stripe"])),
        FakeProviderServer(OrbSandboxServer(world, api_key=KEYS["orb"])),
        FakeProviderServer(MetronomeSandboxServer(world, api_key=KEYS["metronome"])),
    )
    for server in fakes.servers().values():
        await server.start()
    clients = fakes.clients()
    try:
        async with serve_app(
            local_slack, database_url, providers=clients,
            oncall_channel=ONCALL, scan_interval_minutes=0,
        ) as running:  # fmt: skip
            from bot.app import startup

            await startup(running.app, background=False)
            yield Scanning(running, fakes)
    finally:
        for server in fakes.servers().values():
            await server.stop()


def _posts(slack: LocalSlack, channel: str = ONCALL) -> list[dict[str, Any]]:
    return [c.args for c in slack.calls_to("chat.postMessage") if c.args.get("channel") == channel]


async def _alert_ids(running: RunningApp) -> dict[tuple[str, str], int]:
    async with running.deps.database.uow() as uow:
        alerts = await uow.alerts.listing(statuses=None, limit=100, now=FIXED_NOW)
    return {(a.account_id, a.kind): a.id for a in alerts}


async def test_a_scan_posts_its_alerts_once_and_a_rescan_posts_nothing(scanning: Scanning) -> None:
    """The stories' anomalies reach on-call (a burst due together as one digest) with the
    shape of each; scanning again finds the same alerts (same account, kind and period) and
    says nothing new."""
    slack = scanning.running.slack
    first = await scanning.scan()
    assert first.complete and first.accounts == len(story_world().accounts)
    ids = await _alert_ids(scanning.running)
    assert {("acct_globex", "duplicate_charge"), ("acct_contoso", "payment_failed"),
            ("acct_fabrikam", "dispute_opened")} <= set(ids)  # fmt: skip
    posts = _posts(slack)
    text = json.dumps([p["blocks"] for p in posts])
    for account, _kind in ids:
        assert account in text
    assert any("new billing alerts" in p["text"] for p in posts) or len(posts) == len(ids)
    uploads = slack.calls_to("files.completeUploadExternal")
    assert uploads and all(c.ok for c in uploads)  # the spike's chart went out with it
    assert all(f.content and f.content.startswith(b"\x89PNG") for f in slack.files.values())

    second = await scanning.scan()
    assert second.alerts == first.alerts and second.new_alerts == 0
    assert len(_posts(slack)) == len(posts)


async def test_an_alert_that_gets_worse_is_updated_and_renotified(scanning: Scanning) -> None:
    """When an alert's impact grows past what on-call was told, its message is updated and a
    reply in its thread is also sent to the channel; a repeat that is no worse stays quiet."""
    running, slack = scanning.running, scanning.running.slack
    await scanning.scan()
    ids = await _alert_ids(running)
    alert_id = ids[("acct_fabrikam", "dispute_opened")]
    async with running.deps.database.uow() as uow:  # on-call was told of a smaller dispute
        from bot.storage.tables import AlertRow

        await uow.session.execute(  # type: ignore[attr-defined]
            update(AlertRow).where(AlertRow.id == alert_id)
            .values(notified_impact="100.00", notified_severity="low")
        )  # fmt: skip
        await uow.commit()
    updates_before = len(slack.calls_to("chat.update"))

    await scanning.scan()

    replies = [p for p in _posts(slack) if p.get("thread_ts")]
    assert len(replies) == 1 and replies[0].get("reply_broadcast") in (True, "true", "1")
    assert "Got worse" in replies[0]["text"] and "acct_fabrikam" in replies[0]["text"]
    assert len(slack.calls_to("chat.update")) == updates_before + 1
    await scanning.scan()
    assert len([p for p in _posts(slack) if p.get("thread_ts")]) == 1


async def _click(running: RunningApp, action_id: str, alert_id: int, user: str) -> None:
    body = block_actions_body(
        action_id, str(alert_id), user_id=user, channel_id=ONCALL,
        response_url=running.slack.response_url(f"click{alert_id}{action_id}"),
    )  # fmt: skip
    response = await running.post_slack(body, signed_headers(body, content_type=FORM))
    assert response.status_code == 200
    await running.settle()
    await outbox_empty(running)


async def test_buttons_update_the_message_say_who_and_are_stored(scanning: Scanning) -> None:
    """Acknowledge, Snooze 24h and Not an anomaly each update the alert's message with who
    pressed it, answer the clicker privately, and are kept; precision follows the answers."""
    running, slack = scanning.running, scanning.running.slack
    await scanning.scan()
    ids = await _alert_ids(running)
    dispute = ids[("acct_fabrikam", "dispute_opened")]
    duplicate = ids[("acct_globex", "duplicate_charge")]

    await _click(running, ACK_ACTION, dispute, "U0ONCALL1")
    await _click(running, SNOOZE_ACTION, ids[("acct_contoso", "payment_failed")], "U0ONCALL2")
    await _click(running, NOT_ANOMALY_ACTION, duplicate, "U0ONCALL1")

    updated = slack.calls_to("chat.update")[-1].args
    assert "<@U0ONCALL1>" in json.dumps(updated["blocks"])
    reply = running.responses(f"click{duplicate}{NOT_ANOMALY_ACTION}")[-1]
    assert reply["response_type"] == "ephemeral" and "won't alert again" in reply["text"]
    async with running.deps.database.uow() as uow:
        assert (await uow.alerts.get(dispute)).status == "acknowledged"  # type: ignore[union-attr]
        assert (await uow.alerts.get(duplicate)).status_by == "U0ONCALL1"  # type: ignore[union-attr]
        assert len(await uow.alerts.suppressions(["acct_globex"])) == 1
    stats = await running.answer("alerts stats")
    assert "precision" in json.dumps(stats)
    metrics = (await running.http.get("/metrics")).text
    assert 'billing_triage_alert_precision{kind="dispute_opened"} 1' in metrics
    assert 'billing_triage_alert_precision{kind="duplicate_charge"} 0' in metrics


async def test_not_an_anomaly_stops_the_pattern_until_it_changes(scanning: Scanning) -> None:
    """After "Not an anomaly", the next scans no longer find that pattern on that account;
    `/billing alerts` lists what is still open."""
    running = scanning.running
    await scanning.scan()
    ids = await _alert_ids(running)
    await _click(running, NOT_ANOMALY_ACTION, ids[("acct_globex", "duplicate_charge")], "U0X1")

    again = await scanning.scan()

    async with running.deps.database.uow() as uow:
        seen = await uow.alerts.for_run(again.run_id, after_id=0, limit=100)
    assert ("acct_globex", "duplicate_charge") not in {(a.account_id, a.kind) for a in seen}
    listing = json.dumps(await running.answer("alerts"))
    assert "acct_fabrikam" in listing and "acct_globex" not in listing
    assert "acct_globex" in json.dumps(await running.answer("alerts all"))


async def test_a_provider_answering_429_slows_the_scan_but_drops_no_account(
    scanning: Scanning,
) -> None:
    """Stripe rate limits 30 requests in a row (Retry-After 0): the scan slows down (its
    limiter halves) and still scans every account."""
    scanning.providers.stripe.fail(429, retry_after="0", times=30, path="/v1/(invoices|charges)")
    service = scanning.service()

    summary = await service.run(post=False, today=FIXED_NOW.date())

    assert summary.complete, summary
    assert summary.accounts == len(story_world().accounts) and not summary.failed_accounts
    assert summary.throttled["stripe"] >= 20
    assert service.limiters["stripe"].decreases >= 1


async def test_alerts_command_with_nothing_to_show(running_app: RunningApp) -> None:
    """`/billing alerts` on a quiet system says so; a bad scope is a usage error."""
    assert "No open alerts" in (await running_app.answer("alerts"))["text"]
    bad = await running_app.answer("alerts soon", key="bad")
    assert "takes `open`, `all` or `stats`" in bad["text"]
