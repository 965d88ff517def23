"""The matcher's rebuild of a book (services/matcher/recovery.py, risk_state.py) on the local cluster: each of 3
instruments on its own master, its MULTI, pipelines and SCAN over the cluster_client index reaching that master."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import RedisCluster

from services.common.book import read_book
from services.common.instruments import Instruments, load_instruments
from services.common.keys import instrument_keys
from services.common.wire import OrderRecord, Side
from services.matcher.recovery import PersistedBook, Sequences, index_clients, write_book
from services.matcher.risk_state import read_open_counts
from tests.cluster.conftest import LocalCluster

pytestmark = pytest.mark.slow


@pytest.fixture
def spread(redis_cluster: LocalCluster, cluster_symbols: list[str], tmp_path: Path) -> Instruments:
    return load_instruments(redis_cluster.instruments_toml(cluster_symbols, tmp_path / "instruments.toml"))


def resting(n: int, client_id: str, side: Side, price_ticks: int) -> OrderRecord:
    return OrderRecord(order_id=f"o{n}", client_id=client_id, client_order_id="", side=side,
                       type="limit", time_in_force="GTC", post_only=0, price_ticks=price_ticks,
                       quantity_lots=10_000_000, filled_lots=0, status="open", reason="", created_at=1_000 + n,
                       updated_at=1_000 + n, arrival_seq=n, notional_hi=0, notional_lo=0)


async def test_a_rebuilt_book_lands_on_each_instruments_master(
        cluster_client: RedisCluster, redis_cluster: LocalCluster, spread: Instruments, cluster_prefix: str) -> None:
    for symbol, instrument in spread.items():
        keys = instrument_keys(cluster_prefix, symbol)
        records = [resting(1, "cluster_client-A", "buy", 9_900), resting(2, "cluster_client-B", "buy", 9_900),
                   resting(3, "cluster_client-A", "sell", 10_100)]
        await write_book(cluster_client, keys, PersistedBook(Sequences(0, 3, 0), records))

        assert await read_open_counts(cluster_client, keys) == {"cluster_client-A": 2, "cluster_client-B": 1}
        book = await read_book(cluster_client, instrument, keys, 5)
        assert [(level.price, level.quantity) for level in book.bids] == [("99.00", "0.2")]
        assert [(level.price, level.quantity) for level in book.asks] == [("101.00", "0.1")]
        master = redis_cluster.client(redis_cluster.master_of(symbol))
        assert master.zcard(keys.client_orders("cluster_client-A")) == 2

        # A member no record backs, in a cluster_client's index on this instrument's master: the SCAN finds it there.
        await cluster_client.zadd(keys.client_orders("cluster_client-C"), {"gone": 1})
        assert await index_clients(cluster_client, keys) == (3, 1)
        assert not await cluster_client.exists(keys.client_orders("cluster_client-C"))
