"""Reads from PostgreSQL, the system of record: recent trades, and orders no longer held in Redis; and the
bounded pool every public read (trades, analytics, positions) runs on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any, TypeVar

import msgspec
from sqlalchemy import RowMapping, select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common.db import make_engine, orders, trades
from services.common.instruments import Instrument, Instruments
from services.common.money import plain
from services.common.times import iso
from services.ingest.errors import ApiError, read_timeout, unavailable
from services.ingest.views import OrderView

T = TypeVar("T")

# SQLSTATE query_canceled: what statement_timeout ends a statement with.
_QUERY_CANCELED = "57014"

# Public reads are short scans of aggregate rows (a 1d answer over 1,500 days: 36,000 hourly rows, ~0.1 s)
# that JIT compilation never pays back: on the 2.16M-minute-row plan this replaced, JIT compiled for 1.1-2.2 s
# on every execution, and any read whose estimate crosses jit_above_cost would pay that again each time. No
# parallel workers: then the pool's size (INGEST_READ_DB_POOL) bounds the server processes, and so the
# cores, that a flood of public reads can take from the engine (these reads' plans launch none anyway).
# Figures: load-test/optimisations.md.
PUBLIC_READ_SETTINGS = {"jit": "off", "max_parallel_workers_per_gather": "0"}


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


class PublicReads:
    """The public reads' own pool, apart from the one order reads and admin work use, so a flood of
    analytics waits here and never takes their connections. Each read gives up after `timeout_ms` (503
    read_timeout): on the client, a deadline around pool checkout, connecting and the query, so a full pool
    or an unresponsive server ends too; on the server, the same statement_timeout on every connection of
    the pool, so a statement the client gave up on (a lock wait, a long scan) stops there as well."""

    def __init__(self, url: str, timeout_ms: int, pool_size: int) -> None:
        self.timeout_ms = timeout_ms
        # Session settings of the pool rather than SET LOCAL per read: no extra round trip, and no read
        # on this pool can run without them. No overflow: the pool's size is the bound.
        self.engine: AsyncEngine = make_engine(url, pool_size=pool_size, max_overflow=0,
                                               server_settings=PUBLIC_READ_SETTINGS | {
                                                   "statement_timeout": str(timeout_ms)})

    async def run(self, query: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """`query` on a connection of the pool; 503 read_timeout past the deadline, 503 unavailable when
        PostgreSQL cannot answer."""
        deadline = asyncio.timeout(self.timeout_ms / 1000)
        try:
            async with deadline:
                async with self.engine.connect() as conn:
                    return await query(conn)
        except (SQLAlchemyError, OSError) as exc:  # TimeoutError, the deadline's, is an OSError
            if deadline.expired() or isinstance(exc, PoolTimeout) or _canceled(exc):
                raise read_timeout(self.timeout_ms) from exc
            raise database_unavailable(exc) from exc

    async def close(self) -> None:
        await self.engine.dispose()


def _canceled(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) == _QUERY_CANCELED


def stored_price(instrument: Instrument | None, value: Decimal) -> str:
    """A stored price as answers show it."""
    # Prices carry exactly the tick's decimals; an instrument no longer configured shows them as stored.
    return instrument.price_text(instrument.price_ticks(value)) if instrument else plain(value)


async def recent_trades(reads: PublicReads, instruments: Instruments, symbol: str | None,
                        limit: int) -> list[TradeView]:
    """The newest `limit` trades, of one instrument or all, newest first."""
    query = select(trades).order_by(trades.c.executed_at.desc(), trades.c.seq.desc()).limit(limit)
    if symbol is not None:
        query = select(trades).where(trades.c.instrument == symbol).order_by(trades.c.seq.desc()).limit(limit)

    async def fetch(conn: AsyncConnection) -> Sequence[RowMapping]:
        return (await conn.execute(query)).mappings().all()

    rows = await reads.run(fetch)
    return [
        TradeView(
            trade_id=row["trade_id"], seq=row["seq"], instrument=row["instrument"],
            price=stored_price(instruments.get(row["instrument"]), row["price"]), quantity=plain(row["quantity"]),
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
        price=stored_price(instrument, row["price"]) if row["price"] is not None else None,
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
