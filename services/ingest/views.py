"""The order view of POST /orders, GET /orders/{id} and cancel answers, rendered from an order record."""

from __future__ import annotations

import msgspec

from services.common.instruments import Instrument
from services.common.times import iso_ms
from services.common.wire import OrderRecord, OrderType, Side, Status, TimeInForce


class OrderView(msgspec.Struct, frozen=True):
    """What a user sees of an order; decimals are strings, times ISO-8601 UTC with milliseconds."""

    order_id: str
    client_order_id: str | None
    client_id: str
    instrument: str
    side: Side
    type: OrderType
    time_in_force: TimeInForce
    post_only: bool
    price: str | None
    quantity: str
    filled_quantity: str
    remaining_quantity: str
    average_price: str | None
    status: Status
    reason: str | None
    created_at: str
    updated_at: str


class CancelRequested(msgspec.Struct, frozen=True):
    """202 answer of a cancel whose outcome did not arrive within CANCEL_WAIT_MS."""

    order_id: str
    status: str = "cancel_requested"


encode_view = msgspec.json.Encoder().encode


def render(record: OrderRecord, instrument: Instrument) -> OrderView:
    """The view of a stored order record."""
    return OrderView(
        order_id=record.order_id,
        client_order_id=record.client_order_id or None,
        client_id=record.client_id,
        instrument=instrument.symbol,
        side=record.side,
        type=record.type,
        time_in_force=record.time_in_force,
        post_only=bool(record.post_only),
        price=instrument.price_text(record.price_ticks) if record.type == "limit" else None,
        quantity=instrument.quantity_text(record.quantity_lots),
        filled_quantity=instrument.quantity_text(record.filled_lots),
        remaining_quantity=instrument.quantity_text(record.quantity_lots - record.filled_lots),
        average_price=instrument.average_price_text(record.notional, record.filled_lots),
        status=record.status,
        reason=record.reason or None,
        created_at=iso_ms(record.created_at),
        updated_at=iso_ms(record.updated_at),
    )
