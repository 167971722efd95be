"""Exactly once across processes: two OS processes refund the same request at the same moment
against ONE shared provider process over loopback; Stripe makes one refund and both processes
get it. This is the setup a two-replica test of the app uses (`tests/support/provider_process`)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.support.providers import FIXED_NOW, small_world

ROOT = Path(__file__).resolve().parents[2]  # the worktree: `python -m tests.support…` works here

WORKER = """
import asyncio, json, os, sys
from decimal import Decimal
from bot.domain.identifiers import IdentifierKind
from bot.domain.money import Money
from integrations.http import RetryPolicy
from integrations.stripe import StripeBillingProvider

async def main():
    policy = RetryPolicy(max_attempts=40, backoff_base=0.02, backoff_max=0.1, deadline=20)
    client = StripeBillingProvider(os.environ["STRIPE_API_KEY"],
                                   base_url=os.environ["STRIPE_API_BASE"], policy=policy)
    try:
        [customer] = await client.find_customers(IdentifierKind.ACCOUNT_ID, sys.argv[1])
        result = await client.refund_payment(
            customer=customer, payment_id=sys.argv[2], amount=Money(Decimal("9.99")),
            request_id="R-2p", idempotency_key="bt:R-2p:refund")
        print(json.dumps({"id": result.object_id, "replayed": result.replayed}))
    finally:
        await client.aclose()

asyncio.run(main())
"""


async def _run(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, *args, env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_two_processes_racing_on_one_key_make_one_refund() -> None:
    """Two processes, one request, one shared provider: one refund, both see it."""
    data = small_world().stripe("acct_initech")
    assert data is not None
    charge = next(c for c in data.charges if c["status"] == "succeeded")
    provider = await _run(
        "-m", "tests.support.provider_process", "--ordinary", "20", "--write-delay", "0.5",
        "--now", FIXED_NOW.isoformat(), env=dict(os.environ),
    )  # fmt: skip
    try:
        assert provider.stdout is not None and provider.stderr is not None
        line = await asyncio.wait_for(provider.stdout.readline(), 30)
        assert line, (await provider.stderr.read()).decode()[-2000:]
        info: dict[str, Any] = json.loads(line)
        env = {**os.environ, **info["env"]}
        workers = [
            await _run("-c", WORKER, "acct_initech", charge["id"], env=env) for _ in range(2)
        ]
        outputs = await asyncio.wait_for(asyncio.gather(*(w.communicate() for w in workers)), 60)
        results = []
        for (out, err), worker in zip(outputs, workers, strict=True):
            assert worker.returncode == 0, err.decode()[-2000:]
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
        assert results[0]["id"] == results[1]["id"]
        assert sorted(r["replayed"] for r in results) == [False, True]
        auth = {"Authorization": f"Bearer {info['keys']['stripe']}"}
        async with httpx.AsyncClient(base_url=info["stripe"], headers=auth) as http:
            listed = (await http.get("/v1/refunds", params={"charge": charge["id"]})).json()
        mine = [r for r in listed["data"] if r["metadata"].get("request_id") == "R-2p"]
        assert [r["id"] for r in mine] == [results[0]["id"]]
    finally:
        if provider.returncode is None:
            provider.terminate()
        await asyncio.wait_for(provider.wait(), 10)
