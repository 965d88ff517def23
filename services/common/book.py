"""Atomic reads of one instrument's aggregated order book (GET /orderbook, WebSocket snapshots)."""

from __future__ import annotations

from typing import Any

import msgspec

from services.common.instruments import Instrument
from services.common.keys import InstrumentKeys
from services.common.redis_conn import AnyRedis
from services.common.scripts import BOOK_SCRIPT, BookArgv, BookKeys, astuple
from services.common.wire import text

MAX_LEVELS = 1000


class BookLevel(msgspec.Struct, frozen=True):
    """One aggregated price level; decimals as strings in the instrument's units."""

    price: str
    quantity: str
    cumulative: str


class BookSnapshot(msgspec.Struct, frozen=True):
    """The best levels of both sides, best first, at book sequence `seq`."""

    instrument: str
    seq: int
    bids: list[BookLevel]
    asks: list[BookLevel]


def _side(instrument: Instrument, flat: list[Any]) -> list[BookLevel]:
    levels: list[BookLevel] = []
    cumulative = 0
    for i in range(0, len(flat), 2):
        lots = int(text(flat[i + 1]))
        cumulative += lots
        levels.append(BookLevel(
            price=instrument.price_text(int(text(flat[i]))),
            quantity=instrument.quantity_text(lots),
            cumulative=instrument.quantity_text(cumulative),
        ))
    return levels


def parse_book(instrument: Instrument, reply: list[Any]) -> BookSnapshot:
    """Turn book.lua's reply (integer ticks and lots) into a snapshot with decimal strings."""
    return BookSnapshot(
        instrument=instrument.symbol,
        seq=int(text(reply[0])),
        bids=_side(instrument, reply[1]),
        asks=_side(instrument, reply[2]),
    )


async def read_book(redis: AnyRedis, instrument: Instrument, keys: InstrumentKeys, levels: int) -> BookSnapshot:
    """The best `levels` levels per side (1..MAX_LEVELS) and the book seq, read in one atomic call."""
    reply = await BOOK_SCRIPT(redis, astuple(BookKeys.of(keys)), astuple(BookArgv(levels=str(levels))))
    return parse_book(instrument, reply)
