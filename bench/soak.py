"""Load and soak (issue 11): a mixed load at a stated rate against one `billing-triage serve`
on PostgreSQL, with faults injected on a schedule, for `--minutes` (default 10).

The load, in the proportions of `MIX`: account lookups, explanations, drafts, refund requests
each approved by a finance approver, Stripe dispute webhooks; the app's own anomaly scan runs
every minute inside `serve`. The providers are the sandbox's Stripe, Orb and Metronome on
loopback (50 ms per request), Slack is the fake Web API, PostgreSQL a temporary cluster. Faults,
each minute in turn: Stripe answering 500 for a burst of requests, Orb hanging (timeouts), Slack
answering 429 with Retry-After to postMessage and update, and a PostgreSQL restart.

Printed at the end: requests sent and answered, throughput, ack p50/p99, unknown errors shown to
users, RSS of the app after warm-up and at the end, and LOST approvals (a request approved but not
executed with exactly one refund at Stripe, or its decision never shown) and LOST alerts (a
dispute whose alert was never stored or never posted).

    python bench/soak.py [--minutes 10] [--rate 4] [--warmup 60]

Budget: zero lost approvals or alerts; RSS at the end within 10% of its value after warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bot.domain.approvals import RequestState  # noqa: E402
from bot.domain.webhooks import sign_stripe  # noqa: E402
from bot.storage.db import Database  # noqa: E402
from bot.storage.migrate import upgrade  # noqa: E402
from handlers.approval_views import APPROVE_ACTION  # noqa: E402
from integrations.sandbox.metronome_server import (  # noqa: E402
    SANDBOX_CREDIT_PRODUCT_ID,
    MetronomeSandboxServer,
)
from integrations.sandbox.orb_server import OrbSandboxServer  # noqa: E402
from integrations.sandbox.providers import SANDBOX_KEYS  # noqa: E402
from integrations.sandbox.slack import LocalSlack  # noqa: E402
from integrations.sandbox.stripe_server import StripeSandboxServer  # noqa: E402
from integrations.sandbox.world import build_world  # noqa: E402
from tests.support.fakeserver import FakeProviderServer, Fault  # noqa: E402
from tests.support.postgres import TemporaryCluster  # noqa: E402
from tests.support.slack import (  # noqa: E402
    BOT_TOKEN,
    FORM,
    SIGNING_SECRET,
    block_actions_body,
    signed_headers,
    slash_command_body,
)

FINANCE, ONCALL = "C0FINANCE", "C0ONCALL"
APPROVER = "U0APPROVER1"
WEBHOOK_SECRET = "whsec_soak"
REQUEST_RE = re.compile(r"REQ-[A-Z2-7]{8}")
MIX = {"lookup": 40, "explain": 20, "draft": 10, "refund": 15, "webhook": 15}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Tally:
    """What the load did and saw."""

    acks: list[float] = field(default_factory=list)
    acks_by_kind: dict[str, list[float]] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    non_200: int = 0
    transport_errors: int = 0
    approved: list[tuple[str, str]] = field(default_factory=list)  # (request ID, charge)
    refund_refused: int = 0
    disputes: dict[str, str] = field(default_factory=dict)  # event ID -> account ID
    faults: list[str] = field(default_factory=list)


class Soak:
    """One soak run: the app, its fakes, the load and the faults."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.world = build_world(ordinary_accounts=60)
        self.tally = Tally()
        self.rng = random.Random(7)
        stripe_ids = [a for a in self.world.accounts if a.stripe_customer_id and a.plant is None]
        self.accounts = [a.account_id for a in stripe_ids if "aperture" not in a.account_id]
        self.charges: dict[str, list[str]] = {}
        self._seq = 0

    def _charges_of(self, account: str) -> list[str]:
        if account not in self.charges:
            data = self.world.stripe(account)
            self.charges[account] = [
                str(c["id"]) for c in (data.charges if data else [])
                if c["status"] == "succeeded" and not c.get("amount_refunded")
                and int(c["amount"]) >= 500
            ]  # fmt: skip
        return self.charges[account]

    async def run(self) -> None:
        """Start everything, load it, stop everything, report."""
        cluster = TemporaryCluster()
        admin = cluster.start()
        database_url = admin
        await upgrade(database_url)
        self.stripe = FakeProviderServer(
            StripeSandboxServer(self.world, api_key=SANDBOX_KEYS["stripe"]), latency=0.05
        )
        self.orb = FakeProviderServer(
            OrbSandboxServer(self.world, api_key=SANDBOX_KEYS["orb"]), latency=0.05
        )
        self.metronome = FakeProviderServer(
            MetronomeSandboxServer(self.world, api_key=SANDBOX_KEYS["metronome"]), latency=0.05
        )
        for server in (self.stripe, self.orb, self.metronome):
            server.record = False
            await server.start()
        self.slack = LocalSlack(token=BOT_TOKEN, users=None)
        await self.slack.start()
        port = _port()
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = Path(tempfile.mkdtemp()) / "serve.log"
        self.log = self.log_path.open("wb")
        foreign = ("SLACK_", "STRIPE_", "ORB_", "METRONOME_", "OPENAI_", "FINANCE_", "ONCALL_")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(foreign)},
            "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": self.slack.base_url, "DATABASE_URL": database_url,
            "STRIPE_API_KEY": SANDBOX_KEYS["stripe"], "STRIPE_API_BASE": self.stripe.url,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "ORB_API_KEY": SANDBOX_KEYS["orb"], "ORB_API_BASE": self.orb.url + "/v1",
            "METRONOME_API_KEY": SANDBOX_KEYS["metronome"],
            "METRONOME_API_BASE": self.metronome.url,
            "METRONOME_CREDIT_PRODUCT_ID": SANDBOX_CREDIT_PRODUCT_ID,
            "FINANCE_CHANNEL": FINANCE, "ONCALL_CHANNEL": ONCALL, "FINANCE_APPROVERS": APPROVER,
            "SCAN_INTERVAL_MINUTES": "1", "APPROVALS_RECONCILE_SECONDS": "5",
            "DUAL_APPROVAL_ABOVE": "100000", "LOG_LEVEL": "WARNING", "AUTO_MIGRATE": "0",
        }  # fmt: skip
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1", "--port", str(port),
            env=env, cwd=REPO, stdout=asyncio.subprocess.DEVNULL, stderr=self.log,
        )  # fmt: skip
        self.http = httpx.AsyncClient(base_url=self.url, timeout=30)
        try:
            await self._wait_up()
            rss = await self._load(cluster)
            await self._settle()
            await self._report(database_url, rss)
        finally:
            self.proc.terminate()
            await self.proc.wait()
            await self.http.aclose()
            await self.slack.stop()
            for server in (self.stripe, self.orb, self.metronome):
                await server.stop()
            cluster.stop()

    async def _wait_up(self) -> None:
        for _ in range(600):
            try:
                if (await self.http.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
        raise SystemExit("serve did not come up")

    # -- the load ----------------------------------------------------------------------------

    async def _post(
        self, body: str | bytes, headers: dict[str, str], path: str, kind: str = "other"
    ) -> httpx.Response:
        started = time.perf_counter()
        try:
            response = await self.http.post(path, content=body, headers=headers)
        except httpx.TransportError:
            self.tally.transport_errors += 1
            raise
        if path == "/slack/events":
            seconds = time.perf_counter() - started
            self.tally.acks.append(seconds)
            self.tally.acks_by_kind.setdefault(kind, []).append(seconds)
        if response.status_code != 200:
            self.tally.non_200 += 1
        return response

    async def _command(self, text: str, *, user: str, key: str) -> None:
        body = slash_command_body(text, user_id=user, response_url=self.slack.response_url(key))
        headers = dict(signed_headers(body, content_type=FORM))
        await self._post(body, headers, "/slack/events", kind=text.split()[0])

    def _account(self) -> str:
        return self.rng.choice(self.accounts)

    async def _one(self, kind: str) -> None:
        self._seq += 1
        n = self._seq
        self.tally.sent[kind] = self.tally.sent.get(kind, 0) + 1
        if kind in ("lookup", "explain", "draft"):
            verb = {"lookup": "status", "explain": "explain", "draft": "draft"}[kind]
            await self._command(f"{verb} {self._account()}", user="U0SUPPORT", key=f"c{n}")
        elif kind == "refund":
            await self._refund(n)
        else:
            await self._dispute(n)

    async def _refund(self, n: int) -> None:
        account = self._account()
        charges = self._charges_of(account)
        if not charges:
            return
        charge = self.rng.choice(charges)
        key = f"r{n}"
        await self._command(f"refund {account} 1 {charge} soak {n}", user=f"U0REQ{n:05d}", key=key)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for message in self.slack.messages:
                if message.channel == FINANCE and f"soak {n}" in json.dumps(message.blocks or ""):
                    found = REQUEST_RE.search(json.dumps(message.blocks) + (message.text or ""))
                    if found:
                        body = block_actions_body(
                            APPROVE_ACTION, found.group(0), user_id=APPROVER,
                            channel_id=FINANCE, message_ts=message.ts,
                            response_url=self.slack.response_url(f"a{n}"),
                        )  # fmt: skip
                        headers = dict(signed_headers(body, content_type=FORM))
                        await self._post(body, headers, "/slack/events", kind="approve click")
                        self.tally.approved.append((found.group(0), charge))
                        return
            replies = [r.args for r in self.slack.responses_to(key)]
            final = [r for r in replies if r.get("replace_original")]
            if final and "REQ-" not in json.dumps(final):
                self.tally.refund_refused += 1  # refused as asked (e.g. nothing left to refund)
                return
            await asyncio.sleep(0.25)

    async def _dispute(self, n: int) -> None:
        account = self._account()
        charges = self._charges_of(account)
        acct = self.world.account(account)
        if not charges or acct is None:
            return
        now = int(time.time())
        event_id = f"evt_soak_{n:06d}"
        body = json.dumps({
            "id": event_id, "object": "event", "type": "charge.dispute.created", "created": now,
            "data": {"object": {
                "id": f"dp_soak{n:06d}", "object": "dispute", "amount": 1500, "currency": "usd",
                "reason": "fraudulent", "status": "needs_response", "charge": charges[0],
                "customer": acct.stripe_customer_id, "created": now,
                "evidence_details": {"due_by": now + 5 * 86400}}},
        }).encode()  # fmt: skip
        headers = {"Stripe-Signature": sign_stripe(body, WEBHOOK_SECRET, timestamp=now),
                   "Content-Type": "application/json"}  # fmt: skip
        response = await self._post(body, headers, "/webhooks/stripe")
        if response.status_code == 200:
            self.tally.disputes[event_id] = account

    async def _faults(self, cluster: TemporaryCluster, minute: int) -> None:
        which = minute % 4
        if which == 1:
            self.stripe.add_fault(Fault("status", status=500, times=40, path=r"^/v1/"))
            self.tally.faults.append(f"min {minute}: Stripe 500 x40")
        elif which == 2:
            self.orb.add_fault(Fault("hang", times=6))
            self.tally.faults.append(f"min {minute}: Orb hangs x6")
        elif which == 3:
            for method in ("chat.postMessage", "chat.update"):
                self.slack.fail_next(method, error="ratelimited", retry_after=2, times=8)
            self.tally.faults.append(f"min {minute}: Slack 429 x8 on post and update")
        else:
            started = time.monotonic()
            await asyncio.to_thread(cluster.restart)
            down = time.monotonic() - started
            self.tally.faults.append(f"min {minute}: PostgreSQL restarted ({down:.1f} s)")

    async def _load(self, cluster: TemporaryCluster) -> dict[str, float]:
        kinds = [k for k, w in MIX.items() for _ in range(w)]
        total = self.args.minutes * 60
        started = time.monotonic()
        rss: dict[str, float] = {"start": _rss_mb(self.proc.pid)}
        tasks: set[asyncio.Task[None]] = set()
        next_fault, minute, i = started + 60, 1, 0
        while (now := time.monotonic()) - started < total:
            if now >= next_fault:
                tasks.add(asyncio.create_task(self._faults(cluster, minute)))
                minute += 1
                next_fault += 60
            if "warm" not in rss and now - started >= self.args.warmup:
                rss["warm"] = _rss_mb(self.proc.pid)
            task = asyncio.create_task(self._one(kinds[i % len(kinds)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
            await asyncio.sleep(max(0.0, started + i / self.args.rate - time.monotonic()))
        await asyncio.gather(*tasks, return_exceptions=True)
        rss["end"] = _rss_mb(self.proc.pid)
        rss.setdefault("warm", rss["end"])
        self.elapsed = time.monotonic() - started
        return rss

    async def _settle(self) -> None:
        await asyncio.sleep(30)  # retries, the reconciler and the outbox catch up

    # -- the report --------------------------------------------------------------------------

    async def _report(self, database_url: str, rss: dict[str, float]) -> None:
        db = Database(database_url)
        lost_approvals: list[str] = []
        async with httpx.AsyncClient(base_url=self.stripe.url) as stripe:
            auth = {"Authorization": f"Bearer {SANDBOX_KEYS['stripe']}"}
            async with db.uow() as uow:
                for request_id, charge in self.tally.approved:
                    request = await uow.requests.get(request_id)
                    refunds = (await stripe.get("/v1/refunds", params={"charge": charge},
                                                headers=auth)).json()["data"]  # fmt: skip
                    mine = [r for r in refunds if r["metadata"].get("request_id") == request_id]
                    posted = await uow.outbox.posted(f"request:{request_id}")
                    if (
                        request is None
                        or request.state is not RequestState.EXECUTED
                        or (len(mine) != 1 or posted is None)
                    ):
                        state = request.state.value if request else "missing"
                        lost_approvals.append(f"{request_id} {state} refunds={len(mine)}")
                wanted = set(self.tally.disputes.values())
                alerts = await uow.alerts.listing(statuses=None, limit=10_000, now=_now())
                stored = {a.account_id for a in alerts if a.kind == "dispute_opened"}
                unposted = [a for a in alerts if await uow.outbox.posted(f"alert:{a.id}") is None]
        await db.dispose()
        lost_alerts = sorted(wanted - stored) + [f"alert {a.id} never posted" for a in unposted]
        refs = sorted({
            m.group(1) for c in self.slack.calls
            for m in re.finditer(r"Something went wrong \(ref ([0-9a-f]+)\)", json.dumps(c.args))
        })  # fmt: skip
        unknown = len(refs)
        ms = sorted(x * 1000 for x in self.tally.acks)
        q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else [0.0] * 99
        sent = sum(self.tally.sent.values())
        growth = (rss["end"] - rss["warm"]) / rss["warm"] * 100 if rss["warm"] else 0.0
        print(f"soak: {self.args.minutes} min at {self.args.rate}/s; mix {self.tally.sent}")
        print(f"faults: {'; '.join(self.tally.faults)}")
        print(f"sent {sent} operations in {self.elapsed:.0f} s ({sent / self.elapsed:.2f}/s); "
              f"Slack acks {len(ms)}: p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms; non-200 answers "
              f"{self.tally.non_200}; transport errors {self.tally.transport_errors}")  # fmt: skip
        print(f"unknown errors shown to users: {unknown}; refunds refused as asked: "
              f"{self.tally.refund_refused}")  # fmt: skip
        self.log.flush()
        logged = self.log_path.read_text(errors="replace")
        for ref in refs:
            at = logged.find(f"ref={ref}")
            print(
                f"  ref {ref}: {logged[at : at + 600]!r}" if at >= 0 else f"  ref {ref}: not logged"
            )
        for kind, values in sorted(self.tally.acks_by_kind.items()):
            kq = sorted(v * 1000 for v in values)
            print(
                f"  ack {kind:>13}: n={len(kq)} p50 {kq[len(kq) // 2]:.1f} ms "
                f"p99 {kq[min(len(kq) - 1, int(len(kq) * 0.99))]:.1f} ms max {kq[-1]:.1f} ms"
            )
        print(f"RSS: start {rss['start']:.0f} MB, after warm-up {rss['warm']:.0f} MB, end "
              f"{rss['end']:.0f} MB ({growth:+.1f}% since warm-up, budget within 10%)")  # fmt: skip
        print(f"approvals: {len(self.tally.approved)} approved, lost {len(lost_approvals)}")
        for line in lost_approvals[:20]:
            print(f"  lost approval: {line}")
        print(f"alerts: {len(self.tally.disputes)} disputes sent for {len(wanted)} accounts, "
              f"lost {len(lost_alerts)}")  # fmt: skip
        for line in lost_alerts[:20]:
            print(f"  lost alert: {line}")


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def main() -> None:
    """Run the soak and print the figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=4.0, help="operations per second")
    parser.add_argument("--warmup", type=float, default=60, help="seconds before RSS is taken")
    args = parser.parse_args()
    tempfile.tempdir = tempfile.gettempdir()
    asyncio.run(Soak(args).run())


if __name__ == "__main__":
    main()
