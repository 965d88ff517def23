"""Rebuilding an instrument's order book from PostgreSQL when Redis lost its state.

Redis holds the live book; PostgreSQL holds what the persister wrote from the streams. When the
instrument's meta hash is gone (Redis restarted without persistence, or a fresh install), the open
orders stored in PostgreSQL are put back into the book at their price and quantity as last amended, in
their time priority (`orders.queued_seq`: the seq of the event that gave each its place, its accepted
event or the amend that re-queued it), and every sequence resumes after the highest one persisted,
before match.lua runs for the instrument again.

The rebuild is idempotent: it clears the book keys, writes the orders, levels and depths, brings the
per-client index (`co` zsets) to the order records, writes the open-order counts of the orders it put back and
the reference price (the last trade price PostgreSQL holds) for match.lua's risk limits (risk_state.py), and
writes the meta hash last. Meta is the completion marker: a rebuild cut short leaves meta missing, so the next
start rebuilds again from scratch. The order state hash and the orders stream are left alone: ingest may
already have accepted new orders into them (and into their clients' index), and they are applied after the
rebuild.
A Redis that kept older state instead of losing it (meta present, PostgreSQL ahead) is healed by
heal.py, which reuses this module's reads and book writing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar, cast, get_args

import asyncpg
from redis.typing import EncodableT, FieldT
from sqlalchemy import and_, func, select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from services.common.db import order_events, orderbook_snapshots, orders, trades
from services.common.halts import restore_halts
from services.common.instruments import NOTIONAL_LIMB, Instrument
from services.common.keys import CLIENT_ORDERS, InstrumentKeys
from services.common.redis_conn import AnyRedis
from services.common.scripts import book_member
from services.common.urls import mask_url
from services.common.wire import RESTING_STATUSES, OrderRecord, SelfTradePrevention, decode_record, encode_record
from services.matcher.risk_state import COUNTS_BUILT, REFERENCE, open_counts, write_open_counts

logger = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
RESTING = RESTING_STATUSES  # heal.py's name too
LIVE = frozenset({"accepted", *RESTING})  # the orders the per-client index holds
GLOB_SPECIAL = frozenset("*?[]\\")
SELF_TRADE_MODES = frozenset(get_args(SelfTradePrevention))
# SQLSTATEs meaning nothing was ever written at this URL: no database, or no schema in it.
NOTHING_PERSISTED = frozenset({"3D000", "42P01"})
DB_ERRORS = (SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
CHUNK = 500  # orders (or levels) per pipeline while writing the book
T = TypeVar("T")


class UnusableRow(ValueError):
    """A stored open order that cannot be put back into the book."""


@dataclass(frozen=True, slots=True)
class Sequences:
    """The highest sequences PostgreSQL holds for an instrument (0 when none)."""

    trade_seq: int
    event_seq: int
    book_seq: int


@dataclass(frozen=True, slots=True)
class PersistedBook:
    """An instrument's open orders as stored, in time priority, with the sequences to resume after."""

    sequences: Sequences
    records: list[OrderRecord]  # arrival_seq renumbered 1..n in the original order
    skipped: list[str] = field(default_factory=list)  # ids of open orders that could not be rebuilt
    reference_ticks: int | None = None  # the last trade's price: the price band's reference (None: no trade)


@dataclass(frozen=True, slots=True)
class Recovered:
    """What a rebuild wrote."""

    instrument: str
    orders: int
    bids: int
    asks: int
    bid_levels: int
    ask_levels: int
    skipped: int
    trade_seq: int
    event_seq: int
    book_seq: int
    arrival_seq: int
    seconds: float


async def state_lost(redis: AnyRedis, keys: InstrumentKeys) -> bool:
    """True when the instrument's meta hash is missing: Redis lost its state, or nothing was ever matched."""
    trade_seq, last_id = await redis.hmget(keys.meta, ["trade_seq", "last_id"])
    return trade_seq is None and last_id is None


# Reading PostgreSQL --------------------------------------------------------------------------------

def epoch_ms(value: datetime) -> int:
    """A stored timestamp as ms since the epoch, as the Redis records hold it."""
    return (value - EPOCH) // timedelta(milliseconds=1)


def sequences_query(symbol: str) -> Any:
    """(max trade seq, max event seq, max snapshot book seq, whether any order is stored) of an instrument."""
    return select(
        select(func.max(trades.c.seq)).where(trades.c.instrument == symbol).scalar_subquery(),
        select(func.max(order_events.c.seq)).where(order_events.c.instrument == symbol).scalar_subquery(),
        select(func.max(orderbook_snapshots.c.book_seq))
        .where(orderbook_snapshots.c.instrument == symbol).scalar_subquery(),
        select(orders.c.order_id).where(orders.c.instrument == symbol).limit(1).exists(),
    )


