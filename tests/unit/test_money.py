"""Money parsing and formatting, as users type and read it."""

from __future__ import annotations

from decimal import Decimal

import pytest

from bot.domain.money import Money, parse_amount, parse_amount_value
from bot.errors import InvalidAmount


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("25", Decimal("25")),
        ("25.00", Decimal("25.00")),
        ("$25", Decimal("25")),
        ("$1,250.50", Decimal("1250.50")),
        ("1,250.5", Decimal("1250.5")),
        (" 7.5 ", Decimal("7.5")),
        ("25 USD", Decimal("25")),
    ],
)
def test_amounts_users_type_are_understood(text: str, expected: Decimal) -> None:
    """Every DESIGN §3 amount form parses to the exact decimal value."""
    assert parse_amount(text).amount == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0", "more than zero"),
        ("0.00", "more than zero"),
        ("-5", "negative"),
        ("$-5", "negative"),
        ("abc", "not an amount"),
        ("1e3", "not an amount"),
        ("1,25", "not an amount"),
        ("$$5", "not an amount"),
        ("", "not an amount"),
        ("NaN", "not an amount"),
        ("12.345", "more decimals than USD"),
        ("99999999999", "larger than any amount"),
    ],
)
def test_bad_amounts_are_refused_with_a_reason(text: str, fragment: str) -> None:
    """Garbage, zero, negatives and exponents are refused with a message saying why."""
    with pytest.raises(InvalidAmount) as info:
        parse_amount(text)
    assert fragment in info.value.message


def test_zero_decimal_currency_refuses_cents() -> None:
    """JPY has no minor unit: 1200 is fine, 12.5 is not."""
    assert parse_amount("1200", "jpy").format() == "¥1,200"
    with pytest.raises(InvalidAmount):
        parse_amount("12.5", "jpy")


def test_amount_value_is_checked_before_the_currency_is_known() -> None:
    """The command parser accepts up to three decimals and leaves the currency check for later."""
    assert parse_amount_value("$1,250.505") == Decimal("1250.505")


@pytest.mark.parametrize(
    ("money", "shown"),
    [
        (Money(Decimal("1234.56")), "$1,234.56"),
        (Money(Decimal("1250.5")), "$1,250.50"),
        (Money(Decimal("0")), "$0.00"),
        (Money(Decimal("-5")), "-$5.00"),
        (Money.from_minor(123456, "usd"), "$1,234.56"),
        (Money.from_minor(1200, "jpy"), "¥1,200"),
        (Money.from_minor(12500, "kwd"), "12.500 KWD"),
        (Money(Decimal("3.5"), "CHF"), "3.50 CHF"),
    ],
)
def test_money_is_shown_the_way_people_read_it(money: Money, shown: str) -> None:
    """Formatting uses symbols, thousands separators and the currency's decimals."""
    assert money.format() == shown


def test_minor_units_round_trip_for_zero_decimal_currencies() -> None:
    """Stripe's integer amounts convert both ways without losing a unit."""
    assert Money.from_minor(500, "jpy").amount == Decimal(500)
    assert Money(Decimal("12.345"), "usd").to_minor() == 1234  # half-even
    assert Money(Decimal("12.50"), "usd").to_minor() == 1250


def test_mixing_currencies_is_an_error() -> None:
    """Adding USD to EUR is refused instead of producing a wrong total."""
    with pytest.raises(ValueError, match="currency mismatch"):
        _ = Money(Decimal(1), "usd") + Money(Decimal(1), "eur")


def test_money_refuses_floats() -> None:
    """Floats never become money."""
    with pytest.raises(TypeError):
        Money(1.5)  # type: ignore[arg-type]
    assert Money.of("1.10").amount == Decimal("1.10")
