"""Client positions from the hourly aggregates (client_positions_1h), plus raw trades for a partial hour."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.analytics.stats import ZERO, Positions, Sides, fold_positions
from services.analytics.time_buckets import HOUR, floor_to
from services.common.instruments import Instruments
from services.common.money import EXACT

_SUMS = "sum(bought_quantity), sum(bought_quote), sum(sold_quantity), sum(sold_quote), sum(trade_count)"

CLIENT = text(f"""
SELECT instrument, {_SUMS} FROM (
    SELECT instrument, bought_quantity, bought_quote, sold_quantity, sold_quote, trade_count
    FROM client_positions_1h WHERE client_id = :client_id AND hour_start < :hour
    UNION ALL
    SELECT instrument,
           CASE WHEN buyer_client_id = :client_id THEN quantity ELSE 0 END,
           CASE WHEN buyer_client_id = :client_id THEN price * quantity ELSE 0 END,
           CASE WHEN seller_client_id = :client_id THEN quantity ELSE 0 END,
           CASE WHEN seller_client_id = :client_id THEN price * quantity ELSE 0 END,
           1
    FROM trades WHERE executed_at >= :hour AND executed_at < :as_of
                  AND (buyer_client_id = :client_id OR seller_client_id = :client_id)
) AS parts
GROUP BY instrument ORDER BY instrument
""")

# Every client at once, for an hour-aligned moment (the end of a settlement date); `since` splits off
# what changed from that moment on.
ALL_CLIENTS = text(f"""
SELECT client_id, instrument, {_SUMS},
       sum(bought_quantity) FILTER (WHERE hour_start >= :since),
       sum(bought_quote) FILTER (WHERE hour_start >= :since),
       sum(sold_quantity) FILTER (WHERE hour_start >= :since),
       sum(sold_quote) FILTER (WHERE hour_start >= :since),
       sum(trade_count) FILTER (WHERE hour_start >= :since)
FROM client_positions_1h WHERE hour_start < :as_of
GROUP BY client_id, instrument ORDER BY client_id, instrument
""")


async def client_positions(conn: AsyncConnection, client_id: str, as_of: dt.datetime) -> dict[str, Sides]:
    """The client's totals per instrument over its trades executed before `as_of`."""
    params = {"client_id": client_id, "as_of": as_of, "hour": floor_to(as_of, HOUR)}
    return {row[0]: Sides.of(row[1:]) for row in (await conn.execute(CLIENT, params)).all()}


async def all_positions(conn: AsyncConnection, as_of: dt.datetime, since: dt.datetime
                        ) -> tuple[Positions, Positions]:
    """Every client's totals per instrument before `as_of`, and those of [since, as_of) alone;
    both moments whole UTC hours."""
    if floor_to(as_of, HOUR) != as_of or floor_to(since, HOUR) != since:
        raise ValueError(f"all_positions needs whole hours, not {as_of} / {since}")
    return fold_positions((await conn.execute(ALL_CLIENTS, {"as_of": as_of, "since": since})).all())


def net_by_asset(sides: dict[str, Sides], instruments: Instruments) -> dict[str, Decimal]:
    """Net per asset over the instruments: base bought - sold, quote sold - bought (price x quantity);
    instruments no longer configured are left out (their assets are unknown)."""
    net: dict[str, Decimal] = {}
    for symbol, s in sides.items():
        instrument = instruments.get(symbol)
        if instrument is None:
            continue
        net[instrument.base] = EXACT.add(net.get(instrument.base, ZERO), EXACT.subtract(s.bought_quantity,
                                                                                         s.sold_quantity))
        net[instrument.quote] = EXACT.add(net.get(instrument.quote, ZERO), EXACT.subtract(s.sold_quote,
                                                                                           s.bought_quote))
    return dict(sorted(net.items()))