def last_trade_price_query(symbol: str) -> Any:
    """The price of the instrument's last trade (the highest seq): the price band's reference."""
    return select(trades.c.price).where(trades.c.instrument == symbol).order_by(trades.c.seq.desc()).limit(1)


def _open_orders_query(symbol: str) -> Any:
    # The seq of the event that gave an order its place in the queue is the matcher's own arrival order:
    # an order takes its arrival number in the very command that emitted that event (its accepted event,
    # or an amended one that re-queued it), and commands apply in order. queued_seq holds it; rows
    # stored without it (before migration 0005 backfilled it) fall back to the accepted event's seq.
    accepted = order_events.alias("accepted")
    joined = orders.outerjoin(accepted, and_(
        accepted.c.instrument == orders.c.instrument,
        accepted.c.order_id == orders.c.order_id,
        accepted.c.event == "accepted",
        orders.c.queued_seq.is_(None),
    ))
    place = func.coalesce(orders.c.queued_seq, accepted.c.seq)
    return (
        select(orders.c.order_id, orders.c.client_id, orders.c.client_order_id, orders.c.side, orders.c.type,
               orders.c.time_in_force, orders.c.post_only, orders.c.price, orders.c.quantity,
               orders.c.filled_quantity, orders.c.filled_quote, orders.c.status, orders.c.reason,
               orders.c.created_at, orders.c.updated_at, orders.c.self_trade_prevention,
               place.label("queued_seq"))
        .select_from(joined)
        .where(orders.c.instrument == symbol, orders.c.status.in_(RESTING))
        .order_by(place.nulls_last(), orders.c.last_event_seq, orders.c.order_id)
    )


def order_record(instrument: Instrument, row: Any, arrival: int) -> OrderRecord:
    """The Redis order record of a stored open order; UnusableRow when it cannot rest in the book."""
    if row.queued_seq is None or row.side not in ("buy", "sell") or row.created_at is None:
        raise UnusableRow(f"order {row.order_id!r}: its accepted event is not stored")
    mode: SelfTradePrevention = row.self_trade_prevention or "none"
    if mode not in SELF_TRADE_MODES:
        raise UnusableRow(f"order {row.order_id!r}: self_trade_prevention={mode!r}")
    if row.type != "limit" or row.time_in_force != "GTC" or row.price is None:
        raise UnusableRow(f"order {row.order_id!r}: a {row.type} {row.time_in_force} order cannot rest")
    try:
        price = instrument.price_ticks(row.price)
        quantity = instrument.quantity_lots(row.quantity)
        filled = instrument.quantity_lots(row.filled_quantity)
        # filled_quote is the exact sum of price x quantity over the fills.
        notional = instrument.notional_of(Decimal(row.filled_quote))
    except ValueError as exc:
        raise UnusableRow(f"order {row.order_id!r}: {exc}") from exc
    if not 0 <= filled < quantity or price < 1 or notional < 0:
        raise UnusableRow(f"order {row.order_id!r}: filled {filled} of {quantity} lots at {price} ticks")
    return OrderRecord(
        order_id=row.order_id, client_id=row.client_id, client_order_id=row.client_order_id or "",
        side=row.side, type="limit", time_in_force="GTC", post_only=1 if row.post_only else 0,
        price_ticks=price, quantity_lots=quantity, filled_lots=filled, status=row.status,
        reason=row.reason or "", created_at=epoch_ms(row.created_at), updated_at=epoch_ms(row.updated_at),
        arrival_seq=arrival, notional_hi=notional // NOTIONAL_LIMB, notional_lo=notional % NOTIONAL_LIMB,
        # The COD session is not stored: a rebuilt order is no longer tied to a socket (its session's set
        # was lost with the rest of Redis), as if placed without cancel-on-disconnect.
        self_trade_prevention=mode, session="",
    )


