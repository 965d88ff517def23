"""Retention: trim the streams below every consumer group's position and evict persisted final orders.

Streams are trimmed with an exact MINID: the lowest id some group still needs (its oldest pending entry,
else the entry after its last-delivered one), and never newer than the age window, so replay and
redis-cli readers keep STREAM_RETENTION_S of history. Order records leave the `os:{I}` hash only when
they are final, old enough, and PostgreSQL holds the same final status (GET then reads PostgreSQL).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from redis.asyncio import RedisCluster
from redis.exceptions import ResponseError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import orders
from services.common.groups import needed_from
from services.common.keys import InstrumentKeys
from services.common.redis_conn import AnyRedis
from services.common.stream_ids import StreamId, format_stream_id
from services.common.wire import FINAL_STATUSES, decode_record, text
from services.persister.metrics import PersisterMetrics

logger = logging.getLogger(__name__)

_FINAL = sorted(FINAL_STATUSES)


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long streams and final order records stay in Redis."""

    stream_retention_s: float
    order_retention_s: float
    page: int = 500  # HSCAN COUNT, and so the ids checked against PostgreSQL per query


@dataclass(slots=True)
class RetentionResult:
    """What one run removed for one instrument."""

    trimmed: dict[str, int]  # stream key -> entries removed
    evicted: int


async def redis_now_ms(redis: AnyRedis, key: str) -> int:
    """Redis's own clock, that of the master holding `key`: it is the clock that stamped its stream ids (on a
    cluster of several hosts, each master's)."""
    if isinstance(redis, RedisCluster):
        await redis.initialize()  # the slot map (once; the client is lazy)
        seconds, micros = await redis.time(target_nodes=redis.get_node_from_key(key))
    else:
        seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def stream_floor(redis: AnyRedis, stream: str, age_floor: StreamId) -> StreamId:
    """The lowest id any group of `stream` still needs, capped at `age_floor` (entries below it may go)."""
    floor = age_floor
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:  # no such stream
        return floor
    for info in groups:
        floor = min(floor, await needed_from(redis, stream, info))
    return floor


async def trim_stream(redis: AnyRedis, stream: str, age_floor: StreamId) -> int:
    """XTRIM `stream` exactly to its floor; the number of entries removed."""
    floor = await stream_floor(redis, stream, age_floor)
    if floor <= (0, 0):
        return 0
    # Exact, not `~`: each run only removes what one interval added, Redis frees whole nodes and just
    # marks the boundary node's entries deleted, and an exact floor is easy to reason about and test.
    return int(await redis.xtrim(stream, minid=format_stream_id(floor), approximate=False))


async def persisted_final(db: AsyncEngine, candidates: dict[str, str]) -> list[str]:
    """The ids among `candidates` (id -> final status) whose row in PostgreSQL has that same status."""
    query = select(orders.c.order_id, orders.c.status).where(
        orders.c.order_id.in_(list(candidates)), orders.c.status.in_(_FINAL),
        orders.c.last_event_seq.is_not(None))
    async with db.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [order_id for order_id, status in rows if candidates.get(order_id) == status]


async def evict_orders(redis: AnyRedis, db: AsyncEngine, key: str, before_ms: int, page: int) -> int:
    """HDEL the final records of `key` last updated before `before_ms` that PostgreSQL holds."""
    evicted = 0
    cursor = 0
    while True:
        cursor, entries = await redis.hscan(key, cursor, count=page)
        candidates: dict[str, str] = {}
        for field, raw in cast(dict[bytes, bytes], entries).items():
            record = decode_record(raw)
            if record.status in FINAL_STATUSES and record.updated_at < before_ms:
                candidates[text(field)] = record.status
        if candidates:
            held = await persisted_final(db, candidates)
            # A final record never changes again, so deleting after the check cannot lose an update.
            if held:
                evicted += int(await redis.hdel(key, *held))
        if cursor == 0:
            return evicted


async def apply_retention(redis: AnyRedis, db: AsyncEngine, keys: InstrumentKeys,
                          policy: RetentionPolicy) -> RetentionResult:
    """One retention pass over one instrument's streams and order records."""
    now = await redis_now_ms(redis, keys.orders)
    age_floor = (max(0, now - int(policy.stream_retention_s * 1000)), 0)
    trimmed = {stream: await trim_stream(redis, stream, age_floor)
               for stream in (keys.orders, keys.trades, keys.events, keys.book)}
    evicted = await evict_orders(redis, db, keys.order_state, now - int(policy.order_retention_s * 1000),
                                 policy.page)
    return RetentionResult(trimmed, evicted)


def retention_job(redis: AnyRedis, db: AsyncEngine, policy: RetentionPolicy, metrics: PersisterMetrics
                  ) -> Callable[[str, InstrumentKeys], Awaitable[None]]:
    """One instrument's retention pass, counted and logged (run by periodic.every_instrument)."""

    async def job(symbol: str, keys: InstrumentKeys) -> None:
        result = await apply_retention(redis, db, keys, policy)
        for stream, count in result.trimmed.items():
            metrics.retention_trimmed.labels(stream).inc(count)
        metrics.retention_evicted.inc(result.evicted)
        logger.info("retention applied", extra={
            "event": "retention", "instrument": symbol, "trimmed": result.trimmed,
            "trimmed_total": sum(result.trimmed.values()), "evicted_orders": result.evicted})

    return job
