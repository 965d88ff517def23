"""The rows the persister writes, one Struct per table, fields in the table's column order.

COPY sends each row as `astuple(row)` against the columns named by `column_names(Row)`, so a field out of
place would land in the wrong column: tests/persister/test_rows.py holds each Struct to its Table
(services/common/db.py, which mirrors the migrations).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import msgspec

from services.common.wire import EventKind, OrderType, Side, Status, TimeInForce


class TradeRow(msgspec.Struct, frozen=True):
    """A `trades` row."""

    trade_id: str
    instrument: str
    seq: int
    price: Decimal
    quantity: Decimal
    taker_side: Side
    taker_order_id: str
    maker_order_id: str
    buy_order_id: str
    sell_order_id: str
    buyer_client_id: str
    seller_client_id: str
    executed_at: dt.datetime


class EventRow(msgspec.Struct, frozen=True):
    """An `order_events` row."""

    instrument: str
    seq: int
    event: EventKind
    order_id: str | None  # None for a cancel of an unknown order
    client_id: str
    status: Status
    filled_quantity: Decimal
    remaining_quantity: Decimal
    filled_quote: Decimal
    reason: str | None
    ts: dt.datetime
    command_id: str | None


class OrderRow(msgspec.Struct, frozen=True):
    """An `orders` row: the state after one event. The order's own fields (STATIC_FIELDS) and its price are
    known only from the events that carry the whole order (accepted, rejected, amended); None in a row from
    another event. The quantity is the current total (filled + remaining), whatever the event."""

    order_id: str
    client_order_id: str | None
    client_id: str
    instrument: str
    side: Side | None
    type: OrderType | None
    time_in_force: TimeInForce | None
    post_only: bool | None
    price: Decimal | None  # None for market orders
    quantity: Decimal
    filled_quantity: Decimal
    remaining_quantity: Decimal
    filled_quote: Decimal
    average_price: Decimal | None  # None until the first fill
    status: Status
    reason: str | None
    created_at: dt.datetime | None
    updated_at: dt.datetime
    last_event_seq: int
    queued_seq: int | None  # the seq of the event that queued the order at `price`, in a row from one
    self_trade_prevention: str | None


Row = TradeRow | EventRow | OrderRow

# The columns an order's accepted/rejected (or amended) event fills in, whenever it lands: they never change.
# The price is not one of them: an amend changes it (records.py and writer.py follow queued_seq for it).
STATIC_FIELDS = ("client_order_id", "side", "type", "time_in_force", "post_only", "created_at",
                 "self_trade_prevention")


def column_names(row_type: type[Row]) -> list[str]:
    """The table's columns, in the order of the Struct's fields."""
    return list(row_type.__struct_fields__)


def records(rows: Sequence[Row]) -> list[tuple[Any, ...]]:
    """The rows as tuples in column order, as COPY takes them."""
    return [msgspec.structs.astuple(row) for row in rows]
