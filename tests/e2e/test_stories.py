"""Every planted sandbox story, explained: the top finding is the planted cause with the planted
amount, and the findings explain the whole change. In process over the sandbox providers (the
real clients, the in-process transport), then once over the served app and loopback HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio

from bot.domain.findings import Finding, FindingKind
from bot.domain.identifiers import classify_account
from bot.domain.money import Money
from bot.domain.ports import BillingProvider
from bot.services.explain import explain_account
from bot.services.lookup import LookupService
from integrations.sandbox.providers import sandbox_providers
from integrations.sandbox.slack import LocalSlack
from integrations.sandbox.stories import STORY_SPECS, Story, proration_net, stories_of
from integrations.sandbox.world import SandboxWorld
from tests.support.app import serve_app
from tests.support.providers import FakeProviders, small_world

STORY_KEYS = [spec.key for spec in STORY_SPECS if spec.expected_finding]


def sandbox_clients(world: SandboxWorld) -> dict[str, BillingProvider]:
    """`sandbox_providers(world)`, with the clients' clock at the world's fixed now."""
    return sandbox_providers(world, clock=lambda: world.now)


@pytest_asyncio.fixture
async def lookup() -> AsyncIterator[LookupService]:
    """The lookup service over the in-process sandbox providers of the test world."""
    providers = sandbox_clients(small_world())
    try:
        yield LookupService(providers, clock=lambda: small_world().now)
    finally:
        for provider in providers.values():
            await provider.aclose()


def story(key: str) -> Story:
    """The planted story with this key, read from the test world."""
    return next(s for s in stories_of(small_world()) if s.key == key)


def top_finding(
    key: str, findings: tuple[Finding, ...], duplicates: tuple[Finding, ...]
) -> Finding:
    """The finding that should be the story's: duplicates stand apart from the change."""
    if story(key).expected_finding == FindingKind.DUPLICATE_CHARGE:
        assert duplicates, "no duplicate charge found"
        return duplicates[0]
    assert findings, "no findings"
    return findings[0]


@pytest.mark.parametrize("key", STORY_KEYS)
async def test_each_story_is_explained_by_its_planted_cause(
    lookup: LookupService, key: str
) -> None:
    """For each planted story the top finding is the planted cause with the planted amount, and
    the findings explain at least 95% of the change."""
    planted = story(key)
    assert planted.expected_finding is not None and planted.expected_amount is not None
    result = await explain_account(
        lookup=lookup, ident=classify_account(planted.account_id), invoice_id=None, llm=None
    )
    explanation = result.explanation
    assert explanation.current.id == planted.invoice_id
    assert explanation.previous is not None
    assert explanation.previous.id == planted.previous_invoice_id
    expected = Money(planted.expected_amount, explanation.current.total.currency)
    top = top_finding(key, explanation.findings, explanation.duplicate_payments)
    assert (top.kind, top.amount) == (FindingKind(planted.expected_finding), expected)
    if key == "plan_change_proration":
        # The upgrade's prorations are the second finding, with their exact net.
        second = explanation.findings[1]
        net = proration_net(small_world(), planted)
        assert net is not None
        assert (second.kind, second.amount) == (FindingKind.PRORATION, Money(net, "usd"))
    # The invoices' own lines account for every planted change.
    assert explanation.explained_share >= 0.95
    assert not result.missing


MIRRORED = {
    # story key: how its Stripe copies are recognised
    "mirrored_orb": "metadata",
    "mirrored_metronome": "external invoice ID",
    "prepaid_burn": "amount and period",
}


@pytest.mark.parametrize("key", sorted(MIRRORED))
async def test_mirrored_stories_are_one_invoice_billed_by_their_provider(
    lookup: LookupService, key: str
) -> None:
    """An account invoiced through Stripe is explained from its billing provider's invoice:
    every Stripe copy is recognised as a mirror (and how), none is counted as an invoice of its
    own, and the bill is paid as its copy was."""
    planted = story(key)
    result = await explain_account(
        lookup=lookup, ident=classify_account(planted.account_id), invoice_id=None, llm=None
    )
    snapshot, explanation = result.snapshot, result.explanation
    assert explanation.current.provider == planted.provider
    assert {inv.provider for inv in snapshot.invoices} == {planted.provider}
    billing = snapshot.get(planted.provider)
    stripe = snapshot.get("stripe")
    assert billing is not None and stripe is not None
    assert len(snapshot.mirrors) == len(billing.invoices)
    # Stripe's history starts by date, the provider's by period: at most one older copy is
    # left over, and it is counted nowhere.
    assert len(stripe.invoices) - len(snapshot.mirrors) == len(snapshot.unpaired_copies) <= 1
    assert {m.evidence for m in snapshot.mirrors} == {MIRRORED[key]}
    mirror = snapshot.mirror_of(explanation.current.id)
    assert mirror is not None and mirror.copy.total == explanation.current.total
    assert explanation.current.status.value == "paid"
    assert stripe.payments and not any(p.provider != "stripe" for p in snapshot.payments)
    assert "collected it as invoice" in " ".join(result.facts.lines)


async def test_prepaid_burn_says_the_commit_burns_twice_as_fast(lookup: LookupService) -> None:
    """Same total, doubled usage paid from the commit: the explanation says so, with what is
    left and when it runs out, never "nothing changed"."""
    planted = story("prepaid_burn")
    result = await explain_account(
        lookup=lookup, ident=classify_account(planted.account_id), invoice_id=None, llm=None
    )
    explanation = result.explanation
    assert explanation.change.is_zero()
    burn = explanation.prepaid
    assert burn is not None and burn.rate is not None and burn.remaining is not None
    assert abs(burn.rate - 2) < Decimal("0.01")
    assert burn.periods_left is not None and abs(burn.periods_left - Decimal("2.5")) < 1
    assert burn.runs_out is not None
    text = result.deterministic
    assert text.startswith("The total is unchanged, but usage paid from prepaid credit grew")
    assert "(2× as fast)" in text and "runs out around" in text
    assert "Nothing changed" not in text


def _content(args: dict[str, Any]) -> str:
    blocks = args.get("blocks") or []
    if isinstance(blocks, str):
        blocks = json.loads(blocks)
    return (args.get("text") or "") + "\n" + json.dumps(blocks, ensure_ascii=False)


async def test_explain_over_slack_shows_each_storys_amount(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Any
) -> None:
    """`/billing explain <story account>` answers with the planted finding's amount."""
    async with serve_app(
        local_slack,
        f"sqlite+aiosqlite:///{tmp_path}/stories.db",
        providers=fake_providers.clients(),
    ) as running:
        for key in STORY_KEYS:
            planted = story(key)
            assert planted.expected_amount is not None
            response = await running.command(f"explain {planted.account_id}", key=key)
            assert response.status_code == 200
            await running.settle(30)
            calls = running.slack.responses_to(key)
            assert calls and all(c.ok for c in calls), f"{key}: Slack refused a reply"
            text = _content(calls[-1].args)
            amount = Money(planted.expected_amount, "usd").format()
            assert amount in text, f"{key}: {amount} not shown"
            assert planted.invoice_id is not None and planted.invoice_id in text
            label = {"stripe": "Stripe", "orb": "Orb", "metronome": "Metronome"}[planted.provider]
            assert f"billed by {label}" in text, f"{key}: not billed by {label}"
            if key in MIRRORED:
                assert "collected by Stripe as" in text, f"{key}: the Stripe copy is not named"
