"""Trades written through the persister's real Writer (and so its aggregates), and the ingest app on top."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.analytics.time_buckets import HOUR, floor_to, now_ms
from services.common.wire import Side
from services.persister.records import WriteSet
from services.persister.rows import TradeRow
from services.persister.writer import Writer
from tests.ingest import conftest as ingest
from tests.ingest.conftest import Engine, EngineFactory

# The ingest app's fixtures, for the tests of this folder.
ingest_settings = ingest.ingest_settings
make_engine = ingest.make_engine


def trade(instrument: str, seq: int, at: dt.datetime, price: str, quantity: str, buyer: str, seller: str,
          taker_side: Side = "buy") -> TradeRow:
    """One trades row as the persister writes it."""
    return TradeRow(
        trade_id=f"{instrument}-{seq}", instrument=instrument, seq=seq, price=Decimal(price),
        quantity=Decimal(quantity), taker_side=taker_side, taker_order_id=f"o-{seq}-t",
        maker_order_id=f"o-{seq}-m", buy_order_id=f"o-{seq}-b", sell_order_id=f"o-{seq}-s",
        buyer_client_id=buyer, seller_client_id=seller, executed_at=at,
    )


async def write(db: AsyncEngine, rows: list[TradeRow]) -> None:
    """One persister batch of these trades (sorted by trade_id, as WriteSet.of does)."""
    await Writer(db).write(WriteSet(sorted(rows, key=lambda r: r.trade_id), [], []))


def base_hour() -> dt.datetime:
    """A whole UTC hour 3 to 4 hours ago: the hand-made trades lie in the 2 hours after it."""
    return floor_to(now_ms() - 3 * HOUR, HOUR)


def hand_made(b0: dt.datetime) -> list[TradeRow]:
    """Several buckets, both sides, partial fills, a self-trade (client-B), two instruments, one trade
    older than 24 h. The expected answers in the tests are worked out by hand from these."""
    m = dt.timedelta(minutes=1)
    s = dt.timedelta(seconds=1)
    return [
        trade("BTC-USD", 1, b0 - 25 * HOUR, "49000.00", "2", "client-C", "client-A"),
        trade("BTC-USD", 2, b0 + 10 * m, "50000.00", "0.5", "client-A", "client-B"),
        trade("BTC-USD", 3, b0 + 10 * m + 500 * s / 1000, "50010.00", "0.25", "client-A", "client-C"),
        trade("BTC-USD", 4, b0 + 11 * m, "49990.00", "1", "client-C", "client-A", "sell"),
        trade("BTC-USD", 5, b0 + 11 * m + 30 * s, "50005.50", "0.1", "client-B", "client-B"),
        trade("BTC-USD", 6, b0 + 65 * m, "50100.00", "0.3", "client-B", "client-A"),
        trade("BTC-USD", 7, b0 + 65 * m + 30 * s, "50100.01", "0.3", "client-C", "client-B"),
        trade("ETH-USD", 1, b0 + 10 * m + 20 * s, "3000.05", "2", "client-A", "client-B"),
        trade("ETH-USD", 2, b0 + 40 * m, "3000.10", "0.5", "client-B", "client-A"),
    ]


@pytest.fixture
async def app(make_engine: EngineFactory, db_url: str) -> AsyncIterator[Engine]:
    """The ingest app reading this test's database."""
    yield await make_engine(prepare=False, database_url=db_url)
