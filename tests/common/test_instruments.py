"""services/common/instruments.py: price and quantity text, exact, as the Decimal arithmetic writes it."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.instruments import Instrument, InstrumentSpec
from services.common.money import EXACT, fixed, plain

TICKS_AND_LOTS = [("0.01", "0.00000001"), ("0.05", "0.001"), ("5", "1"), ("0.5", "10"), ("25", "0.25"),
                  ("0.0001", "100")]


def _instrument(tick: str, lot: str) -> Instrument:
    return Instrument(InstrumentSpec(symbol="X-Y", base="X", quote="Y", tick=tick, lot=lot, min_quantity=lot,
                                     max_quantity="1000", max_price="100000"))


def test_price_and_quantity_text() -> None:
    btc = _instrument("0.01", "0.00000001")
    assert [btc.price_text(n) for n in (5_000_000, 1, 0, -5)] == ["50000.00", "0.01", "0.00", "-0.05"]
    assert [btc.quantity_text(n) for n in (50_000_000, 1, 0, -120_000_000)] == ["0.5", "0.00000001", "0", "-1.2"]
    assert _instrument("5", "10").quantity_text(3) == "30"


@pytest.mark.parametrize(("tick", "lot"), TICKS_AND_LOTS)
@given(units=st.one_of(st.integers(-10**20, 10**20), st.integers(-10**60, 10**60)))
def test_text_is_the_decimal_arithmetic_s(tick: str, lot: str, units: int) -> None:
    # The integer path must agree with the Decimal one everywhere, rounding past 60 digits included.
    instrument = _instrument(tick, lot)
    price = _outcome(lambda: fixed(EXACT.multiply(Decimal(units), instrument.tick), instrument.tick_places))
    assert _outcome(lambda: instrument.price_text(units)) == price
    quantity = _outcome(lambda: plain(EXACT.multiply(Decimal(units), instrument.lot)))
    assert _outcome(lambda: instrument.quantity_text(units)) == quantity


def _outcome(text: Callable[[], str]) -> str | type[Exception]:
    try:
        return text()
    except ArithmeticError as exc:  # past 60 digits quantize refuses: the same on both paths
        return type(exc)
