"""Stream entries (services.common.wire) turned into WebSocket messages, the one place that maps them."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from services.broadcaster.protocol import Order, OrderbookDelta, Trade
from services.common.times import iso_ms
from services.common.wire import BookEntry, EventEntry, TradeEntry, fields_to_dict

T = TypeVar("T")


class MalformedEntry(ValueError):
    """A stream entry that does not have the fields of its wire type."""


def _int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError as exc:
        raise MalformedEntry(f"{name}={text!r} is not an integer") from exc


def _entry(fields: dict[Any, Any], kind: type[T]) -> T:
    try:
        return msgspec.convert(fields_to_dict(fields), kind)
    except (msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise MalformedEntry(f"not a {kind.__name__}: {exc}") from exc


def trade_message(fields: dict[Any, Any]) -> Trade:
    """A `trades:{I}` entry as a public `trade` message (client ids dropped)."""
    t = _entry(fields, TradeEntry)
    return Trade(trade_id=t.trade_id, seq=_int("seq", t.seq), instrument=t.instrument, price=t.price,
                 quantity=t.quantity, taker_side=t.taker_side, buy_order_id=t.buy_order_id,
                 sell_order_id=t.sell_order_id, executed_at=iso_ms(_int("ts", t.ts)))


def order_message(fields: dict[Any, Any]) -> Order:
    """An `events:{I}` entry as an `order` message (times in ISO-8601, "" as null)."""
    e = _entry(fields, EventEntry)
    return Order(
        event=e.event, seq=_int("seq", e.seq), instrument=e.instrument, order_id=e.order_id,
        client_id=e.client_id, status=e.status, filled_quantity=e.filled_quantity,
        remaining_quantity=e.remaining_quantity, filled_quote=e.filled_quote, reason=e.reason or None,
        ts=iso_ms(_int("ts", e.ts)), client_order_id=e.client_order_id or None, side=e.side, order_type=e.type,
        time_in_force=e.time_in_force, post_only=None if e.post_only is None else e.post_only == "1",
        price=e.price or None, quantity=e.quantity,
        created_at=None if e.created_at is None else iso_ms(_int("created_at", e.created_at)),
    )


def delta_message(fields: dict[Any, Any]) -> OrderbookDelta:
    """A `book:{I}` entry as an `orderbook_delta`; the changes JSON is passed through unparsed."""
    b = _entry(fields, BookEntry)
    if not b.changes.startswith("["):
        raise MalformedEntry(f"changes={b.changes[:80]!r} is not a JSON array")
    return OrderbookDelta(instrument=b.instrument, seq=_int("seq", b.seq), changes=msgspec.Raw(b.changes.encode()))
