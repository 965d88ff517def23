"""What Redis and PostgreSQL say about an instrument, read for the heal (services/matcher/heal.py)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import msgspec
from redis.exceptions import ResponseError
from sqlalchemy import BigInteger, Text, all_, bindparam, func, select, tuple_
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import order_events, orders, trades
from services.common.groups import group_info
from services.common.instruments import NOTIONAL_LIMB, Instrument
from services.common.keys import MATCHER_GROUP, InstrumentKeys
from services.common.redis_conn import AnyRedis
from services.common.stream_ids import ZERO, StreamId, is_stream_id, parse_stream_id
from services.common.wire import OrderRecord, text
from services.matcher.recovery import NOTHING_PERSISTED, epoch_ms, sequences_query

HEALING = "healing"  # meta field while a heal runs (match.lua checks it)


@dataclass(frozen=True, slots=True)
class RedisState:
    """What the instrument's meta hash and matcher group say."""

    trade_seq: int
    event_seq: int
    book_seq: int
    position: StreamId  # the matcher's: the later of meta's last_id and the group's last-delivered id
    healing: bool


@dataclass(frozen=True, slots=True)
class Stored:
    """What PostgreSQL holds for the instrument."""

    trade_seq: int
    event_seq: int
    snapshot_book_seq: int

    def ahead_of(self, redis: RedisState) -> bool:
        # Not the command markers: after a rebuild from PostgreSQL the group starts again at 0 on a new
        # stream, below the markers, and nothing is behind.
        return (self.trade_seq > redis.trade_seq or self.event_seq > redis.event_seq
                or self.snapshot_book_seq > redis.book_seq)


# Reading Redis ---------------------------------------------------------------------------------

async def read_redis_state(redis: AnyRedis, keys: InstrumentKeys) -> RedisState | None:
    """The instrument's sequences and position; None when meta is missing (recovery.py's case)."""
    trade, event, book, last_id, healing = await redis.hmget(
        keys.meta, ["trade_seq", "event_seq", "book_seq", "last_id", HEALING])
    if trade is None and last_id is None:
        return None
    position = parse_stream_id(text(last_id)) if last_id else ZERO
    info = await group_info(redis, keys.orders, MATCHER_GROUP)
    if info is not None:
        position = max(position, parse_stream_id(text(info["last-delivered-id"])))
    return RedisState(int(trade or 0), int(event or 0), int(book or 0), position, healing is not None)


async def stream_end(redis: AnyRedis, key: str) -> tuple[StreamId, int]:
    """(last generated id, entries ever added) of a stream; zeros when it does not exist."""
    try:
        info = await redis.xinfo_stream(key)
    except ResponseError:
        return ZERO, 0
    return parse_stream_id(text(info["last-generated-id"])), int(info.get("entries-added") or 0)


# Reading PostgreSQL ----------------------------------------------------------------------------

async def read_stored(engine: AsyncEngine, symbol: str) -> Stored | None:
    """The instrument's highest sequences in PostgreSQL; None when it has no schema."""
    try:
        async with engine.connect() as conn:
            trade, event, book, _ = (await conn.execute(sequences_query(symbol))).one()
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) in NOTHING_PERSISTED:
            return None
        raise
    return Stored(int(trade or 0), int(event or 0), int(book or 0))


def _stream_id_parts(column: Any) -> Any:
    return tuple_(func.split_part(column, "-", 1).cast(BigInteger), func.split_part(column, "-", 2).cast(BigInteger))


@dataclass(frozen=True, slots=True)
class Accounting:
    """What PostgreSQL can tell is missing, and the commands it shows applied that Redis lost."""

    missing_trades: int
    missing_events: int
    commands_beyond: int  # marked commands the restored orders stream does not hold


async def read_accounting(engine: AsyncEngine, symbol: str, after_event_seq: int, after: StreamId,
                          on_stream: list[str]) -> Accounting:
    """The gaps in both sequences, and the marked commands after `after` that are not `on_stream`, among
    the events after `after_event_seq` (the ones the restored Redis never saw)."""
    e = order_events.c
    # One array parameter, however many ids (an IN list is limited to 32,767 parameters).
    beyond = select(func.count(func.distinct(e.command_id))).where(
        e.instrument == symbol, e.seq > after_event_seq, e.command_id.is_not(None),
        _stream_id_parts(e.command_id) > tuple_(*after),
        e.command_id != all_(bindparam("on_stream", on_stream, type_=ARRAY(Text))))
    async with engine.connect() as conn:
        trade_count, trade_max = (await conn.execute(
            select(func.count(), func.coalesce(func.max(trades.c.seq), 0)).where(trades.c.instrument == symbol))).one()
        event_count, event_max = (await conn.execute(
            select(func.count(), func.coalesce(func.max(e.seq), 0)).where(e.instrument == symbol))).one()
        commands_beyond = int((await conn.execute(beyond)).scalar() or 0)
    return Accounting(int(trade_max) - int(trade_count), int(event_max) - int(event_count), commands_beyond)


async def latest_marker(engine: AsyncEngine, symbol: str) -> StreamId | None:
    """The highest command PostgreSQL's events show applied; None when no event carries a marker."""
    e = order_events.c
    # Event seqs follow command order, so the marker of the highest marked event is the highest marker.
    query = select(e.command_id).where(e.instrument == symbol, e.command_id.is_not(None)) \
        .order_by(e.seq.desc()).limit(1)
    async with engine.connect() as conn:
        marker = (await conn.execute(query)).scalar()
    return parse_stream_id(marker) if marker is not None and is_stream_id(marker) else None


async def stored_states(engine: AsyncEngine, symbol: str, ids: list[str]) -> dict[str, Any]:
    """PostgreSQL's row (state columns) of each of `ids` it holds."""
    o = orders.c
    query = select(o.order_id, o.status, o.price, o.quantity, o.filled_quantity, o.filled_quote, o.reason,
                   o.updated_at).where(o.instrument == symbol, o.order_id.in_(ids))
    async with engine.connect() as conn:
        return {row.order_id: row for row in (await conn.execute(query)).all()}


def corrected(instrument: Instrument, record: OrderRecord, row: Any) -> OrderRecord:
    """`record` with PostgreSQL's state of the order: its own fields are the same in both, but an amend
    stored in PostgreSQL and not in the restored Redis changed its price and quantity."""
    notional = instrument.notional_of(Decimal(row.filled_quote))
    price = record.price_ticks if row.price is None else instrument.price_ticks(row.price)
    return msgspec.structs.replace(
        record, status=row.status, price_ticks=price, quantity_lots=instrument.quantity_lots(row.quantity),
        filled_lots=instrument.quantity_lots(row.filled_quantity),
        reason=row.reason or "", updated_at=epoch_ms(row.updated_at),
        notional_hi=notional // NOTIONAL_LIMB, notional_lo=notional % NOTIONAL_LIMB)
