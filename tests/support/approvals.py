"""What the approval tests share: the app served over HTTP with a finance channel and approvers,
real provider clients against the loopback sandbox servers, signed clicks on the approval
message, and reads of what the provider itself holds (refunds counted through its API)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from bot.domain.approvals import ApprovalRequest, RequestState
from bot.domain.identifiers import IdentifierKind
from bot.domain.models import Payment, PaymentStatus
from bot.domain.records import AuditEvent
from integrations.http import RetryPolicy
from integrations.sandbox.slack import LocalSlack, SlackMessage
from integrations.stripe import StripeBillingProvider
from tests.support.app import RunningApp, serve_app, wait_until
from tests.support.providers import KEYS, FakeProviders
from tests.support.slack import FORM, block_actions_body, signed_headers, view_submission_body

FINANCE = "C0FINANCE"
REQUESTER = "U0SUPPORT"
APPROVERS = ("U0FINANCE1", "U0FINANCE2", "U0FINANCE3")
REQUEST_RE = re.compile(r"REQ-[A-Z2-7]{8}")
#: Real retries, timeouts and deadlines in tenths of a second, so a hang costs under a second.
FAST_POLICY = RetryPolicy(
    connect_timeout=0.5,
    read_timeout=0.3,
    max_attempts=2,
    backoff_base=0.01,
    backoff_max=0.03,
    max_retry_after=0.05,
    deadline=1.5,
)


@dataclass
class ApprovalsApp:
    """The served app, the fake Slack and the fake providers of one test."""

    running: RunningApp
    providers: FakeProviders
    _clicks: int = 0

    @property
    def slack(self) -> LocalSlack:
        """The fake Slack Web API."""
        return self.running.slack

    async def settle(self) -> None:
        """Wait for the listeners' work, then deliver everything the outbox holds."""
        await self.running.settle()
        assert self.running.deps.delivery is not None
        assert await self.running.deps.delivery.drain()

    async def say(self, text: str, *, user: str = REQUESTER, key: str | None = None) -> str:
        """Run `/billing TEXT` as `user`; the text of what they finally see."""
        self._clicks += 1
        reply = await self.running.answer(text, user_id=user, key=key or f"cmd{self._clicks}")
        await self.settle()
        return str(reply.get("text") or "")

    async def request(self, text: str, *, user: str = REQUESTER, key: str | None = None) -> str:
        """Run a refund/credit command that must be accepted; the new request's ID."""
        said = await self.say(text, user=user, key=key)
        found = REQUEST_RE.search(said)
        assert found is not None and "Sent to finance" in said, said
        return found.group(0)

    def message(self, request_id: str) -> SlackMessage:
        """The approval message of `request_id` in the finance channel."""
        found = [
            m for m in self.slack.messages if m.channel == FINANCE and request_id in (m.text or "")
        ]
        assert len(found) == 1, f"{len(found)} approval messages for {request_id}"
        return found[0]

    def buttons(self, request_id: str) -> list[str]:
        """The action IDs of the buttons on the approval message now."""
        blocks = self.message(request_id).blocks or []
        return [e["action_id"] for b in blocks if b.get("type") == "actions" for e in b["elements"]]

    def message_text(self, request_id: str) -> str:
        """Everything the approval message says now."""
        message = self.message(request_id)
        texts = [message.text or ""]
        for block in message.blocks or []:
            texts.append(str(block))
        return "\n".join(texts)

    async def click(
        self, action_id: str, request_id: str, *, user: str, settle: bool = True
    ) -> list[dict[str, Any]]:
        """Click a button on the approval message as `user`; what they were told ephemerally."""
        self._clicks += 1
        key = f"click{self._clicks}"
        message = self.message(request_id)
        body = block_actions_body(
            action_id,
            request_id,
            user_id=user,
            channel_id=FINANCE,
            message_ts=message.ts,
            response_url=self.slack.response_url(key),
        )
        response = await self.running.post_slack(body, signed_headers(body, content_type=FORM))
        assert response.status_code == 200, response.text
        if settle:
            await self.settle()
        return self.running.responses(key)

    async def submit(
        self, callback_id: str, values: dict[str, Any], *, user: str, metadata: str = "",
        view_id: str = "V0SUBMIT0001", blocks: list[dict[str, Any]] | None = None,
    ) -> httpx.Response:  # fmt: skip
        """Submit a modal as `user`."""
        body = view_submission_body(
            callback_id, values, user_id=user, private_metadata=metadata, view_id=view_id,
            blocks=blocks,
        )  # fmt: skip
        return await self.running.post_slack(body, signed_headers(body, content_type=FORM))

    async def get(self, request_id: str) -> ApprovalRequest:
        """The request as stored."""
        assert self.running.deps.approvals is not None
        found = await self.running.deps.approvals.get(request_id)
        assert found is not None
        return found

    async def wait_state(self, request_id: str, state: RequestState) -> ApprovalRequest:
        """Wait until the request reaches `state`."""
        seen: list[ApprovalRequest] = []

        async def check() -> bool:
            seen.append(await self.get(request_id))
            return seen[-1].state is state

        for _ in range(200):
            if await check():
                return seen[-1]
            await self.settle()
        raise AssertionError(f"{request_id} is {seen[-1].state}, not {state}")

    async def trail(self, subject: str) -> list[AuditEvent]:
        """The audit events about `subject` (`request:REQ-…`, `viewers`, `account:…`)."""
        async with self.running.deps.database.uow() as uow:
            return await uow.audit.list(subject, limit=500)

    async def actions(self, request_id: str) -> list[str]:
        """The audit actions of one request, in order."""
        return [e.action for e in await self.trail(f"request:{request_id}")]

    async def stored(self) -> list[ApprovalRequest]:
        """Every request stored."""
        async with self.running.deps.database.uow() as uow:
            return await uow.requests.recent(limit=1000)

    async def run_job(self) -> None:
        """Run the expiry and reconcile job once, now."""
        assert self.running.deps.scheduler is not None
        assert await self.running.deps.scheduler.run_now("approvals")
        await self.settle()

    # -- the provider's side -----------------------------------------------------------------

    async def refunds_at_stripe(self, charge: str) -> list[dict[str, Any]]:
        """The refunds Stripe holds for `charge`, read through its API (`GET /v1/refunds`)."""
        async with httpx.AsyncClient(base_url=self.providers.stripe.url) as http:
            page = await http.get(
                "/v1/refunds",
                params={"charge": charge, "limit": "100"},
                headers={"Authorization": f"Bearer {KEYS['stripe']}"},
            )
        page.raise_for_status()
        return list(page.json()["data"])

    async def payments(self, account: str) -> list[Payment]:
        """The account's successful Stripe payments, newest first."""
        return await stripe_payments(self.providers, account)


