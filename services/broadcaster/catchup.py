"""What a new subscriber needs before the live feed: the book snapshot, and the trades it missed."""

from __future__ import annotations

from typing import Any, cast

from services.broadcaster.entries import trade_message
from services.broadcaster.protocol import OrderbookSnapshot, Trade
from services.common.book import read_book
from services.common.instruments import Instrument
from services.common.keys import InstrumentKeys
from services.common.redis_conn import AnyRedis

FIRST_PAGE = 16
MAX_PAGE = 1000


async def read_snapshot(redis: AnyRedis, instrument: Instrument, keys: InstrumentKeys,
                        levels: int) -> OrderbookSnapshot:
    """The whole book and its seq, read in one atomic book.lua call."""
    book = await read_book(redis, instrument, keys, levels)
    return OrderbookSnapshot(
        instrument=book.instrument, seq=book.seq,
        bids=[(level.price, level.quantity) for level in book.bids],
        asks=[(level.price, level.quantity) for level in book.asks],
    )


class Replay:
    """Trades after a client's since_seq, oldest first, as read from the trades stream."""

    def __init__(self, trades: list[Trade], top_seq: int, truncated_before: int | None) -> None:
        self.trades = trades
        self.top_seq = top_seq  # the newest trade in the stream when read: live messages resume after it
        self.truncated_before = truncated_before  # oldest replayed seq when trades after since_seq are missing


async def replay_trades(redis: AnyRedis, stream: str, since_seq: int, max_replay: int) -> Replay:
    """Walk the stream back from its end until seq <= since_seq: cost grows with what was missed, not the stream."""
    newest_first: list[Trade] = []
    top_seq = 0
    upper = "+"
    page = FIRST_PAGE
    while True:
        entries = cast(list[tuple[bytes, dict[Any, Any]]], await redis.xrevrange(stream, max=upper, count=page))
        for entry_id, fields in entries:
            trade = trade_message(fields)
            top_seq = max(top_seq, trade.seq)
            if trade.seq <= since_seq:
                return Replay(newest_first[::-1], top_seq, None)
            if len(newest_first) == max_replay:
                return Replay(newest_first[::-1], top_seq, newest_first[-1].seq)
            newest_first.append(trade)
            upper = "(" + entry_id.decode()
        if len(entries) < page:
            # The stream's start: trades before it were trimmed away if the oldest is not since_seq + 1.
            gap = bool(newest_first) and newest_first[-1].seq > since_seq + 1
            return Replay(newest_first[::-1], top_seq, newest_first[-1].seq if gap else None)
        page = min(page * 4, MAX_PAGE)
