"""The admin kill switches (issue 16): the halts in force, in PostgreSQL and in each instrument's Redis slot.

Redis holds them where acceptance can see them atomically: the hash halts:{I} (keys.py), with the field
`instrument` while the instrument is halted and `c:<client>` per halted client (written to every instrument's
hash), each valued the halt's time in ms; accept.lua and amend.lua refuse by it. PostgreSQL (`halts`, migration
0006) holds the same, written first by ingest's admin endpoints, so the matcher's rebuild of a Redis that lost its
state puts them back (restore_halts). This module owns those statements.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import asyncpg
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from services.common.db import halts
from services.common.keys import HALT_INSTRUMENT, InstrumentKeys, halt_of_client
from services.common.redis_conn import AnyRedis
from services.common.slots import AnyPipeline, transaction
from services.common.urls import mask_url

logger = logging.getLogger(__name__)

HaltScope = Literal["client", "instrument"]
# No database or no schema at the URL: nothing was ever halted there.
_NOTHING_PERSISTED = frozenset({"3D000", "42P01"})
_DB_ERRORS = (SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class Halt:
    """One halt in force: a client's (every instrument) or an instrument's."""

    scope: HaltScope
    target: str  # client id or symbol
    halted_at_ms: int

    @property
    def field(self) -> str:
        """Its field in an instrument's halts hash."""
        return HALT_INSTRUMENT if self.scope == "instrument" else halt_of_client(self.target)

    def applies_to(self, symbol: str) -> bool:
        return self.scope == "client" or self.target == symbol


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


async def store_halt(db: AsyncEngine, scope: HaltScope, target: str, by: str, at_ms: int) -> None:
    """Record a halt in PostgreSQL; a repeat keeps the first row."""
    at = datetime.fromtimestamp(at_ms / 1000, UTC)
    async with db.begin() as conn:
        await conn.execute(insert(halts).values(scope=scope, target=target, halted_at=at, halted_by=by)
                           .on_conflict_do_nothing(index_elements=[halts.c.scope, halts.c.target]))


async def remove_halt(db: AsyncEngine, scope: HaltScope, target: str) -> None:
    """Remove a halt from PostgreSQL (nothing when it is not there)."""
    async with db.begin() as conn:
        await conn.execute(delete(halts).where(halts.c.scope == scope, halts.c.target == target))


async def load_halts(db: AsyncEngine) -> list[Halt]:
    """Every halt PostgreSQL holds; none where the database or its schema does not exist yet."""
    try:
        async with db.connect() as conn:
            rows = (await conn.execute(select(halts.c.scope, halts.c.target, halts.c.halted_at))).all()
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) in _NOTHING_PERSISTED:
            return []
        raise
    return [Halt(row.scope, row.target, round(row.halted_at.timestamp() * 1000)) for row in rows]


async def restore_halts(redis: AnyRedis, keys: InstrumentKeys, database_url: str, *,
                        backoff_initial_s: float = 0.1, backoff_max_s: float = 5.0) -> int:
    """Put the halts PostgreSQL holds for the instrument (its own, and every client's) into its halts hash, for a
    rebuild of a Redis that lost its state; retried until PostgreSQL answers. Only adds: a halt written meanwhile
    by an admin endpoint stays. How many fields it wrote."""
    engine = create_async_engine(database_url, poolclass=NullPool, connect_args={"timeout": 5.0})
    backoff, attempt = backoff_initial_s, 0
    try:
        while True:
            attempt += 1
            try:
                found = await load_halts(engine)
                break
            except _DB_ERRORS as exc:
                # Accepting orders of a halted client after a rebuild would defeat the halt: wait for PostgreSQL.
                logger.warning("postgresql unavailable: the halts cannot be restored, rebuild waits", extra={
                    "instrument": keys.symbol, "database": mask_url(database_url), "attempt": attempt,
                    "retry_in_s": backoff, "error": f"{type(exc).__name__}: {exc}"})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, backoff_max_s)
    finally:
        await engine.dispose()
    fields = {h.field: str(h.halted_at_ms) for h in found if h.applies_to(keys.symbol)}
    if fields:
        await redis.hset(keys.halts, mapping=fields)  # type: ignore[arg-type]
        logger.info("halts restored from postgresql", extra={
            "event": "halts_restored", "instrument": keys.symbol, "halts": sorted(fields)})
    return len(fields)


async def sync_halts(redis: AnyRedis, keys: InstrumentKeys, db: AsyncEngine) -> int:
    """Make the instrument's halts hash exactly what PostgreSQL holds, for a heal of a Redis restored from an older
    backup (it may hold halts lifted since, and lack halts set since). How many fields it holds after.

    An admin endpoint writes PostgreSQL first, then Redis: a halt set while this runs is read back by the second
    load and added; a lift racing it can leave the halt in Redis (the safe side) until the lift is repeated."""
    first = {h.field: str(h.halted_at_ms) for h in await load_halts(db) if h.applies_to(keys.symbol)}

    def replace(pipe: AnyPipeline) -> None:
        pipe.delete(keys.halts)
        if first:
            pipe.hset(keys.halts, mapping=first)  # type: ignore[arg-type]

    await transaction(redis, replace)
    later = {h.field: str(h.halted_at_ms) for h in await load_halts(db)
             if h.applies_to(keys.symbol) and h.field not in first}
    if later:
        await redis.hset(keys.halts, mapping=later)  # type: ignore[arg-type]
    logger.info("halts synced from postgresql", extra={
        "event": "halts_synced", "instrument": keys.symbol, "halts": sorted({**first, **later})})
    return len(first) + len(later)
