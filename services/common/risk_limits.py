"""Per-instrument pre-trade risk limits (instruments.toml), validated at start and held as exact integers.

The matcher checks the price band, market protection and the open-order cap inside its Lua call, where a
number is a double: percentages are therefore carried as integer hundredths of a percent (basis points
of a percent, "pct_bp"), so every product it forms (ticks x pct_bp, ticks x 10,000) stays exact below
2^53 for any instrument the loader accepts (max ticks < 2^53 / 10^6, see instruments.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from services.common.money import decimal_places, parse_decimal

# The contract's defaults; 0 turns a limit off.
DEFAULT_PRICE_BAND_PCT = "10"
DEFAULT_MARKET_PROTECTION_PCT = "5"
DEFAULT_MAX_OPEN_ORDERS = 1000
DEFAULT_MAX_ORDER_NOTIONAL = "10000000"

PCT_PLACES = 2  # hundredths of a percent: what the Lua integers carry
MAX_BAND_PCT = Decimal(1000)  # a band wider than 10x the reference price is no band
MAX_PROTECTION_PCT = Decimal(100)  # a market order cannot trade at a negative price anyway
MAX_OPEN_ORDERS = 1_000_000
PCT_SCALE = 10**PCT_PLACES  # pct_bp = pct x PCT_SCALE; Lua compares |p - r| x 100 x PCT_SCALE with pct_bp x r

# A TOML value for a limit: decimals may be written as strings or as TOML numbers.
LimitValue = str | int | float


class RiskLimitError(ValueError):
    """A risk limit in instruments.toml is unknown, malformed or out of range."""


@dataclass(frozen=True, slots=True)
class RiskLimits:
    """One instrument's limits; 0 is off."""

    price_band_pct: Decimal
    market_protection_pct: Decimal
    max_open_orders: int
    max_order_notional: Decimal  # quote units

    @property
    def price_band_bp(self) -> int:
        """The band in hundredths of a percent (what match.lua gets)."""
        return int(self.price_band_pct * PCT_SCALE)

    @property
    def market_protection_bp(self) -> int:
        return int(self.market_protection_pct * PCT_SCALE)


def risk_limits(symbol: str, price_band_pct: LimitValue, market_protection_pct: LimitValue,
                max_open_orders: LimitValue, max_order_notional: LimitValue) -> RiskLimits:
    """Validated limits of one instrument; RiskLimitError names the setting and the value."""
    return RiskLimits(
        price_band_pct=_percentage(symbol, "price_band_pct", price_band_pct, MAX_BAND_PCT),
        market_protection_pct=_percentage(symbol, "market_protection_pct", market_protection_pct, MAX_PROTECTION_PCT),
        max_open_orders=_count(symbol, "max_open_orders", max_open_orders),
        max_order_notional=_amount(symbol, "max_order_notional", max_order_notional),
    )


def _decimal(symbol: str, name: str, value: LimitValue) -> Decimal:
    if isinstance(value, bool):
        raise RiskLimitError(f"{symbol}: {name} = {value!r} is not a number")
    # A TOML float is read through its shortest repr ("2.5"), which is the decimal the operator wrote.
    text = repr(value) if isinstance(value, float) else str(value)
    try:
        number = parse_decimal(text)
    except ValueError as exc:
        raise RiskLimitError(f"{symbol}: {name} = {value!r} is not a decimal number") from exc
    if number < 0:
        raise RiskLimitError(f"{symbol}: {name} = {value!r} is negative (0 turns the limit off)")
    return number


def _percentage(symbol: str, name: str, value: LimitValue, maximum: Decimal) -> Decimal:
    pct = _decimal(symbol, name, value)
    if pct > maximum:
        raise RiskLimitError(f"{symbol}: {name} = {value!r} is above {maximum} (0 turns the limit off)")
    if decimal_places(pct) > PCT_PLACES:
        raise RiskLimitError(f"{symbol}: {name} = {value!r} has more than {PCT_PLACES} decimals")
    return pct


def _count(symbol: str, name: str, value: LimitValue) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RiskLimitError(f"{symbol}: {name} = {value!r} is not a whole number")
    if not 0 <= value <= MAX_OPEN_ORDERS:
        raise RiskLimitError(f"{symbol}: {name} = {value!r} is outside 0..{MAX_OPEN_ORDERS} (0 turns it off)")
    return value


def _amount(symbol: str, name: str, value: LimitValue) -> Decimal:
    amount = _decimal(symbol, name, value)
    if amount and amount.adjusted() > 30:
        raise RiskLimitError(f"{symbol}: {name} = {value!r} is too large (0 turns the limit off)")
    return amount
