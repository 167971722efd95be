"""Every bad refund or credit request of issue 8 (1), over signed HTTP: each gets a short,
clear ephemeral message, nothing is stored or posted, and the refusal is in the audit log."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bot.domain.identifiers import IdentifierKind
from bot.domain.models import CustomerRecord, ProviderName, ProviderSnapshot
from integrations.sandbox.slack import LocalSlack
from integrations.stripe import StripeBillingProvider
from tests.support.approvals import FINANCE, REQUESTER, ApprovalsApp, approvals_app, sqlite_url
from tests.support.providers import KEYS, TEST_POLICY, FakeProviders


async def _refused(app: ApprovalsApp, text: str, fragment: str, *, user: str = REQUESTER) -> str:
    """Run `text`; assert it was refused saying `fragment`, with nothing stored or posted and
    the refusal audited. Returns the refusal's audit `why`."""
    before = len(await app.stored())
    said = await app.say(text, user=user)
    assert fragment in said, said
    assert "Sent to finance" not in said and "Traceback" not in said
    assert len(await app.stored()) == before
    assert not [m for m in app.slack.messages if m.channel == FINANCE]
    async with app.running.deps.database.uow() as uow:
        refusals = [e for e in await uow.audit.list(limit=500) if e.action == "request.refused"]
    assert refusals, "the refusal was not audited"
    assert refusals[-1].actor == user and refusals[-1].slack_request
    return str(refusals[-1].detail["why"])


@pytest.mark.parametrize(
    ("text", "fragment", "why"),
    [
        ("refund acct_globex 0 oops", "more than zero", "invalid_amount"),
        ("refund acct_globex -5 oops", "negative", "invalid_amount"),
        ("refund acct_globex 1e3 oops", "not an amount", "invalid_amount"),
        ("refund acct_globex 25.001 oops", "more decimals than USD", "invalid_amount"),
        ("refund acct_globex 25 EUR oops", "not in USD", "invalid_amount"),
        ("refund acct_globex €25 oops", "not in USD", "invalid_amount"),
        ("refund acct_globex 25eur oops", "not in USD", "invalid_amount"),
        ("credit acct_globex 25 GBP oops", "not in USD", "invalid_amount"),
        ("refund acct_globex 99999999999 oops", "larger than any amount", "invalid_amount"),
        ("refund acct_nobody_here 25 oops", "No account matches", "account_not_found"),
        (
            "refund billing@aperture.example 25 oops",
            "matches several accounts",
            "ambiguous_account",
        ),
        (
            "refund acct_globex 25 ch_doesnotexist0 oops",
            "Stripe has no payment",
            "payment_not_found",
        ),
        (
            "refund acct_globex 25 py_1abc oops",
            "can't be refunded from here",
            "payment_unsupported",
        ),
        ("refund acct_globex 25 re_1abc oops", "is not a payment to refund", "invalid_identifier"),
    ],
)
async def test_a_bad_request_is_refused_and_audited(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path, text: str,
    fragment: str, why: str,
) -> None:  # fmt: skip
    """Amounts that are not positive, have too many decimals or name another currency than
    the payment's (`25 EUR` is never read as $25), unknown or ambiguous accounts, payments that
    don't exist or can't be refunded: refused with what to fix, nothing stored, audited. (These
    never reach the requests table; the refusals that do run on both databases below.)"""
    async with approvals_app(local_slack, sqlite_url(tmp_path), fake_providers) as app:
        assert await _refused(app, text, fragment) == why


async def test_a_payment_of_another_customer_is_never_refunded(
    local_slack: LocalSlack, fake_providers: FakeProviders, database_url: str
) -> None:
    """Globex's request naming Initech's charge is refused without naming the other customer."""
    async with approvals_app(local_slack, database_url, fake_providers) as app:
        [theirs, *_] = await app.payments("acct_initech")
        why = await _refused(
            app, f"refund acct_globex 10 {theirs.id} duplicate", "another Stripe customer"
        )
        assert why == "payment_of_another_customer"
        assert fake_providers.stripe.requests_to(r"^/v1/refunds$") == []