async def stripe_payments(providers: FakeProviders, account: str) -> list[Payment]:
    """The successful Stripe payments of our account `account`, newest first."""
    client = StripeBillingProvider(KEYS["stripe"], base_url=providers.stripe.url)
    try:
        [customer] = await client.find_customers(IdentifierKind.ACCOUNT_ID, account)
        snapshot = await client.get_snapshot(customer)
    finally:
        await client.aclose()
    return [p for p in snapshot.payments if p.status is PaymentStatus.SUCCEEDED]


@asynccontextmanager
async def approvals_app(
    slack: LocalSlack,
    database_url: str,
    providers: FakeProviders,
    *,
    policy: RetryPolicy = FAST_POLICY,
    **overrides: Any,
) -> AsyncIterator[ApprovalsApp]:
    """The app with FINANCE_CHANNEL and three approvers (override any setting), talking to the
    loopback sandbox providers, with the outbox delivering without pacing."""
    settings: dict[str, Any] = {
        "finance_channel": FINANCE,
        "finance_approvers": ",".join(APPROVERS),
    }
    settings.update(overrides)
    async with serve_app(
        slack, database_url, providers=providers.clients(policy), **settings
    ) as running:
        # One post per second per channel is Slack's pace; tests need not wait for it.
        running.deps.delivery._pace = 0.0  # type: ignore[union-attr]
        yield ApprovalsApp(running, providers)


__all__ = ["ApprovalsApp", "approvals_app", "stripe_payments", "wait_until"]
