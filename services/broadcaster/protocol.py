"""Every message of the WebSocket protocol (CONTRACT.md, WebSocket section), with encoders built once.

Client messages are a tagged union on `op`, server messages on `type`. Server messages from the
streams are encoded once per event and the same text goes to every subscriber.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from services.common.wire import EventKind, OrderType, Side, Status, TimeInForce

Channel = Literal["trades", "orderbook_deltas", "orders"]
CHANNELS: tuple[Channel, ...] = ("trades", "orderbook_deltas", "orders")

Symbols = Annotated[list[Annotated[str, msgspec.Meta(max_length=64)]], msgspec.Meta(min_length=1, max_length=256)]
Channels = Annotated[list[Channel], msgspec.Meta(min_length=1, max_length=3)]


# Client -> server ------------------------------------------------------------------------------

class Subscribe(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="subscribe", tag_field="op"):
    """Subscribe to channels of instruments (all instruments when absent); since_seq replays trades."""

    channels: Channels
    instruments: Symbols | None = None
    since_seq: Annotated[int, msgspec.Meta(ge=0)] | None = None


class Unsubscribe(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="unsubscribe", tag_field="op"):
    """Stop channels of instruments (all instruments when absent)."""

    channels: Channels
    instruments: Symbols | None = None


class Auth(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="auth", tag_field="op"):
    """Authenticate the connection with an API key (needed for the orders channel)."""

    api_key: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


class Ping(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="ping", tag_field="op"):
    """Application-level keep-alive for clients that cannot send WebSocket pings (browsers)."""


ClientMessage = Subscribe | Unsubscribe | Auth | Ping
CLIENT_DECODER = msgspec.json.Decoder(ClientMessage)


# Server -> client ------------------------------------------------------------------------------

class Subscribed(msgspec.Struct, frozen=True, tag="subscribed", tag_field="type", omit_defaults=True):
    channels: list[Channel]
    instruments: list[str]
    since_seq: int | None = None


class Unsubscribed(msgspec.Struct, frozen=True, tag="unsubscribed", tag_field="type"):
    channels: list[Channel]
    instruments: list[str]


class Authenticated(msgspec.Struct, frozen=True, tag="authenticated", tag_field="type"):
    role: str
    client_id: str | None


class Pong(msgspec.Struct, frozen=True, tag="pong", tag_field="type"):
    pass


class Error(msgspec.Struct, frozen=True, tag="error", tag_field="type"):
    message: str


class Trade(msgspec.Struct, frozen=True, tag="trade", tag_field="type"):
    """Exactly the fields of GET /trades: public, so no client ids."""

    trade_id: str
    seq: int
    instrument: str
    price: str
    quantity: str
    taker_side: Side
    buy_order_id: str
    sell_order_id: str
    executed_at: str


class OrderbookSnapshot(msgspec.Struct, frozen=True, tag="orderbook_snapshot", tag_field="type"):
    """The whole book at `seq`; the next delta for this instrument has seq + 1."""

    instrument: str
    seq: int
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]


class OrderbookDelta(msgspec.Struct, frozen=True, tag="orderbook_delta", tag_field="type"):
    """New totals of the levels one matcher call changed; quantity "0" removes the level."""

    instrument: str
    seq: int
    changes: msgspec.Raw  # the book stream's JSON [[side, price, quantity], ...], passed through as is


class Order(msgspec.Struct, frozen=True, tag="order", tag_field="type", omit_defaults=True):
    """One order lifecycle event; `accepted` and `rejected` also carry the order's fields.

    The order's `type` (limit, market) is named `order_type` here: `type` names the message.
    """

    event: EventKind
    seq: int
    instrument: str
    order_id: str
    client_id: str
    status: Status
    filled_quantity: str
    remaining_quantity: str
    filled_quote: str
    reason: str | None
    ts: str
    client_order_id: str | None = None
    side: Side | None = None
    order_type: OrderType | None = None
    time_in_force: TimeInForce | None = None
    post_only: bool | None = None
    price: str | None = None
    quantity: str | None = None
    created_at: str | None = None


ServerMessage = Subscribed | Unsubscribed | Authenticated | Pong | Error | Trade | OrderbookSnapshot | \
    OrderbookDelta | Order
ENCODER = msgspec.json.Encoder()


def encode(message: ServerMessage) -> str:
    """The text of one server message (a frame's payload, or one element of a batch)."""
    return ENCODER.encode(message).decode()