async def test_an_amount_above_what_is_left_counts_other_pending_requests(
    local_slack: LocalSlack, fake_providers: FakeProviders, database_url: str
) -> None:
    """Refundable is the payment minus what was refunded minus other pending requests on it: a
    second request that would exceed it is refused, naming the request that holds the rest."""
    async with approvals_app(local_slack, database_url, fake_providers) as app:
        [payment, *_] = await app.payments("acct_globex")
        whole = payment.refundable
        above = await app.say(f"refund acct_globex {(whole.amount + 1)} {payment.id} too much")
        assert "more than is left to refund" in above and str(whole) in above
        held = whole.amount - 5
        first = await app.request(f"refund acct_globex {held} {payment.id} most of it")
        assert (await app.get(first)).amount.amount == held
        said = await app.say(f"refund acct_globex 6 {payment.id} the rest and more")
        assert "more than is left to refund" in said and first in said and "$5.00" in said
        ok = await app.request(f"refund acct_globex 5 {payment.id} exactly the rest")
        assert len(await app.stored()) == 2 and ok != first


async def test_a_disputed_payment_is_not_refunded(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """A charge with an open dispute is answered through the dispute, not refunded on top."""
    async with approvals_app(local_slack, sqlite_url(tmp_path), fake_providers) as app:
        disputed = [p for p in await app.payments("acct_fabrikam") if p.disputed]
        assert disputed, "the sandbox story has a disputed charge"
        why = await _refused(app, f"refund acct_fabrikam 5 {disputed[0].id} sorry", "disputed")
        assert why == "payment_disputed"


async def test_a_requester_outside_requesters_is_refused(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """With REQUESTERS set, only they may ask; others are told so and audited."""
    async with approvals_app(
        local_slack, sqlite_url(tmp_path), fake_providers, requesters="U0ALLOWED"
    ) as app:
        why = await _refused(app, "refund acct_globex 5 oops", "not allowed to request")
        assert why == "access_denied"
        assert await app.request("refund acct_globex 5 oops", user="U0ALLOWED")


async def test_a_reason_is_required(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """A refund asked without a reason where no form can open (a mention) is refused; the
    command opens the form instead (see the modal tests)."""
    from tests.support.slack import app_mention

    async with approvals_app(local_slack, sqlite_url(tmp_path), fake_providers) as app:
        response = await app.running.event(
            app_mention("<@UBOTTRIAGE> refund acct_globex 25", ts="1700000001.000100"),
            event_id="EvNoReason",
        )
        assert response.status_code == 200
        await app.settle()
        [said] = local_slack.calls_to("chat.postEphemeral") or local_slack.calls_to(
            "chat.postMessage"
        )
        assert "Give the amount and a reason" in str(said.args)
        assert await app.stored() == []


async def test_no_finance_channel_means_no_requests(
    local_slack: LocalSlack, fake_providers: FakeProviders, tmp_path: Path
) -> None:
    """Without FINANCE_CHANNEL a request is refused before any provider is asked."""
    async with approvals_app(
        local_slack, sqlite_url(tmp_path), fake_providers, finance_channel=None
    ) as app:
        why = await _refused(app, "refund acct_globex 5 oops", "FINANCE_CHANNEL is not configured")
        assert why == "not_configured"


@dataclass
class OrbWithAStranger:
    """An Orb whose customer shares Globex's email but carries no account ID: the providers
    disagree about who the account is."""

    name: ProviderName = "orb"
    calls: list[str] = field(default_factory=list)

    def _customer(self) -> CustomerRecord:
        return CustomerRecord(
            "orb", "orb_stranger_1", None, name="Globex?", email="billing@globex.example"
        )

    async def find_customers(self, kind: IdentifierKind, value: str) -> list[CustomerRecord]:
        self.calls.append(value)
        if kind is IdentifierKind.EMAIL and value == "billing@globex.example":
            return [self._customer()]
        return []

    async def get_snapshot(self, customer: CustomerRecord) -> ProviderSnapshot:
        return ProviderSnapshot("orb", customer)

    async def aclose(self) -> None:
        return None


async def test_providers_that_disagree_about_identity_are_refused_with_the_ids_to_use(
    local_slack: LocalSlack, fake_providers: FakeProviders, database_url: str
) -> None:
    """An email that matched Globex in Stripe and a customer without an account ID in Orb is
    refused, listing the IDs that name exactly one customer; the account ID itself works."""
    stripe = StripeBillingProvider(
        KEYS["stripe"], base_url=fake_providers.stripe.url, policy=TEST_POLICY
    )
    clients = {"stripe": stripe, "orb": OrbWithAStranger()}
    async with approvals_app(local_slack, database_url, fake_providers, clients=clients) as app:
        said = await app.say("refund billing@globex.example 5 oops")
        assert "don't agree are one account" in said
        for identifier in ("acct_globex", "orb_stranger_1"):
            assert identifier in said
        assert await app.stored() == []
        assert await app.request("refund acct_globex 5 oops")