async def load_persisted(engine: AsyncEngine, instrument: Instrument) -> PersistedBook | None:
    """The instrument's open orders and sequences as PostgreSQL holds them; None when it holds nothing."""
    symbol = instrument.symbol
    try:
        async with engine.connect() as conn:
            # One snapshot for the sequences and the orders, whatever a persister commits meanwhile.
            await conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            async with conn.begin():
                max_trade, max_event, max_book, any_order = (await conn.execute(sequences_query(symbol))).one()
                if max_trade is None and max_event is None and max_book is None and not any_order:
                    return None
                rows = (await conn.execute(_open_orders_query(symbol))).all()
                last_price = (await conn.execute(last_trade_price_query(symbol))).scalar_one_or_none()
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) in NOTHING_PERSISTED:
            logger.warning("no schema at the database: nothing persisted", extra={
                "instrument": symbol, "database": safe_url(engine), "error": str(exc.orig)})
            return None
        raise
    event_seq = int(max_event or 0)
    # match.lua never issues a book seq above the event seq, so this resumes after every book seq
    # of persisted state, and after any snapshot's.
    sequences = Sequences(int(max_trade or 0), event_seq, max(event_seq, int(max_book or 0)))
    records: list[OrderRecord] = []
    skipped: list[str] = []
    for row in rows:
        try:
            records.append(order_record(instrument, row, len(records) + 1))
        except UnusableRow as exc:
            logger.error("open order left out of the rebuilt book: %s", exc,
                         extra={"instrument": symbol, "order_id": row.order_id})
            skipped.append(row.order_id)
    reference = None if last_price is None else instrument.price_ticks(last_price)
    return PersistedBook(sequences, records, skipped, reference)


def safe_url(engine: AsyncEngine) -> str:
    return mask_url(engine.url.render_as_string(hide_password=False))


# Writing Redis -----------------------------------------------------------------------------------

def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


async def write_book(redis: AnyRedis, keys: InstrumentKeys, book: PersistedBook,
                     chunk: int | None = None) -> None:
    """Replace the instrument's book with `book` (its orders' records included), bring the per-client index
    to the records (index_clients) and write the open-order counts of `book`; meta is the caller's."""
    chunk = chunk or CHUNK
    await redis.delete(keys.bid_orders, keys.ask_orders, keys.bid_levels, keys.ask_levels,
                       keys.bid_depth, keys.ask_depth)
    depth: dict[str, dict[int, int]] = {"buy": {}, "sell": {}}
    for part in _chunks(book.records, chunk):
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hset(keys.order_state, mapping={r.order_id: encode_record(r) for r in part})
            for side, key, sign in (("buy", keys.bid_orders, -1), ("sell", keys.ask_orders, 1)):
                members = {book_member(r.arrival_seq, r.order_id): sign * r.price_ticks for r in part if r.side == side}
                if members:
                    pipe.zadd(key, members)
            await pipe.execute()
        for r in part:
            levels = depth[r.side]
            levels[r.price_ticks] = levels.get(r.price_ticks, 0) + r.quantity_lots - r.filled_lots
    for side, levels_key, depth_key, sign in (("buy", keys.bid_levels, keys.bid_depth, -1),
                                              ("sell", keys.ask_levels, keys.ask_depth, 1)):
        for part in _chunks(sorted(depth[side].items()), chunk):
            async with redis.pipeline(transaction=False) as pipe:
                pipe.zadd(levels_key, {str(ticks): sign * ticks for ticks, _ in part})
                pipe.hset(depth_key, mapping={str(ticks): str(lots) for ticks, lots in part})
                await pipe.execute()
    await index_clients(redis, keys, chunk)
    await write_open_counts(redis, keys, open_counts(book.records))


def client_index_pattern(keys: InstrumentKeys) -> str:
    """SCAN's MATCH pattern of every client's live-orders zset of the instrument (keys.CLIENT_ORDERS)."""
    head = f"{keys.prefix}{CLIENT_ORDERS.kind}:{{{keys.symbol}}}:"
    return "".join(f"\\{c}" if c in GLOB_SPECIAL else c for c in head) + "*"


async def index_clients(redis: AnyRedis, keys: InstrumentKeys, chunk: int | None = None) -> tuple[int, int]:
    """Make the per-client index say what the order records say: every live record's id in its client's
    zset (score created_at), no other member in any of the instrument's zsets; (indexed, removed).

    Safe beside a running ingest: accept.lua writes an order's live record and its member in one call, so a
    member is removed only when its record says final or is gone, which no accept can undo.
    """
    chunk = chunk or CHUNK
    indexed = removed = 0
    cursor = 0
    while True:
        cursor, page = await redis.hscan(keys.order_state, cursor, count=chunk)
        live = [r for r in map(decode_record, cast(dict[bytes, bytes], page).values()) if r.status in LIVE]
        if live:
            async with redis.pipeline(transaction=False) as pipe:
                for r in live:
                    pipe.zadd(keys.client_orders(r.client_id), {r.order_id: r.created_at})
                await pipe.execute()
            indexed += len(live)
        if cursor == 0:
            break
    async for key in redis.scan_iter(match=client_index_pattern(keys), count=1000, _type="zset"):
        members = cast(list[bytes], await redis.zrange(key, 0, -1))
        for part in _chunks(members, chunk):
            packed = cast(list[bytes | None], await redis.hmget(keys.order_state, list(part)))
            stale = [m for m, p in zip(part, packed, strict=True) if p is None or decode_record(p).status not in LIVE]
            if stale:
                removed += int(await redis.zrem(key, *stale))
    return indexed, removed


