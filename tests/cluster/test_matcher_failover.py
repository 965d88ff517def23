"""Matcher failover on the local 3-master cluster (REDIS_MODE=cluster): 3 instruments on 3 masters, two matcher
processes, the holder of an instrument killed with SIGKILL under flow; taken over within the lease plus 1 s, every
command applied and persisted exactly once (tests/matcher/failover.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import RedisCluster
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.cluster.conftest import LocalCluster
from tests.matcher.failover import failover, times_summary

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


async def test_a_killed_holder_is_replaced_on_a_cluster(
        redis_cluster: LocalCluster, cluster_symbols: list[str], cluster_prefix: str, cluster_client: RedisCluster,
        db_url: str, db: AsyncEngine, tmp_path: Path) -> None:
    assert len({redis_cluster.master_of(s) for s in cluster_symbols}) == 3
    times = await failover(cluster_client, redis_cluster.url, cluster_prefix, db_url, db, tmp_path, 3, cluster_symbols,
                           "cluster")
    print(times_summary(times))
