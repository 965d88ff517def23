"""Order-book snapshots: the whole book of an instrument, read atomically in Redis, stored in PostgreSQL."""

from __future__ import annotations

import datetime as dt

import msgspec
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.book import read_book
from services.common.db import orderbook_snapshots
from services.common.instruments import Instrument
from services.common.keys import InstrumentKeys
from services.common.redis_conn import AnyRedis
from services.common.times import iso

# book.lua reads this many levels per side: in effect the whole book.
WHOLE_BOOK = 1_000_000


class SnapshotInfo(msgspec.Struct, frozen=True):
    """A stored snapshot; `bids`/`asks` are [[price, quantity], ...] best first (empty in summaries)."""

    id: int
    instrument: str
    seq: int
    taken_at: str
    bids: list[tuple[str, str]] = []
    asks: list[tuple[str, str]] = []


async def take_snapshot(redis: AnyRedis, db: AsyncEngine, instrument: Instrument,
                        keys: InstrumentKeys) -> SnapshotInfo:
    """Read the instrument's whole book with its seq in one atomic call and store it; the stored row."""
    book = await read_book(redis, instrument, keys, WHOLE_BOOK)
    bids = [[level.price, level.quantity] for level in book.bids]
    asks = [[level.price, level.quantity] for level in book.asks]
    taken_at = dt.datetime.now(dt.UTC)
    async with db.begin() as conn:
        snapshot_id = (await conn.execute(
            insert(orderbook_snapshots).values(instrument=instrument.symbol, book_seq=book.seq,
                                               taken_at=taken_at, bids=bids, asks=asks)
            .returning(orderbook_snapshots.c.id))).scalar_one()
    return SnapshotInfo(snapshot_id, instrument.symbol, book.seq, iso(taken_at))


async def latest_snapshot(db: AsyncEngine, symbol: str) -> SnapshotInfo | None:
    """The newest stored snapshot of an instrument, with its levels."""
    query = (select(orderbook_snapshots).where(orderbook_snapshots.c.instrument == symbol)
             .order_by(orderbook_snapshots.c.id.desc()).limit(1))
    async with db.connect() as conn:
        row = (await conn.execute(query)).mappings().first()
    if row is None:
        return None
    return SnapshotInfo(row["id"], row["instrument"], row["book_seq"], iso(row["taken_at"]),
                        [tuple(level) for level in row["bids"]], [tuple(level) for level in row["asks"]])