def meta_fields(sequences: Sequences, arrival_seq: int, last_id: str, stamp: str,
                reference_ticks: int | None) -> dict[FieldT, EncodableT]:
    """The meta hash match.lua resumes from, stamped with when and why (`stamp`) it was written; with the
    reference price where there is one (the caller removes a stale one), and the mark that write_book built the
    open-order counts."""
    fields: dict[FieldT, EncodableT] = {
        "trade_seq": str(sequences.trade_seq), "event_seq": str(sequences.event_seq),
        "book_seq": str(sequences.book_seq), "arrival_seq": str(arrival_seq), "last_id": last_id,
        stamp: str(time.time_ns() // 1_000_000), COUNTS_BUILT: "1",
    }
    if reference_ticks is not None:
        fields[REFERENCE] = str(reference_ticks)
    return fields


# The whole recovery ------------------------------------------------------------------------------

def recovery_engine(database_url: str, connect_timeout_s: float = 5.0) -> AsyncEngine:
    """A pool-less engine for the one-off reads of a rebuild."""
    return create_async_engine(database_url, poolclass=NullPool, connect_args={"timeout": connect_timeout_s})


async def until_answered(engine: AsyncEngine, instrument: Instrument, what: str,
                         action: Callable[[], Awaitable[T]], backoff_initial_s: float, backoff_max_s: float,
                         errors: tuple[type[BaseException], ...] = DB_ERRORS) -> T:
    """`action()` retried with capped exponential backoff for as long as PostgreSQL does not answer."""
    backoff, attempt = backoff_initial_s, 0
    while True:
        attempt += 1
        try:
            return await action()
        except errors as exc:
            # Matching over a book PostgreSQL has not given back would lose its orders and reuse
            # sequences: wait for PostgreSQL instead, matching nothing for this instrument.
            log = logger.error if attempt == 1 else logger.warning
            log("postgresql unavailable: %s waits", what, extra={
                "instrument": instrument.symbol, "database": safe_url(engine), "attempt": attempt,
                "retry_in_s": backoff, "error": f"{type(exc).__name__}: {exc}"})
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, backoff_max_s)


async def _load_with_retry(database_url: str, instrument: Instrument, backoff_initial_s: float,
                           backoff_max_s: float) -> PersistedBook | None:
    engine = recovery_engine(database_url)
    try:
        return await until_answered(engine, instrument, "the book cannot be rebuilt, matching",
                                    lambda: load_persisted(engine, instrument), backoff_initial_s, backoff_max_s)
    finally:
        await engine.dispose()


async def recover_instrument(redis: AnyRedis, instrument: Instrument, keys: InstrumentKeys, database_url: str, *,
                             backoff_initial_s: float = 0.1, backoff_max_s: float = 5.0) -> Recovered | None:
    """Rebuild the book from PostgreSQL if Redis lost it; None when there was nothing to do.

    PostgreSQL is consulted only when the meta hash is missing; it is retried until it answers.
    """
    if not await state_lost(redis, keys):
        return None
    symbol = instrument.symbol
    started = time.perf_counter()
    logger.info("recovery started: no matcher state in redis, reading postgresql", extra={
        "instrument": symbol, "database": mask_url(database_url)})
    book = await _load_with_retry(database_url, instrument, backoff_initial_s, backoff_max_s)
    # The admin halts too (issue 16), whether or not PostgreSQL holds orders: they survive a Redis that lost them.
    await restore_halts(redis, keys, database_url, backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s)
    if book is None:
        logger.info("recovery skipped: postgresql holds nothing for the instrument (fresh install)",
                    extra={"instrument": symbol})
        return None
    await write_book(redis, keys, book)
    # Meta last: the completion marker of the rebuild.
    await redis.hset(keys.meta, mapping=meta_fields(book.sequences, len(book.records), "0-0", "recovered_at",
                                                    book.reference_ticks))
    bids = [r for r in book.records if r.side == "buy"]
    asks = [r for r in book.records if r.side == "sell"]
    seq = book.sequences
    done = Recovered(
        instrument=symbol, orders=len(book.records), bids=len(bids), asks=len(asks),
        bid_levels=len({r.price_ticks for r in bids}), ask_levels=len({r.price_ticks for r in asks}),
        skipped=len(book.skipped), trade_seq=seq.trade_seq, event_seq=seq.event_seq, book_seq=seq.book_seq,
        arrival_seq=len(book.records), seconds=round(time.perf_counter() - started, 3),
    )
    logger.info("recovery finished: book rebuilt from postgresql", extra=asdict(done))
    return done
