"""`/billing ACCOUNT` end to end: signed slash commands into the served app, real provider clients
over loopback HTTP to fake Stripe, Orb and Metronome servers speaking their wire formats, and the
answer as the local Slack stand-in received it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from integrations.sandbox.slack import LocalSlack
from tests.support.app import RunningApp, serve_app
from tests.support.fakeserver import Fault
from tests.support.providers import FakeProviders


@pytest_asyncio.fixture
async def app_with_providers(
    local_slack: LocalSlack, fake_providers: FakeProviders, database_url: str
) -> AsyncIterator[tuple[RunningApp, FakeProviders]]:
    """The served app wired to the three fake providers."""
    clients = fake_providers.clients()
    async with serve_app(local_slack, database_url, providers=clients) as running:
        yield running, fake_providers


def _content(args: dict[str, Any]) -> str:
    blocks = args.get("blocks") or []
    if isinstance(blocks, str):
        blocks = json.loads(blocks)
    return (args.get("text") or "") + "\n" + json.dumps(blocks, ensure_ascii=False)


async def _lookup(running: RunningApp, text: str, key: str = "cmd") -> str:
    return _content(await running.answer(text, key=key))


def _acct(providers: FakeProviders, account_id: str) -> Any:
    acct = providers.world.account(account_id)
    assert acct is not None
    return acct


async def test_lookup_by_account_id_shows_every_provider(
    app_with_providers: tuple[RunningApp, FakeProviders],
) -> None:
    """Our account ID finds the account in Orb and Stripe; both columns show with invoices."""
    running, providers = app_with_providers
    text = await _lookup(running, "acct_northwind")
    acct = _acct(providers, "acct_northwind")
    assert "Northwind" in text
    assert acct.orb_customer_id in text
    assert acct.stripe_customer_id in text
    assert "Recent invoices" in text
    assert "Share in channel" in text
    assert "unavailable" not in text


async def test_lookup_by_email_shows_the_open_dispute(
    app_with_providers: tuple[RunningApp, FakeProviders],
) -> None:
    """An email finds the Stripe customer; its open dispute shows with the evidence due date."""
    running, providers = app_with_providers
    text = await _lookup(running, "status billing@fabrikam.example")
    due = (providers.world.now.date()).toordinal() + 5
    from datetime import date

    assert "Open disputes" in text
    assert "evidence due " + date.fromordinal(due).strftime("%b %-d, %Y") in text


async def test_lookup_by_email_in_slack_markup(
    app_with_providers: tuple[RunningApp, FakeProviders],
) -> None:
    """An email sent as Slack `<mailto:…|…>` markup is understood."""
    running, _ = app_with_providers
    text = await _lookup(running, "<mailto:billing@contoso.example|billing@contoso.example>")
    assert "Contoso" in text
    assert "Failed payments" in text


async def test_lookup_by_stripe_customer_id(
    app_with_providers: tuple[RunningApp, FakeProviders],
) -> None:
    """A `cus_…` ID finds the account and, through its account ID, the other providers."""
    running, providers = app_with_providers
    acct = _acct(providers, "acct_globex")
    text = await _lookup(running, acct.stripe_customer_id)
    assert "Globex" in text
    assert "acct_globex" in text


async def test_lookup_by_orb_customer_id(
    app_with_providers: tuple[RunningApp, FakeProviders],
) -> None:
    """An Orb customer ID finds the account."""
    running, providers = app_with_providers
    acct = _acct(providers, "acct_northwind")
    text = await _lookup(running, acct.orb_customer_id)
    assert "acct_northwind" in text


async def test_lookup_by_metronome_customer_id(
    app_with_providers: tuple[RunningApp, FakeProviders],
) -> None:
    """A Metronome customer ID (UUID) finds the account and its commit balance."""
    running, providers = app_with_providers
    acct = _acct(providers, "acct_cyberdyne")
    text = await _lookup(running, acct.metronome_customer_id)
    assert "acct_cyberdyne" in text
    assert "Metronome" in text


async def test_account_in_three_providers_shows_side_by_side(
    app_with_providers: tuple[RunningApp, FakeProviders],
) -> None:
    """An account billed in all three providers shows three columns within Slack's limits."""
    running, providers = app_with_providers
    acct = _acct(providers, "acct_wonka")
    text = await _lookup(running, "acct_wonka")
    for customer_id in (acct.stripe_customer_id, acct.orb_customer_id, acct.metronome_customer_id):
        assert customer_id and customer_id in text


