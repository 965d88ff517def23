"""Healing an instrument whose Redis state came back older than PostgreSQL, before it matches again.

An operator restored an older backup, or a Redis without AOF (or with `appendfsync everysec` after a
host crash) restarted from an older snapshot: its meta hash exists, so recovery.py's rebuild does not
run, but PostgreSQL already holds trades and events with higher sequences. Matching on would reuse
those sequences (the persister's ON CONFLICT DO NOTHING would drop the new rows), apply again commands
PostgreSQL shows applied, and match against orders PostgreSQL holds as filled. The heal, in order:

1. marks meta `healing`: match.lua refuses to run, and a heal cut short is redone at the next start;
2. writes to PostgreSQL what the restored trades and events streams hold beyond the persister group's
   acknowledged position (services/persister/catch_up.py). Merging, not waiting for the persister: the
   heal must not depend on another process being up, and the entries to write are exactly the ones the
   persister would write, with its own idempotent statements (a worker writing them too changes
   nothing). After it, PostgreSQL holds everything the restored streams hold, so the book below is
   rebuilt from all there is;
3. makes the order records of orders PostgreSQL knows say what PostgreSQL says; records only the
   restored Redis holds stay when they await their command (`accepted`), so they are matched;
4. rebuilds the book from PostgreSQL (recovery.py), in original time priority, with its open-order counts;
5. moves the matcher group past every command PostgreSQL's `command_id` markers show applied (commands
   apply in stream order, so everything at or below the highest marker was applied);
6. writes meta with every sequence resuming after PostgreSQL's and the reference price of the price band (its
   last trade's), and removes `healing`, in one MULTI.

What neither the restored Redis nor PostgreSQL holds cannot come back: the heal counts what it can tell
is missing (gaps in PostgreSQL's sequences, commands shown applied whose order PostgreSQL does not
know, restored resting orders PostgreSQL does not know) and logs it in one `redis_healed` line.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, cast

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.groups import group_info
from services.common.halts import sync_halts
from services.common.instruments import Instrument
from services.common.keys import MATCHER_GROUP, InstrumentKeys
from services.common.redis_conn import AnyRedis
from services.common.slots import AnyPipeline, transaction
from services.common.stream_ids import ZERO, StreamId, format_stream_id, parse_stream_id
from services.common.wire import decode_record, encode_record, fields_to_dict, text
from services.matcher.heal_state import (
    HEALING,
    Accounting,
    RedisState,
    Stored,
    corrected,
    latest_marker,
    read_accounting,
    read_redis_state,
    read_stored,
    stored_states,
    stream_end,
)
from services.matcher.recovery import (
    DB_ERRORS,
    RESTING,
    PersistedBook,
    Sequences,
    load_persisted,
    meta_fields,
    recovery_engine,
    until_answered,
    write_book,
)
from services.matcher.risk_state import REFERENCE
from services.persister.catch_up import CaughtUp, persist_unacknowledged
from services.persister.writer import DatabaseUnavailable

logger = logging.getLogger(__name__)

PAGE = 500
LOGGED_IDS = 20  # order ids named in the log line, at most
HEAL_ERRORS = (*DB_ERRORS, DatabaseUnavailable)


@dataclass(slots=True)
class Healed:
    """What a heal found and did; the `redis_healed` log line."""

    instrument: str
    redis_trade_seq: int  # as restored
    redis_event_seq: int
    redis_last_id: str
    stored_trade_seq: int  # in PostgreSQL, after the merge
    stored_event_seq: int
    stored_command_id: str  # the highest command PostgreSQL shows applied ("" when none is marked)
    trade_seq: int = 0  # every sequence resumes after these
    event_seq: int = 0
    book_seq: int = 0
    arrival_seq: int = 0
    last_id: str = ""  # the matcher group's position after the heal
    merged_trades: int = 0  # restored stream entries the persister had not acknowledged, written first
    merged_events: int = 0
    merge_failed: int = 0  # malformed or refused: left to the persister's dead-letter path
    book_orders: int = 0  # resting orders rebuilt from PostgreSQL
    book_skipped: int = 0  # open in PostgreSQL but unusable (recovery.py logs each)
    records_corrected: int = 0  # restored order records replaced by PostgreSQL's state
    records_awaiting_command: int = 0  # only in the restored Redis, still `accepted`: matched next
    records_removed: int = 0  # resting in the restored Redis, unknown to PostgreSQL: not in the book
    commands_skipped: int = 0  # on the restored stream after its position, applied per PostgreSQL
    commands_only_in_postgresql: int = 0  # applied per PostgreSQL, beyond the restored stream (their
    #                                       idempotency records are gone: a client retry makes a new order)
    missing_trades: int = 0  # gaps in PostgreSQL's trade sequence: trades nothing holds any more
    missing_events: int = 0  # gaps in PostgreSQL's event sequence
    orders_lost: int = 0  # commands shown applied whose order PostgreSQL does not know, + records_removed
    lost_order_ids: list[str] = field(default_factory=list)  # the first LOGGED_IDS of them
    seconds: float = 0.0

    def missing(self) -> dict[str, int]:
        """What can be told lost, by kind (the `matcher_heal_missing` gauge)."""
        return {"trades": self.missing_trades, "events": self.missing_events, "orders": self.orders_lost}


class _Heal:
    """One heal of one instrument (see the module docstring for the steps)."""

    def __init__(self, redis: AnyRedis, instrument: Instrument, keys: InstrumentKeys, engine: AsyncEngine,
                 backoff_initial_s: float, backoff_max_s: float) -> None:
        self.redis = redis
        self.instrument = instrument
        self.keys = keys
        self.engine = engine
        self.backoff = (backoff_initial_s, backoff_max_s)
        self.lost: dict[str, None] = {}  # order ids, in the order found

    async def _db(self, what: str, action: Any) -> Any:
        return await until_answered(self.engine, self.instrument, f"the heal ({what})", action, *self.backoff,
                                    errors=HEAL_ERRORS)

    async def run(self, restored: RedisState) -> Healed:
        started = time.perf_counter()
        symbol, keys = self.instrument.symbol, self.keys
        await self.redis.hset(keys.meta, HEALING, str(time.time_ns() // 1_000_000))
        merged: CaughtUp = await self._db("writing the restored streams", lambda: persist_unacknowledged(
            self.redis, self.engine, keys.prefix, self.instrument))
        stored: Stored = await self._db("reading sequences", lambda: read_stored(self.engine, symbol))
        marker: StreamId | None = await self._db("reading command markers", lambda: latest_marker(
            self.engine, symbol))
        position = max(restored.position, marker or ZERO)
        skipped = await self._skipped_commands(restored.position, position)
        accounting: Accounting = await self._db("reading what is missing", lambda: read_accounting(
            self.engine, symbol, restored.event_seq, restored.position, skipped))
        book: PersistedBook = await self._db("reading open orders", lambda: load_persisted(
            self.engine, self.instrument)) or PersistedBook(Sequences(0, 0, 0), [])
        healed = Healed(
            symbol, restored.trade_seq, restored.event_seq, format_stream_id(restored.position),
            stored.trade_seq, stored.event_seq,
            "" if marker is None else format_stream_id(marker), commands_skipped=len(skipped),
            merged_trades=merged.trades, merged_events=merged.events, merge_failed=merged.failed,
            book_orders=len(book.records), book_skipped=len(book.skipped),
            commands_only_in_postgresql=accounting.commands_beyond,
            missing_trades=accounting.missing_trades, missing_events=accounting.missing_events)

        book = await self._reconcile_records(book, healed)
        await write_book(self.redis, keys, book)
        # The backup's halts may be lifted since, or lack newer ones: PostgreSQL holds the ones in force.
        await self._db("syncing the halts", lambda: sync_halts(self.redis, keys, self.engine))
        await self._move_group(position)
        sequences = Sequences(
            max(stored.trade_seq, restored.trade_seq, book.sequences.trade_seq),
            max(stored.event_seq, restored.event_seq, book.sequences.event_seq),
            max(book.sequences.book_seq, stored.snapshot_book_seq, restored.book_seq))
        last_id = format_stream_id(position)

        def mark_healed(pipe: AnyPipeline) -> None:
            pipe.hset(keys.meta, mapping=meta_fields(sequences, len(book.records), last_id, "healed_at",
                                                     book.reference_ticks))
            if book.reference_ticks is None:
                pipe.hdel(keys.meta, REFERENCE)  # PostgreSQL, with the restored streams merged, holds no trade
            pipe.hdel(keys.meta, HEALING)

        await transaction(self.redis, mark_healed)

        healed.trade_seq, healed.event_seq, healed.book_seq = (
            sequences.trade_seq, sequences.event_seq, sequences.book_seq)
        healed.arrival_seq, healed.last_id = len(book.records), last_id
        healed.orders_lost = len(self.lost)
        healed.lost_order_ids = list(self.lost)[:LOGGED_IDS]
        healed.seconds = round(time.perf_counter() - started, 3)
        return healed

    async def _skipped_commands(self, restored: StreamId, position: StreamId) -> list[str]:
        """The commands after the restored position up to `position` (PostgreSQL shows them applied), noting
        as lost the new orders among them that PostgreSQL does not know."""
        skipped: list[str] = []
        lower = "(" + format_stream_id(restored)
        while position > restored:
            batch = cast(list[tuple[bytes, dict[bytes, bytes]]], await self.redis.xrange(
                self.keys.orders, min=lower, max=format_stream_id(position), count=PAGE) or [])
            skipped.extend(text(entry_id) for entry_id, _ in batch)
            new = [f["order_id"] for f in (fields_to_dict(raw) for _, raw in batch)
                   if f.get("cmd") == "new" and f.get("order_id")]
            if new:
                known = await self._db("looking up applied orders",
                                       partial(stored_states, self.engine, self.instrument.symbol, new))
                self.lost.update((order_id, None) for order_id in new if order_id not in known)
            if len(batch) < PAGE:
                break
            lower = "(" + skipped[-1]
        return skipped

    async def _reconcile_records(self, book: PersistedBook, healed: Healed) -> PersistedBook:
        """Order records say what PostgreSQL says; resting ones are then rewritten by write_book, from the
        book returned: PostgreSQL's, with the cancel-on-disconnect session of the records that had one."""
        resting = {r.order_id: msgspec.structs.replace(r, arrival_seq=0) for r in book.records}
        unusable = set(book.skipped)
        # PostgreSQL does not store the session: a resting order the restored Redis holds keeps its own, so
        # that its session's sweep and set still name it.
        sessions: dict[str, str] = {}
        cursor = 0
        while True:
            cursor, page = await self.redis.hscan(self.keys.order_state, cursor, count=PAGE)
            records = {text(k): decode_record(v) for k, v in cast(dict[bytes, bytes], page).items()}
            sessions.update((i, r.session) for i, r in records.items() if i in resting and r.session)
            healed.records_corrected += sum(msgspec.structs.replace(r, arrival_seq=0, session="") != resting[i]
                                            for i, r in records.items() if i in resting)
            ids = [i for i in records if i not in resting]
            stored = await self._db("reading order states", partial(
                stored_states, self.engine, self.instrument.symbol, ids)) if ids else {}
            updates: dict[str, bytes] = {}
            removals: list[str] = []
            for order_id in ids:
                record, row = records[order_id], stored.get(order_id)
                if row is None:
                    if record.status == "accepted" and order_id not in self.lost:
                        healed.records_awaiting_command += 1
                    elif record.status in RESTING:
                        # The restored Redis says it rests, PostgreSQL has no trace of it (its events were
                        # lost): it is not in the rebuilt book, so its record must not say it rests.
                        removals.append(order_id)
                        self.lost[order_id] = None
                    continue
                if order_id in unusable:
                    removals.append(order_id)  # open in PostgreSQL but not in the book: as a rebuild leaves it
                    continue
                try:
                    fixed = corrected(self.instrument, record, row)
                except ValueError as exc:
                    logger.error("order record left out of the heal: %s", exc,
                                 extra={"instrument": self.instrument.symbol, "order_id": order_id})
                    removals.append(order_id)
                    continue
                if fixed != record:
                    updates[order_id] = encode_record(fixed)
            healed.records_corrected += len(updates)
            healed.records_removed += len(removals)
            if updates:
                await self.redis.hset(self.keys.order_state, mapping=updates)  # type: ignore[arg-type]
            if removals:
                await self.redis.hdel(self.keys.order_state, *removals)
            if cursor == 0:
                break
        if not sessions:
            return book
        return dataclasses.replace(book, records=[
            msgspec.structs.replace(r, session=sessions[r.order_id]) if r.order_id in sessions else r
            for r in book.records])

    async def _move_group(self, position: StreamId) -> None:
        """The matcher group reads next the first command after `position`; new ids come after it too."""
        keys, target = self.keys, format_stream_id(position)
        info = await group_info(self.redis, keys.orders, MATCHER_GROUP)
        if info is not None and parse_stream_id(text(info["last-delivered-id"])) >= position:
            return
        end, entries_added = await stream_end(self.redis, keys.orders)
        # ENTRIESREAD keeps the group's lag known (ingest's backpressure reads it).
        entries_read = max(0, entries_added - await self._count_after(target))
        if position > end:
            # A clock behind the restored ids would otherwise hand new commands ids at or below the
            # position, and the group would never read them.
            await self.redis.execute_command("XSETID", keys.orders, target)
        if info is None:
            await self.redis.xgroup_create(keys.orders, MATCHER_GROUP, id=target, mkstream=True,
                                           entries_read=entries_read)
        else:
            await self.redis.xgroup_setid(keys.orders, MATCHER_GROUP, id=target, entries_read=entries_read)

    async def _count_after(self, entry_id: str) -> int:
        """Entries of the orders stream after `entry_id`: commands still to apply."""
        count, lower = 0, "(" + entry_id
        while True:
            batch = cast(list[tuple[bytes, Any]], await self.redis.xrange(
                self.keys.orders, min=lower, max="+", count=PAGE) or [])
            count += len(batch)
            if len(batch) < PAGE:
                return count
            lower = "(" + text(batch[-1][0])


