"""tests/cluster/conftest.py: the local cluster starts, spreads symbols over masters, and moves a slot."""

from __future__ import annotations

import uuid

import pytest

from tests.cluster.conftest import LocalCluster, slot_of

pytestmark = pytest.mark.slow


def test_the_cluster_has_three_masters_serving_every_slot(redis_cluster: LocalCluster) -> None:
    assert len(redis_cluster.nodes) == 3
    served = sum(end - start + 1 for start, end, *_ in redis_cluster.client(redis_cluster.nodes[0]).cluster("SLOTS"))
    assert served == 16384


def test_cluster_symbols_are_on_three_masters(redis_cluster: LocalCluster, cluster_symbols: list[str]) -> None:
    assert len({redis_cluster.master_of(s) for s in cluster_symbols}) == 3


def test_move_slot_moves_the_keys_and_the_slot(redis_cluster: LocalCluster, cluster_symbols: list[str]) -> None:
    symbol = cluster_symbols[0]
    source = redis_cluster.master_of(symbol)
    target = next(p for p in redis_cluster.nodes if p != source)
    key = f"test-{uuid.uuid4().hex[:8]}:k:{{{symbol}}}"
    redis_cluster.client(source).set(key, "v")
    redis_cluster.move_slot(symbol, target)
    try:
        assert redis_cluster.master_of(symbol) == target
        assert redis_cluster.client(target).get(key) == b"v"
        assert redis_cluster.client(target).cluster("COUNTKEYSINSLOT", slot_of(symbol)) >= 1
    finally:
        redis_cluster.move_slot(symbol, source)
        redis_cluster.client(source).delete(key)
    assert redis_cluster.master_of(symbol) == source