async def test_unknown_account_is_said_plainly(
    app_with_providers: tuple[RunningApp, FakeProviders],
) -> None:
    """An account no provider knows gets a clear message, not an error."""
    running, _ = app_with_providers
    text = await _lookup(running, "acct_does_not_exist")
    assert "No account matches `acct_does_not_exist`" in text
    text = await _lookup(running, "nobody@nowhere.example", key="k2")
    assert "No account matches" in text


async def test_ambiguous_email_lists_the_candidates(
    app_with_providers: tuple[RunningApp, FakeProviders],
) -> None:
    """An email shared by two customers of different accounts asks which one."""
    running, _ = app_with_providers
    text = await _lookup(running, "billing@aperture.example")
    assert "matches several accounts" in text
    assert "acct_aperture" in text and "acct_aperture_labs" in text


@pytest.mark.parametrize("text", ["jane@", "a/b", "ch_3MmlLrLkdIwHu7ix"])
async def test_malformed_identifiers_are_refused_without_calling_providers(
    app_with_providers: tuple[RunningApp, FakeProviders], text: str
) -> None:
    """A malformed identifier is explained and no provider is called."""
    running, providers = app_with_providers
    answer = await _lookup(running, f"status {text}")
    assert ":warning:" in answer
    assert all(not s.requests for s in providers.servers().values())


@pytest.mark.parametrize(
    ("provider", "fault", "shown"),
    [
        ("orb", Fault("status", status=500, times=None), "Orb: unavailable"),
        ("orb", Fault("status", status=503, times=None), "Orb: unavailable"),
        ("stripe", Fault("status", status=429, times=None), "Stripe: rate limited"),
        ("stripe", Fault("status", status=429, headers={"Retry-After": "1"}, times=None),
         "Stripe: rate limited"),
        ("orb", Fault("malformed", times=None), "Orb: unavailable"),
        ("orb", Fault("hang", times=None), "Orb: timed out"),
        ("orb", Fault("drop", times=None), "Orb: unavailable"),
    ],
)  # fmt: skip
async def test_a_failing_provider_is_named_and_the_rest_still_shows(
    app_with_providers: tuple[RunningApp, FakeProviders], provider: str, fault: Fault, shown: str
) -> None:
    """One provider failing in any way is named; the other provider's data is still shown."""
    running, providers = app_with_providers
    providers.servers()[provider].add_fault(fault)
    text = await _lookup(running, "acct_northwind")
    assert shown in text
    acct = _acct(providers, "acct_northwind")
    if provider == "orb":
        assert acct.stripe_customer_id in text  # Stripe still answered
    else:
        assert acct.orb_customer_id in text and "Recent invoices" in text


async def test_transient_faults_are_retried_invisibly(
    app_with_providers: tuple[RunningApp, FakeProviders],
) -> None:
    """A 429 with Retry-After and a 500, once each, are retried: the user sees a full answer."""
    running, providers = app_with_providers
    providers.stripe.add_fault(Fault("status", status=429, headers={"Retry-After": "0"}))
    providers.orb.add_fault(Fault("status", status=500))
    text = await _lookup(running, "acct_northwind")
    assert "unavailable" not in text and "rate limited" not in text
    assert "Recent invoices" in text


async def test_progress_is_shown_then_replaced(
    app_with_providers: tuple[RunningApp, FakeProviders],
) -> None:
    """The user first sees "Looking up …", then the answer replaces it."""
    running, _ = app_with_providers
    await _lookup(running, "acct_hooli")
    replies = running.responses()
    assert "Looking up `acct_hooli`" in replies[0]["text"]
    assert replies[-1]["replace_original"] is True


async def test_share_in_channel_posts_the_answer_publicly(
    app_with_providers: tuple[RunningApp, FakeProviders],
) -> None:
    """Clicking "Share in channel" re-runs the lookup and posts it in_channel."""
    from tests.support.slack import FORM, block_actions_body, signed_headers

    running, _ = app_with_providers
    await _lookup(running, "acct_hooli")
    final = running.responses()[-1]
    blocks = final["blocks"] if isinstance(final["blocks"], list) else json.loads(final["blocks"])
    share = next(b for b in blocks if b.get("block_id") == "share")
    value = share["elements"][0]["value"]
    body = block_actions_body(
        "share_in_channel",
        value,
        user_id="U0SUPPORT",
        response_url=running.slack.response_url("share"),
        is_ephemeral=True,
        block_id="share",
    )
    response = await running.post_slack(body, signed_headers(body, content_type=FORM))
    assert response.status_code == 200
    await running.settle(30)
    [posted] = running.responses("share")
    assert posted["response_type"] == "in_channel"
    assert "Hooli" in _content(posted)
