"""Cancel-on-disconnect sessions (docs/order-management.md): while an order-entry socket with
`cancel_on_disconnect` lives, its session's deadline `s:<session>` in every instrument's `dl:{I}` zset is kept
LEASE_MS ahead; its close sets the deadline to now, and the matcher's sweep (every MATCHER_SWEEP_MS, 250 by
default) cancels the orders placed through it (the `cs:{I}:<session>` set accept.lua fills), reason `disconnect`.

The deadline lives in Redis, outside this process: when the ingest process dies the refreshes stop and the
deadline passes by itself, so the orders go within LEASE_MS + the sweep period (under 5 s) all the same.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from redis.exceptions import RedisError

from services.common.keys import InstrumentKeys, deadline_of_session
from services.common.redis_batch import BatcherClosed
from services.common.redis_cluster_batch import AnyBatcher

logger = logging.getLogger(__name__)

LEASE_MS = 3000  # how far ahead a live session's deadline is kept
REFRESH_S = 1.0  # how often: a refresh may fail twice (Redis slow) before the deadline passes


class CodSessions:
    """The live cancel-on-disconnect sessions of this process, their deadlines refreshed by one task."""

    def __init__(self, batcher: AnyBatcher, keys: dict[str, InstrumentKeys]) -> None:
        self._batcher = batcher
        self._deadline_keys = [k.deadlines for k in keys.values()]
        self._live: set[str] = set()

    def __len__(self) -> int:
        return len(self._live)

    async def open(self) -> str:
        """A new session, its deadline written on every instrument before it is returned (so an order placed
        through it is never without one); RedisError, OSError or BatcherClosed if Redis cannot take it."""
        session = uuid.uuid4().hex
        await self._write([session], _now_ms() + LEASE_MS)
        self._live.add(session)
        return session

    async def close(self, session: str) -> None:
        """End `session`: its deadline becomes now, so the sweep cancels its orders at once. If Redis cannot
        take it, the last refresh's deadline passes within LEASE_MS all the same."""
        self._live.discard(session)
        try:
            await self._write([session], _now_ms())
        except (RedisError, OSError, BatcherClosed) as exc:
            logger.warning("cancel-on-disconnect session %s: cannot set its deadline to now (%r); its orders go "
                           "when the last refresh's deadline passes, within %d ms", session, exc, LEASE_MS,
                           extra={"event": "cod_close_failed", "session": session})

    async def run(self, stopped: asyncio.Event) -> None:
        """Refresh every live session's deadline each REFRESH_S until `stopped` is set."""
        while not stopped.is_set():
            try:
                await asyncio.wait_for(stopped.wait(), REFRESH_S)
            except TimeoutError:
                pass
            if self._live and not stopped.is_set():
                try:
                    await self._write(sorted(self._live), _now_ms() + LEASE_MS)
                except (RedisError, OSError, BatcherClosed) as exc:
                    logger.warning("cannot refresh %d cancel-on-disconnect deadlines: %r", len(self._live), exc,
                                   extra={"event": "cod_refresh_failed"})

    async def _write(self, sessions: list[str], deadline_ms: int) -> None:
        # One ZADD per instrument, all submitted in this tick: one pipeline. The batcher writes commands in
        # submission order on one connection, so a close's ZADD always lands after any refresh sent before it.
        args: list[str | int] = []
        for session in sessions:
            args += [deadline_ms, deadline_of_session(session)]
        answers = await asyncio.gather(*[self._batcher.submit("ZADD", key, *args) for key in self._deadline_keys],
                                       return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
