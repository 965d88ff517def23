"""Redis key names. Every key of an instrument carries the hash tag {SYMBOL}: one instrument, one cluster slot."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

MATCHER_GROUP = "matcher"
PERSISTER_GROUP = "persister"


class InstrumentKeys(msgspec.Struct, frozen=True):
    """The keys of one instrument, with the engine's REDIS_KEY_PREFIX applied."""

    symbol: str
    orders: str  # stream: inbound commands (new order, cancel), group `matcher`
    trades: str  # stream: one entry per trade
    events: str  # stream: order lifecycle events
    book: str  # stream: aggregated level changes with a gapless book seq
    bid_orders: str  # zset: resting bids, score -price ticks, member "<arrival seq>:<order id>"
    ask_orders: str  # zset: resting asks, score price ticks
    bid_levels: str  # zset: bid price levels (score -ticks, member ticks)
    ask_levels: str  # zset: ask price levels
    bid_depth: str  # hash: bid level ticks -> resting lots
    ask_depth: str  # hash: ask level ticks -> resting lots
    order_state: str  # hash: order id -> msgpack order record
    meta: str  # hash: sequences and the matcher's position
    snapshot_lock: str  # string: the persister worker taking this interval's book snapshot
    retention_lock: str  # string: the persister worker trimming this interval's streams and order records
    prefix: str

    # The client's own string is length-prefixed wherever another client-chosen string follows it: ids may
    # contain ':' (the separator), so without the length client "a:b" with key "c" and client "a" with key
    # "b:c" would name one key. The tail needs no prefix (nothing follows it), nor does rate_bucket's id.

    def idempotency(self, client_id: str, key: str) -> str:
        return f"{self.prefix}idem:{{{self.symbol}}}:{len(client_id)}:{client_id}:{key}"

    def client_order_id(self, client_id: str, client_order_id: str) -> str:
        return f"{self.prefix}coid:{{{self.symbol}}}:{len(client_id)}:{client_id}:{client_order_id}"

    def rate_bucket(self, client_id: str) -> str:
        return f"{self.prefix}rate:{{{self.symbol}}}:{client_id}"

    def key_rate_bucket(self, key_id: str) -> str:
        """An API key's bucket in this instrument's slot, named by the key's id (a hash), never the key."""
        return f"{self.prefix}keyrate:{{{self.symbol}}}:{key_id}"


def keys_by_symbol(prefix: str, symbols: Iterable[str]) -> dict[str, InstrumentKeys]:
    """The keys of every instrument, by symbol."""
    return {symbol: instrument_keys(prefix, symbol) for symbol in symbols}


def instrument_keys(prefix: str, symbol: str) -> InstrumentKeys:
    tag = f"{{{symbol}}}"
    return InstrumentKeys(
        symbol=symbol,
        orders=f"{prefix}orders:{tag}",
        trades=f"{prefix}trades:{tag}",
        events=f"{prefix}events:{tag}",
        book=f"{prefix}book:{tag}",
        bid_orders=f"{prefix}ob:{tag}:bids",
        ask_orders=f"{prefix}ob:{tag}:asks",
        bid_levels=f"{prefix}lv:{tag}:bids",
        ask_levels=f"{prefix}lv:{tag}:asks",
        bid_depth=f"{prefix}dp:{tag}:bids",
        ask_depth=f"{prefix}dp:{tag}:asks",
        order_state=f"{prefix}os:{tag}",
        meta=f"{prefix}meta:{tag}",
        snapshot_lock=f"{prefix}snapshot-lock:{tag}",
        retention_lock=f"{prefix}retention-lock:{tag}",
        prefix=prefix,
    )
