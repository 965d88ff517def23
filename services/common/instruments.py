"""Instrument configuration (instruments.toml) and the per-instrument tick/lot arithmetic."""

from __future__ import annotations

import tomllib
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import msgspec

from services.common.money import EXACT, decimal_places, fixed, parse_decimal, plain, to_units
from services.common.risk_limits import (
    DEFAULT_MARKET_PROTECTION_PCT,
    DEFAULT_MAX_OPEN_ORDERS,
    DEFAULT_MAX_ORDER_NOTIONAL,
    DEFAULT_PRICE_BAND_PCT,
    LimitValue,
    RiskLimitError,
    risk_limits,
)

# Lua numbers are doubles: every integer the matcher forms must stay below 2**53.
LUA_EXACT_LIMIT = 2**53
# The matcher keeps a fill's notional in two limbs split at this many lots (see match.lua).
NOTIONAL_LIMB = 10**6


class InstrumentError(ValueError):
    """instruments.toml is malformed or describes an instrument the engine cannot trade exactly."""


class InstrumentSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    symbol: str
    base: str
    quote: str
    tick: str
    lot: str
    min_quantity: str
    max_quantity: str
    max_price: str
    # Pre-trade risk limits (services/common/risk_limits.py): the contract's defaults, 0 turns one off.
    price_band_pct: LimitValue = DEFAULT_PRICE_BAND_PCT
    market_protection_pct: LimitValue = DEFAULT_MARKET_PROTECTION_PCT
    max_open_orders: LimitValue = DEFAULT_MAX_OPEN_ORDERS
    max_order_notional: LimitValue = DEFAULT_MAX_ORDER_NOTIONAL


