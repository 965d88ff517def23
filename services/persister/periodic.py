"""Jobs every persister worker runs on a timer, of which one worker does each turn per instrument.

Scaling may leave any subset of workers, so every worker runs the loop; a Redis lock per instrument and
turn (held for most of the interval) lets exactly one of them do the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from services.common.keys import InstrumentKeys
from services.common.redis_conn import AnyRedis

logger = logging.getLogger(__name__)

Job = Callable[[str, InstrumentKeys], Awaitable[None]]


async def every_instrument(name: str, redis: AnyRedis, keys: dict[str, InstrumentKeys], lock_of: Callable[
        [InstrumentKeys], str], job: Job, interval_s: float, consumer: str, stop: asyncio.Event) -> None:
    """Run `job(symbol, keys)` for every instrument every interval_s until `stop`; failures wait a turn."""
    lock_ms = max(1, int(interval_s * 800))
    failing = False
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        if stop.is_set():
            return
        try:
            for symbol, instrument_keys in keys.items():
                if await redis.set(lock_of(instrument_keys), consumer, nx=True, px=lock_ms):
                    await job(symbol, instrument_keys)
            failing = False
        except (RedisError, SQLAlchemyError, OSError) as exc:
            if not failing:  # once per failing spell, not every turn
                logger.warning("%s failed: %r", name, exc, extra={"event": f"{name}_failed"})
            failing = True
