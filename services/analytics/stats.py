"""The numbers analytics answers are made of, shared by the fast path and the from-scratch path."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Stats:
    """OHLCV of a set of trades; prices are None when there were none."""

    open: Decimal | None
    high: Decimal | None
    low: Decimal | None
    close: Decimal | None
    volume: Decimal
    quote_volume: Decimal
    trade_count: int

    @classmethod
    def of(cls, row: Any) -> Stats:
        """From a row (open, high, low, close, volume, quote_volume, trade_count), NULL sums meaning 0."""
        return cls(row[0], row[1], row[2], row[3], row[4] or ZERO, row[5] or ZERO, int(row[6] or 0))


@dataclass(frozen=True, slots=True)
class Candle:
    start: dt.datetime
    stats: Stats


@dataclass(frozen=True, slots=True)
class Sides:
    """What one client bought and sold of one instrument: base quantities and quote amounts."""

    bought_quantity: Decimal
    bought_quote: Decimal
    sold_quantity: Decimal
    sold_quote: Decimal
    trade_count: int

    @classmethod
    def of(cls, row: Any) -> Sides:
        """From a row (bought_quantity, bought_quote, sold_quantity, sold_quote, trade_count)."""
        return cls(row[0] or ZERO, row[1] or ZERO, row[2] or ZERO, row[3] or ZERO, int(row[4] or 0))


# client_id -> instrument -> Sides
Positions = dict[str, dict[str, Sides]]


def fold_positions(rows: Iterable[Sequence[Any]]) -> tuple[Positions, Positions]:
    """Rows of (client_id, instrument, five totals up to as_of, the same five since `since`), as the
    positions queries return them (aggregated or straight from trades): (totals, recent totals)."""
    total: Positions = {}
    recent: Positions = {}
    for row in rows:
        total.setdefault(row[0], {})[row[1]] = Sides.of(row[2:7])
        recent.setdefault(row[0], {})[row[1]] = Sides.of(row[7:12])
    return total, recent
