"""Failover of real matcher processes (issue 17): kill -9 the holder of an instrument while orders flow; another
matcher applies its commands within MATCHER_LEASE_MS + 1 s, no command applied twice or skipped, every order
persisted exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.matcher.failover import LEASE_MS, failover, times_summary

SYMBOLS = ["BTC-USD", "ETH-USD", "SOL-USD"]


async def test_a_killed_holder_is_replaced_within_the_lease_and_nothing_is_applied_twice(
        redis: Redis, redis_url: str, key_prefix: str, db_url: str, db: AsyncEngine, tmp_path: Path) -> None:
    times = await failover(redis, redis_url, key_prefix, db_url, db, tmp_path, 1, SYMBOLS)
    print(times_summary(times))


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_ten_kills_under_flow(redis: Redis, redis_url: str, key_prefix: str, db_url: str, db: AsyncEngine,
                                    tmp_path: Path) -> None:
    times = await failover(redis, redis_url, key_prefix, db_url, db, tmp_path, 10, SYMBOLS)
    print(times_summary(times))


async def test_a_paused_holder_applies_nothing_once_its_lease_is_taken(
        redis: Redis, redis_url: str, key_prefix: str, db_url: str, db: AsyncEngine, tmp_path: Path) -> None:
    """SIGSTOP past the lease (a long GC pause, a partition): another matcher takes over; resumed, the paused one
    finds its lease lost and applies nothing twice."""
    times = await failover(redis, redis_url, key_prefix, db_url, db, tmp_path, 2, SYMBOLS, how="pause")
    print(times_summary(times, "SIGSTOP"))


async def test_a_holder_stopped_gracefully_hands_over_at_once(
        redis: Redis, redis_url: str, key_prefix: str, db_url: str, db: AsyncEngine, tmp_path: Path) -> None:
    """SIGTERM releases the leases: the other matcher takes over well before a lease would have expired."""
    times = await failover(redis, redis_url, key_prefix, db_url, db, tmp_path, 2, SYMBOLS, how="term")
    print(times_summary(times, "SIGTERM"))
    assert max(times) < LEASE_MS / 1000
