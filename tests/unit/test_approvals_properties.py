"""Hypothesis over what requesters type and submit (issue 8): thousands of command texts and
modal submissions, built from valid and broken pieces, go through the real parser, form
checks and service (with an in-memory Stripe and a real SQLite database). Never a traceback —
only our own user-facing errors — and every request that is stored is a valid one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from bot.domain.approvals import ApprovalRequest, ApprovalRules
from bot.domain.commands import CreditCommand, RefundCommand, parse_command
from bot.domain.identifiers import classify_account
from bot.domain.money import AmountInput, exponent
from bot.errors import BotError
from bot.services.access import AccessService
from bot.services.approvals import Actor, ApprovalService, RequestDraft
from bot.services.lookup import LookupService
from bot.storage.db import Database
from bot.storage.migrate import upgrade
from bot.storage.tables import ApprovalRequestRow
from handlers.approvals import draft_from_form, form_errors
from tests.support.fake_billing import stocked

REQUESTERS = ["U0REQ1", "U0REQ2"]
ACCOUNTS = [
    *["acct_a", "acct_b", "acct_yen", "a@example.com", "shared@example.com", "acct_none"],
    *["cus_a", "cus_b", "<mailto:b@example.com|b@example.com>", "bad account", ""],
]
PAYMENTS = [
    *["ch_a1", "ch_a2", "ch_b1", "ch_bd", "ch_y1", "in_a1", "in_zz", "ch_nope", "py_1"],
    *["pi_x", "re_1", "cus_a", "ch_abig", "ch_bbig"],
]
AMOUNTS = [
    *["25", "0", "-5", "1e3", "12.5", "15.001", "99.99", "100", "100.01", "$10", "€10"],
    *["10 EUR", "EUR 10", "¥500", "5000", "25.00 USD", "1,000", "abc", "NaN", "$", ""],
]

words = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=30,
)
amounts = st.one_of(
    st.sampled_from(AMOUNTS),
    st.decimals(min_value=Decimal("-10"), max_value=Decimal("200"), places=3).map(str),
    words,
)


class World:
    """One database, one fake Stripe and the service, for every example of a test."""

    def __init__(self, runner: asyncio.Runner, url: str) -> None:
        self.runner = runner
        runner.run(upgrade(url))
        self.db = Database(url)
        self.stripe = stocked()
        self.service = ApprovalService(
            store=self.db,
            lookup=LookupService({"stripe": self.stripe}),
            providers={"stripe": self.stripe},
            access=AccessService(None, requesters=REQUESTERS),
            rules=ApprovalRules(),
            channel="C0FINANCE",
            holder="hypothesis",
        )

    def count(self) -> int:
        """How many requests are stored."""

        async def read() -> int:
            async with self.db.engine.connect() as connection:
                total = await connection.scalar(
                    select(func.count()).select_from(ApprovalRequestRow)
                )
                return int(total or 0)

        return self.runner.run(read())

    def holding(self, payment_id: str) -> list[ApprovalRequest]:
        """Unfinished requests on one payment."""

        async def read() -> list[ApprovalRequest]:
            async with self.db.uow() as uow:
                return await uow.requests.holding(payment_id)

        return self.runner.run(read())

    def create(self, draft: RequestDraft, user: str) -> ApprovalRequest | None:
        """The stored request, or None when refused with one of our own errors."""
        try:
            return self.runner.run(self.service.create(draft, actor=Actor(user, "tr")))
        except BotError:
            return None

    def check(self, request: ApprovalRequest, draft: RequestDraft, user: str) -> None:
        """Everything a stored request must be."""
        assert user in REQUESTERS
        assert request.amount.amount > 0
        assert -request.amount.amount.as_tuple().exponent <= exponent(request.amount.currency)
        assert request.reason.strip() and len(request.reason) <= 500
        assert draft.amount is not None
        assert request.amount.amount == draft.amount.value
        if draft.amount.currencies is not None:
            assert request.amount.currency in draft.amount.currencies
        customer = self.stripe.customers[request.customer_id]
        assert customer.account_id == request.account_id
        if request.kind == "refund":
            payment = self.stripe.payments[str(request.payment_id)]
            assert payment.customer_id == request.customer_id and not payment.disputed
            assert payment.amount.currency == request.amount.currency
            held = [r.amount.amount for r in self.holding(payment.id)]
            assert sum(held) <= payment.refundable.amount
        else:
            assert request.amount.currency == (customer.currency or "usd")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A fresh world for one property test (shared by its examples)."""
    with asyncio.Runner() as runner:
        made = World(runner, f"sqlite+aiosqlite:///{tmp_path}/props.db")
        try:
            yield made
        finally:
            runner.run(made.db.dispose())