# The whole heal --------------------------------------------------------------------------------

async def heal_if_behind(redis: AnyRedis, instrument: Instrument, keys: InstrumentKeys, database_url: str, *,
                         backoff_initial_s: float = 0.1, backoff_max_s: float = 5.0,
                         connect_timeout_s: float = 2.0) -> Healed | None:
    """Heal the instrument when PostgreSQL holds sequences beyond its Redis state (or a heal was cut
    short); None when there was nothing to heal.

    Comparing is best effort (matching never waits for it when PostgreSQL does not answer); once a heal
    has begun, it waits for PostgreSQL and is redone until it completes.
    """
    restored = await read_redis_state(redis, keys)
    if restored is None:
        return None  # meta missing: recover_instrument rebuilds instead
    symbol = instrument.symbol
    engine = recovery_engine(database_url, connect_timeout_s)
    try:
        if not restored.healing:
            try:
                stored = await read_stored(engine, symbol)
            except HEAL_ERRORS as exc:
                logger.warning("could not compare redis with postgresql: %r", exc, extra={"instrument": symbol})
                return None
            if stored is None or not stored.ahead_of(restored):
                return None
        logger.info("redis state is older than postgresql: healing before matching", extra={
            "event": "redis_heal_started", "instrument": symbol, "redis_trade_seq": restored.trade_seq,
            "redis_event_seq": restored.event_seq, "resumed": restored.healing})
        healed = await _Heal(redis, instrument, keys, engine, backoff_initial_s, backoff_max_s).run(restored)
    finally:
        await engine.dispose()
    log = logger.error if any(healed.missing().values()) else logger.warning
    log("redis healed: state was older than postgresql; sequences resume after postgresql's, applied commands "
        "skipped, book rebuilt from postgresql (%d trades, %d events, %d orders could be told lost)",
        healed.missing_trades, healed.missing_events, healed.orders_lost,
        extra={"event": "redis_healed", **asdict(healed)})
    return healed

