"""Reads from PostgreSQL, the system of record: recent trades, and orders no longer held in Redis."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import orders, trades
from services.common.instruments import Instrument, Instruments
from services.common.money import plain
from services.common.times import iso
from services.ingest.errors import ApiError, unavailable
from services.ingest.views import OrderView


class TradeView(msgspec.Struct, frozen=True):
    """One trade as GET /trades and the WebSocket `trade` message show it (no client ids)."""

    trade_id: str
    seq: int
    instrument: str
    price: str
    quantity: str
    taker_side: str
    buy_order_id: str
    sell_order_id: str
    executed_at: str


def database_unavailable(exc: Exception) -> ApiError:
    return unavailable(f"the trade record (PostgreSQL) is unavailable, retry shortly ({type(exc).__name__})",
                       reason="database_unavailable")


def _price(instrument: Instrument | None, value: Decimal) -> str:
    # Prices carry exactly the tick's decimals; an instrument no longer configured shows them as stored.
    return instrument.price_text(instrument.price_ticks(value)) if instrument else plain(value)


async def recent_trades(db: AsyncEngine, instruments: Instruments, symbol: str | None, limit: int) -> list[TradeView]:
    """The newest `limit` trades, of one instrument or all, newest first."""
    query = select(trades).order_by(trades.c.executed_at.desc(), trades.c.seq.desc()).limit(limit)
    if symbol is not None:
        query = select(trades).where(trades.c.instrument == symbol).order_by(trades.c.seq.desc()).limit(limit)
    try:
        async with db.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
    except (SQLAlchemyError, DBAPIError, OSError) as exc:
        raise database_unavailable(exc) from exc
    return [
        TradeView(
            trade_id=row["trade_id"], seq=row["seq"], instrument=row["instrument"],
            price=_price(instruments.get(row["instrument"]), row["price"]), quantity=plain(row["quantity"]),
            taker_side=row["taker_side"], buy_order_id=row["buy_order_id"], sell_order_id=row["sell_order_id"],
            executed_at=iso(row["executed_at"]),
        )
        for row in rows
    ]


def _order_view(row: Any, instrument: Instrument | None) -> OrderView:
    filled, quote = row["filled_quantity"], row["filled_quote"]
    average = None
    if instrument is not None and filled > 0:
        average = instrument.average_price_text(
            instrument.notional_of(quote), instrument.quantity_lots(filled))
    return OrderView(
        order_id=row["order_id"], client_order_id=row["client_order_id"], client_id=row["client_id"],
        instrument=row["instrument"], side=row["side"], type=row["type"], time_in_force=row["time_in_force"],
        post_only=bool(row["post_only"]),
        price=_price(instrument, row["price"]) if row["price"] is not None else None,
        quantity=plain(row["quantity"]), filled_quantity=plain(filled),
        remaining_quantity=plain(row["remaining_quantity"]), average_price=average,
        status=row["status"], reason=row["reason"],
        created_at=iso(row["created_at"]), updated_at=iso(row["updated_at"]),
    )


async def stored_order(db: AsyncEngine, instruments: Instruments, order_id: str) -> OrderView | None:
    """The order as PostgreSQL holds it, or None (also while its `accepted` event is not persisted yet)."""
    try:
        async with db.connect() as conn:
            row = (await conn.execute(select(orders).where(orders.c.order_id == order_id))).mappings().first()
    except (SQLAlchemyError, DBAPIError, OSError) as exc:
        raise database_unavailable(exc) from exc
    if row is None or row["side"] is None:
        return None
    return _order_view(row, instruments.get(row["instrument"]))
