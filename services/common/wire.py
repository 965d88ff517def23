"""Every message the engine puts on the wire: inbound commands, stream entries, stored order records.

Stream entries are flat string fields (readable with redis-cli); these Structs give them types.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Side = Literal["buy", "sell"]
OrderType = Literal["limit", "market"]
TimeInForce = Literal["GTC", "IOC", "FOK"]
Status = Literal["accepted", "open", "partially_filled", "filled", "cancelled", "rejected"]
FINAL_STATUSES = frozenset({"filled", "cancelled", "rejected"})


class NewOrderCommand(msgspec.Struct, frozen=True, tag="new", tag_field="cmd"):
    """Inbound `orders:{I}` entry that places an order; price and quantity in integer ticks and lots."""

    order_id: str
    client_id: str
    client_order_id: str  # "" when the client gave none
    side: Side
    type: OrderType
    time_in_force: TimeInForce
    post_only: Literal["0", "1"]
    price_ticks: str  # "0" for market orders
    quantity_lots: str
    created_at: str  # ms since the epoch


class CancelCommand(msgspec.Struct, frozen=True, tag="cancel", tag_field="cmd"):
    """Inbound `orders:{I}` entry that cancels a resting order."""

    order_id: str
    client_id: str  # who asked (the owner, a broker or an admin)
    ts: str


Command = NewOrderCommand | CancelCommand


class OrderRecord(msgspec.Struct, frozen=True, array_like=True):
    """An order's live state, msgpack-encoded in the `os:{I}` hash (written by accept.lua and match.lua).

    A msgpack array in this field order: the Lua scripts' codec is generated from it (services/common/scripts.py).
    """

    order_id: str
    client_id: str
    client_order_id: str
    side: Side
    type: OrderType
    time_in_force: TimeInForce
    post_only: int
    price_ticks: int  # 0 for market orders
    quantity_lots: int
    filled_lots: int
    status: Status
    reason: str  # "" when none
    created_at: int  # ms
    updated_at: int  # ms
    arrival_seq: int  # time priority while resting; 0 before the matcher saw it
    notional_hi: int  # sum of fill price x lots, in two limbs: hi * NOTIONAL_LIMB + lo
    notional_lo: int

    @property
    def notional(self) -> int:
        from services.common.instruments import NOTIONAL_LIMB

        return self.notional_hi * NOTIONAL_LIMB + self.notional_lo


# The one codec of order records (the Lua side's is generated from the same Struct: scripts.record_codec_lua).
encode_record = msgspec.msgpack.Encoder().encode
decode_record = msgspec.msgpack.Decoder(OrderRecord).decode


class TradeEntry(msgspec.Struct, frozen=True):
    """`trades:{I}` entry. Decimals are strings in the instrument's units."""

    trade_id: str
    seq: str
    instrument: str
    price: str
    quantity: str
    taker_side: Side
    taker_order_id: str
    maker_order_id: str
    buy_order_id: str
    sell_order_id: str
    buyer_client_id: str
    seller_client_id: str
    ts: str


EventKind = Literal["accepted", "rejected", "partially_filled", "filled", "cancelled", "cancel_rejected"]


class EventEntry(msgspec.Struct, frozen=True):
    """`events:{I}` entry. `accepted` and `rejected` also carry every field of the order."""

    event: EventKind
    seq: str
    instrument: str
    order_id: str
    client_id: str
    status: Status
    filled_quantity: str
    remaining_quantity: str
    filled_quote: str  # sum of price x quantity over the order's fills, exact, in the quote currency
    reason: str
    ts: str
    # The orders-stream entry id of the command that produced the event (None on entries written before
    # the field existed): PostgreSQL's rows then tell which commands were applied.
    command_id: str | None = None
    client_order_id: str | None = None
    side: Side | None = None
    type: OrderType | None = None
    time_in_force: TimeInForce | None = None
    post_only: str | None = None
    price: str | None = None  # "" for market orders
    quantity: str | None = None
    created_at: str | None = None


class BookEntry(msgspec.Struct, frozen=True):
    """`book:{I}` entry: the new total of every level a matcher call changed ("0" removes the level)."""

    seq: str
    instrument: str
    changes: str  # JSON [["buy" | "sell", price, quantity], ...]
    ts: str


def text(value: bytes | str | int) -> str:
    """A Redis reply value as text, whatever the client's decode_responses setting."""
    return value.decode() if isinstance(value, bytes) else str(value)


def fields_to_dict(fields: dict[bytes, bytes] | dict[str, str]) -> dict[str, str]:
    """A stream entry's fields as str -> str, whatever the client's decode_responses setting."""
    return {text(k): text(v) for k, v in fields.items()}