class Instrument:
    """One tradable instrument with exact decimal <-> integer conversions."""

    __slots__ = (
        "base", "lot", "lot_places", "max_lots", "max_notional_units", "max_price", "max_quantity", "max_ticks",
        "min_lots", "min_quantity", "price_mult", "price_places", "qty_mult", "quote", "risk",
        "symbol", "tick", "tick_places",
    )

    def __init__(self, spec: InstrumentSpec) -> None:
        self.symbol = spec.symbol
        self.base = spec.base
        self.quote = spec.quote
        if not all(c.isalnum() or c in "-_." for c in spec.symbol) or not spec.symbol:
            raise InstrumentError(f"instrument symbol {spec.symbol!r}: use letters, digits, '-', '_', '.'")
        try:
            self.tick = parse_decimal(spec.tick)
            self.lot = parse_decimal(spec.lot)
            self.min_quantity = parse_decimal(spec.min_quantity)
            self.max_quantity = parse_decimal(spec.max_quantity)
            self.max_price = parse_decimal(spec.max_price)
            if self.tick <= 0 or self.lot <= 0:
                raise InstrumentError(f"{spec.symbol}: tick and lot must be positive")
            self.max_ticks = to_units(self.max_price, self.tick)
            self.min_lots = max(1, to_units(self.min_quantity, self.lot))
            self.max_lots = to_units(self.max_quantity, self.lot)
        except ValueError as exc:
            raise InstrumentError(f"{spec.symbol}: {exc}") from exc
        self.tick_places = decimal_places(self.tick)
        self.lot_places = decimal_places(self.lot)
        # Lua formats a price as the integer ticks*price_mult with price_places decimals.
        self.price_mult = int(self.tick.scaleb(self.tick_places))
        self.qty_mult = int(self.lot.scaleb(self.lot_places))
        self.price_places = self.tick_places
        if self.max_ticks * self.price_mult >= LUA_EXACT_LIMIT or self.max_ticks * NOTIONAL_LIMB >= LUA_EXACT_LIMIT:
            raise InstrumentError(f"{spec.symbol}: max_price / tick too large for exact matching")
        if self.max_lots * self.qty_mult >= LUA_EXACT_LIMIT:
            raise InstrumentError(f"{spec.symbol}: max_quantity / lot too large for exact matching")
        try:
            self.risk = risk_limits(spec.symbol, spec.price_band_pct, spec.market_protection_pct,
                                    spec.max_open_orders, spec.max_order_notional)
        except RiskLimitError as exc:
            raise InstrumentError(str(exc)) from exc
        # The notional cap in ticks x lots, rounded down (None: off): price x quantity exceeds the cap exactly
        # when ticks x lots exceeds this (Python integers: ticks x lots reaches 1e20, past any Lua number).
        self.max_notional_units: int | None = None
        if self.risk.max_order_notional:
            self.max_notional_units = int(EXACT.divide(self.risk.max_order_notional,
                                                       EXACT.multiply(self.tick, self.lot)))

    def notional_exceeds_cap(self, price_ticks: int, quantity_lots: int) -> bool:
        """Whether price x quantity is over the instrument's max_order_notional (never, when it is 0)."""
        return self.max_notional_units is not None and price_ticks * quantity_lots > self.max_notional_units

    def price_ticks(self, price: Decimal) -> int:
        return to_units(price, self.tick)

    def quantity_lots(self, quantity: Decimal) -> int:
        return to_units(quantity, self.lot)

    def price_ticks_of(self, text: str) -> int:
        """Ticks of a decimal price string (as found on the streams)."""
        return to_units(parse_decimal(text), self.tick)

    def quantity_lots_of(self, text: str) -> int:
        """Lots of a decimal quantity string (as found on the streams)."""
        return to_units(parse_decimal(text), self.lot)

    def price_text(self, ticks: int) -> str:
        """Price with exactly the tick's decimals ("50000.00")."""
        # In integers (ticks x price_mult is the price in units of 10^-price_places): what the Decimal
        # arithmetic below gives, at a tenth of its cost; the Decimal path keeps its rounding past 60 digits.
        scaled = ticks * self.price_mult
        if -_INT_TEXT_LIMIT < scaled < _INT_TEXT_LIMIT:
            return _point_text(scaled, self.price_places, strip=False)
        return fixed(EXACT.multiply(Decimal(ticks), self.tick), self.tick_places)

    def quantity_text(self, lots: int) -> str:
        """Quantity exact, without trailing zeros ("0.5")."""
        scaled = lots * self.qty_mult
        if -_INT_TEXT_LIMIT < scaled < _INT_TEXT_LIMIT:
            return _point_text(scaled, self.lot_places, strip=True)
        return plain(EXACT.multiply(Decimal(lots), self.lot))

    def average_price_text(self, notional_tick_lots: int, lots: int) -> str | None:
        """Average price of fills worth notional_tick_lots (ticks x lots), rounded half-even to the tick."""
        if lots == 0:
            return None
        ticks = EXACT.divide(Decimal(notional_tick_lots), Decimal(lots))
        return self.price_text(int(ticks.to_integral_value(rounding=ROUND_HALF_EVEN)))

    def notional_of(self, quote: Decimal) -> int:
        """Ticks x lots of an exact quote amount (the inverse of quote_text)."""
        return to_units(quote, EXACT.multiply(self.tick, self.lot))

    def quote_text(self, notional_tick_lots: int) -> str:
        """Quote amount (price x quantity) of notional_tick_lots, exact."""
        return plain(EXACT.multiply(EXACT.multiply(Decimal(notional_tick_lots), self.tick), self.lot))


# Integers under 10^50 hold every digit the 60-digit Decimal context keeps (money.EXACT), so both paths agree.
_INT_TEXT_LIMIT = 10**50


def _point_text(scaled: int, places: int, *, strip: bool) -> str:
    """`scaled` x 10^-places as text with `places` decimals, or (`strip`) without trailing zeros ("0" for 0)."""
    sign = "-" if scaled < 0 else ""
    whole, fraction = divmod(-scaled if scaled < 0 else scaled, 10**places)
    if places == 0:
        return f"{sign}{whole}"
    digits = f"{fraction:0{places}d}"
    if strip:
        digits = digits.rstrip("0")
        if not digits:
            return f"{sign}{whole}" if whole else "0"
    return f"{sign}{whole}.{digits}"


class Instruments(dict[str, Instrument]):
    """All configured instruments by symbol."""


def load_instruments(path: str | Path) -> Instruments:
    """Read instruments.toml; raise InstrumentError when it is malformed."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InstrumentError(f"cannot read instruments file {str(path)!r}: {exc}") from exc
    try:
        specs = msgspec.convert(raw.get("instrument", []), list[InstrumentSpec])
    except msgspec.ValidationError as exc:
        raise InstrumentError(f"{path}: {exc}") from exc
    if not specs:
        raise InstrumentError(f"{path}: no [[instrument]] configured")
    instruments = Instruments()
    for spec in specs:
        if spec.symbol in instruments:
            raise InstrumentError(f"{path}: instrument {spec.symbol!r} configured twice")
        instruments[spec.symbol] = Instrument(spec)
    return instruments
