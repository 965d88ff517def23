"""Exact conversion between user-facing decimals and the integer ticks and lots used inside Redis."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Context, Decimal, Inexact, InvalidOperation, Rounded

# Enough digits for any price x quantity product we ever form (1e9 ticks x 1e11 lots and then some).
EXACT = Context(prec=60)
# The same precision, but any rounding raises: for questions that need an exact answer.
STRICT = Context(prec=60, traps=[Inexact, Rounded, InvalidOperation])


class NotAMultiple(ValueError):
    """A decimal is not a whole number of increments."""


def parse_decimal(text: str) -> Decimal:
    """Read a decimal string exactly; raise ValueError for anything that is not a finite number."""
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise ValueError(f"not a decimal: {text!r}") from exc
    if not value.is_finite():
        raise ValueError(f"not a finite decimal: {text!r}")
    return value


def to_units(value: Decimal, increment: Decimal) -> int:
    """Number of whole increments in value; NotAMultiple if value is not an exact multiple."""
    try:
        units = STRICT.divide(value, increment)
    except (Inexact, Rounded, InvalidOperation) as exc:
        # More digits than the context holds: certainly not a whole number of increments we can trade.
        raise NotAMultiple(f"{value} is not a multiple of {increment}") from exc
    if units != units.to_integral_value():
        raise NotAMultiple(f"{value} is not a multiple of {increment}")
    return int(units)


def plain(value: Decimal) -> str:
    """Exact decimal text with no exponent and no trailing zeros ("0.2", "1", "-25000.5")."""
    if value == 0:
        return "0"
    text = format(value.normalize(EXACT), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def fixed(value: Decimal, places: int) -> str:
    """Decimal text with exactly `places` decimals, rounded half-even."""
    quantum = Decimal(1).scaleb(-places)
    return format(value.quantize(quantum, rounding=ROUND_HALF_EVEN, context=EXACT), "f")


def decimal_places(increment: Decimal) -> int:
    """How many decimals an increment has (0.01 -> 2, 5 -> 0)."""
    exponent = increment.normalize(EXACT).as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)
