"""The approval rules of DESIGN §4 as pure functions: request IDs and idempotency keys, the state
machine, the dual-approval threshold per currency, who may click what, identity conflicts,
what is left to refund, and amounts in the payment's currency."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from bot.domain.approvals import (
    REQUEST_ID_PREFIX,
    TRANSITIONS,
    Approval,
    ApprovalRequest,
    ApprovalRules,
    Refusal,
    RequestState,
    can_transition,
    clean_reason,
    click_refusal,
    identity_conflict,
    new_request_id,
    payment_kind,
    refundable_left,
    request_key,
)
from bot.domain.commands import REQUEST_ID_RE, CreditCommand, RefundCommand, parse_command
from bot.domain.models import MAX_IDEMPOTENCY_KEY, CustomerRecord, Payment, PaymentStatus
from bot.domain.money import Money, parse_amount, parse_amount_input
from bot.errors import InvalidAmount

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _request(**overrides: object) -> ApprovalRequest:
    values: dict[str, object] = {
        "id": "REQ-ABCDEFGH", "kind": "refund", "state": RequestState.PENDING,
        "account_key": "acct_1", "account_label": "One", "provider": "stripe",
        "customer_id": "cus_1", "amount": Money(Decimal(25)), "reason": "dup",
        "requester": "U0REQ", "created_at": NOW, "expires_at": NOW + timedelta(hours=48),
        "required_approvals": 1, "channel": "C0FIN", "payment_id": "ch_1",
    }  # fmt: skip
    values.update(overrides)
    return ApprovalRequest(**values)  # type: ignore[arg-type]


def test_request_ids_are_readable_unguessable_and_parse_as_history_targets() -> None:
    """`REQ-` and 8 base32 characters, different every time, accepted by `history`."""
    ids = {new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    for request_id in list(ids)[:50]:
        assert request_id.startswith(REQUEST_ID_PREFIX) and len(request_id) == 12
        assert REQUEST_ID_RE.match(request_id)
        assert parse_command(f"history {request_id.lower()}").request_id == request_id  # type: ignore[union-attr]


def test_the_key_comes_from_the_request_alone_and_fits_every_provider() -> None:
    """`bt:{request_id}:{kind}`: the same for every retry, different for another request even
    with the same amount and payment, at most 64 characters."""
    first, second = _request(id="REQ-AAAAAAAA"), _request(id="REQ-BBBBBBBB")
    assert first.idempotency_key == "bt:REQ-AAAAAAAA:refund" == request_key(first.id, "refund")
    assert first.idempotency_key != second.idempotency_key
    assert len(request_key(new_request_id(), "credit")) <= MAX_IDEMPOTENCY_KEY


def test_the_state_machine_allows_only_its_transitions() -> None:
    """Final states go nowhere; a failed request can only be executed again; nothing skips
    approval."""
    assert can_transition(RequestState.PENDING, RequestState.APPROVED)
    assert can_transition(RequestState.FAILED, RequestState.EXECUTING)
    assert not can_transition(RequestState.PENDING, RequestState.EXECUTING)
    assert not can_transition(RequestState.DENIED, RequestState.APPROVED)
    for state in (RequestState.EXECUTED, RequestState.DENIED, RequestState.EXPIRED):
        assert TRANSITIONS[state] == frozenset() and state.final
    assert set(TRANSITIONS) == set(RequestState)


@pytest.mark.parametrize(
    ("amount", "currency", "per_currency", "needed"),
    [
        ("1000", "usd", {}, 1),
        ("1000.01", "usd", {}, 2),
        ("1000", "eur", {}, 1),
        ("1001", "eur", {}, 2),
        ("150000", "jpy", {"jpy": Decimal(150000)}, 1),
        ("150001", "jpy", {"jpy": Decimal(150000)}, 2),
        ("1001", "jpy", {"jpy": Decimal(150000)}, 1),
    ],
)
def test_dual_approval_is_above_the_threshold_in_the_requests_own_currency(
    amount: str, currency: str, per_currency: dict[str, Decimal], needed: int
) -> None:
    """One figure in major units applied in each request's currency (never converted), a
    per-currency figure where set; exactly at the threshold one approver is enough."""
    rules = ApprovalRules(dual_above=Decimal(1000), per_currency=per_currency)
    assert rules.required_approvals(Money(Decimal(amount), currency)) == needed


def test_who_may_click() -> None:
    """Strangers, the requester, a second click by the same approver, decided and expired
    requests are refused, each for its own reason; an approver on a pending request is not."""
    pending = _request()
    assert click_refusal(pending, "U0FIN", is_approver=True, now=NOW, action="approve") is None
    assert click_refusal(pending, "U0X", is_approver=False, now=NOW, action="approve") is (
        Refusal.NOT_APPROVER
    )
    assert click_refusal(pending, "U0REQ", is_approver=True, now=NOW, action="deny") is (
        Refusal.SELF_APPROVAL
    )
    half = _request(required_approvals=2, approvals=(Approval("U0FIN", NOW),))
    assert click_refusal(half, "U0FIN", is_approver=True, now=NOW, action="approve") is (
        Refusal.ALREADY_APPROVED_BY_YOU
    )
    assert click_refusal(half, "U0FIN", is_approver=True, now=NOW, action="deny") is None
    late = NOW + timedelta(hours=48)
    assert click_refusal(pending, "U0FIN", is_approver=True, now=late, action="approve") is (
        Refusal.EXPIRED
    )
    done = _request(state=RequestState.EXECUTED)
    assert click_refusal(done, "U0FIN", is_approver=True, now=NOW, action="approve") is (
        Refusal.ALREADY_DECIDED
    )
    assert click_refusal(done, "U0FIN", is_approver=True, now=NOW, action="retry") is (
        Refusal.NOT_FAILED
    )
    failed = _request(state=RequestState.FAILED)
    assert click_refusal(failed, "U0FIN", is_approver=True, now=late, action="retry") is None


def _customer(provider: str, cid: str, account: str | None) -> CustomerRecord:
    return CustomerRecord(provider, cid, account)  # type: ignore[arg-type]


def test_providers_that_disagree_about_identity_are_a_conflict() -> None:
    """A customer without the account's ID, or several joined only by email, is a conflict;
    customers sharing one account ID, or one customer alone, are not."""
    same = [_customer("stripe", "cus_1", "acct_1"), _customer("orb", "o_1", "acct_1")]
    assert identity_conflict("acct_1", same) is None
    assert identity_conflict(None, [_customer("stripe", "cus_1", None)]) is None
    stray = [_customer("stripe", "cus_1", "acct_1"), _customer("orb", "o_9", None)]
    conflict = identity_conflict("acct_1", stray)
    assert conflict is not None and conflict.ids_to_use() == ["acct_1", "cus_1", "o_9"]
    anonymous = [_customer("stripe", "cus_1", None), _customer("orb", "o_1", None)]
    assert identity_conflict(None, anonymous) is not None


def _payment(
    amount: str, refunded: str, status: PaymentStatus = PaymentStatus.SUCCEEDED
) -> Payment:
    return Payment(
        "stripe", "ch_1", "cus_1", Money(Decimal(amount)), status, NOW,
        amount_refunded=Money(Decimal(refunded)),
    )  # fmt: skip


def test_what_is_left_to_refund_counts_refunds_and_other_open_requests() -> None:
    """Payment − refunded − held by unfinished requests; never below zero; nothing for a
    payment that did not succeed."""
    payment = _payment("100.00", "30.00")
    assert refundable_left(payment, []) == Money(Decimal("70.00"))
    assert refundable_left(payment, [Money(Decimal(20)), Money(Decimal(25))]) == Money(
        Decimal("25.00")
    )
    assert refundable_left(payment, [Money(Decimal(90))]).is_zero()
    assert refundable_left(_payment("100", "0", PaymentStatus.FAILED), []).is_zero()


def test_payment_ids_name_what_can_be_refunded() -> None:
    """Charges, payment intents and invoices; nothing else."""
    assert payment_kind("ch_1") == "charge" and payment_kind("pi_1") == "payment_intent"
    assert payment_kind("in_1") == "invoice" and payment_kind("py_1") is None


def test_a_written_currency_must_be_the_payments() -> None:
    """`25 EUR`, `€25`, `EUR25` are EUR, never $25; `$` means a dollar currency; a currency's
    minor-unit digits are enforced (JPY has none)."""
    for text in ("25 EUR", "€25", "EUR25", "25€", "25eur"):
        with pytest.raises(InvalidAmount, match="not in USD"):
            parse_amount_input(text).in_currency("usd")
        assert parse_amount_input(text).in_currency("eur") == Money(Decimal(25), "eur")
    assert parse_amount_input("$25").in_currency("cad") == Money(Decimal(25), "cad")
    with pytest.raises(InvalidAmount, match="not in EUR"):
        parse_amount_input("$25").in_currency("eur")
    with pytest.raises(InvalidAmount, match="more decimals than JPY"):
        parse_amount_input("1200.5").in_currency("jpy")
    with pytest.raises(InvalidAmount, match="more decimals than USD"):
        parse_amount_input("1.005").in_currency("usd")
    with pytest.raises(InvalidAmount, match="two different currencies"):
        parse_amount_input("€25 USD")
    with pytest.raises(InvalidAmount, match="not in USD"):
        parse_amount("25 EUR", "usd")  # the bug of issue 8: it used to be read as $25


def test_the_command_keeps_the_currency_written_next_to_the_amount() -> None:
    """`refund ACCOUNT 25 EUR REASON` carries EUR; a reason starting with a word that is also a
    currency code stays the reason."""
    cmd = parse_command("refund acct_1 25 EUR duplicate charge")
    assert isinstance(cmd, RefundCommand) and cmd.reason == "duplicate charge"
    assert cmd.amount_input is not None and cmd.amount_input.currencies == frozenset({"eur"})
    before = parse_command("credit acct_1 EUR 25 outage")
    assert isinstance(before, CreditCommand) and before.amount_input is not None
    assert before.amount_input.currencies == frozenset({"eur"}) and before.reason == "outage"
    word = parse_command("refund acct_1 25 try again later")
    assert isinstance(word, RefundCommand) and word.reason == "try again later"
    assert word.amount_input is not None and word.amount_input.currencies is None
    assert clean_reason("  charged\n twice ") == "charged twice" and clean_reason(" ") is None