SETTINGS = settings(
    max_examples=1200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


GOOD_ACCOUNTS = ["acct_a", "acct_b", "acct_yen", "a@example.com", "cus_b"]
GOOD_PAYMENTS = {"acct_a": ["ch_a1", "ch_a2", "in_a1", "ch_abig"], "a@example.com": ["ch_abig"],
                 "acct_b": ["ch_b1", "ch_bbig", "ch_bd"], "cus_b": ["ch_bbig"],
                 "acct_yen": ["ch_y1"]}  # fmt: skip
good_amounts = st.one_of(
    st.decimals(min_value=Decimal("0.01"), max_value=Decimal("500"), places=2).map(str),
    st.integers(1, 6000).map(str),
    st.sampled_from(["$10", "25.00 USD", "1,000", "100", "100.01", "15", "25.01"]),
)


@st.composite
def command_texts(draw: st.DrawFn) -> str:
    """Refund and credit commands: mostly well-formed (so that many are stored and checked),
    some from broken pieces, some garbage."""
    roll = draw(st.integers(0, 9))
    if roll == 0:
        return draw(words)
    sub = draw(st.sampled_from(["refund", "credit", "REFUND", "refund", "refund"]))
    if roll <= 6:  # well-formed: the checks that need the provider decide
        account = draw(st.sampled_from(GOOD_ACCOUNTS))
        parts = [sub, account, draw(good_amounts)]
        if draw(st.integers(0, 4)) == 0:
            parts.append(draw(st.sampled_from(["USD", "usd", "EUR", "JPY"])))
        if sub.lower() == "refund" and draw(st.booleans()):
            parts.append(draw(st.sampled_from(GOOD_PAYMENTS[account] + ["ch_b1", "ch_y1"])))
        parts.append(draw(st.sampled_from(["duplicate charge", "goodwill", "outage credit"])))
        return " ".join(parts)
    parts = [sub, draw(st.one_of(st.sampled_from(ACCOUNTS), words))]
    if draw(st.booleans()):
        parts.append(draw(amounts))
    if draw(st.booleans()):
        parts.append(draw(st.sampled_from(["EUR", "usd", "JPY", "try", "ALL"])))
    if sub.lower() == "refund" and draw(st.booleans()):
        parts.append(draw(st.sampled_from(PAYMENTS)))
    if draw(st.integers(0, 4)):
        parts.append(
            draw(st.one_of(st.sampled_from(["duplicate charge", "goodwill", "  "]), words))
        )
    return " ".join(parts)


@SETTINGS
@given(text=command_texts(), user=st.sampled_from([*REQUESTERS, *REQUESTERS, "U0OUTSIDER"]))
def test_command_text_never_raises_and_never_stores_an_invalid_request(
    world: World, text: str, user: str
) -> None:
    """Whatever follows `/billing`, the parser and the service answer with our own errors or a
    valid stored request, never anything else."""
    try:
        cmd = parse_command(text)
    except BotError:
        return
    if not isinstance(cmd, (RefundCommand, CreditCommand)) or not cmd.complete:
        return
    amount = cmd.amount_input or AmountInput(cmd.amount or Decimal(0))
    draft = RequestDraft(
        "refund" if isinstance(cmd, RefundCommand) else "credit",
        cmd.account,
        amount,
        cmd.reason,
        cmd.payment_id if isinstance(cmd, RefundCommand) else None,
    )
    before = world.count()
    request = world.create(draft, user)
    if request is None:
        assert world.count() == before
    else:
        world.check(request, draft, user)


@st.composite
def submissions(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """`view.state.values` of the request form, with odd shapes too."""
    kind = draw(st.sampled_from(["refund", "credit"]))
    values: dict[str, Any] = {}
    if draw(st.integers(0, 5)):
        typed = draw(st.one_of(good_amounts, good_amounts, amounts, st.none()))
        values["amount"] = {"amount_input": {"type": "plain_text_input", "value": typed}}
    if draw(st.integers(0, 5)):
        reason = draw(st.one_of(words, st.none()))
        values["reason"] = {"reason_input": {"type": "plain_text_input", "value": reason}}
    choice = draw(st.integers(0, 3))
    if choice == 1:
        values["payment"] = {"payment_input": {
            "type": "static_select",
            "selected_option": {"value": draw(st.sampled_from(PAYMENTS)),
                                "text": {"type": "plain_text", "text": "x"}},
        }}  # fmt: skip
    elif choice == 2:
        typed = draw(st.one_of(words, st.sampled_from(PAYMENTS)))
        values["payment"] = {"payment_input": {"type": "plain_text_input", "value": typed}}
    elif choice == 3:
        values["payment"] = draw(st.sampled_from([{}, {"x": None}, {"x": {"selected_option": 3}}]))
    return kind, values


@SETTINGS
@given(
    submitted=submissions(),
    account=st.sampled_from(ACCOUNTS[:6]),
    user=st.sampled_from([*REQUESTERS, "U0OUTSIDER"]),
)
def test_modal_submissions_never_raise_and_never_store_an_invalid_request(
    world: World, submitted: tuple[str, dict[str, Any]], account: str, user: str
) -> None:
    """The form's inline checks and then the service: our own errors, or a valid request."""
    kind, values = submitted
    errors = form_errors(kind, values)
    if errors:
        return
    draft = draft_from_form(kind, classify_account(account), values, origin="modal")  # type: ignore[arg-type]
    before = world.count()
    request = world.create(draft, user)
    if request is None:
        assert world.count() == before
    else:
        world.check(request, draft, user)
