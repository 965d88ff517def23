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
# An order in the book: in its level's time queue.
RESTING_STATUSES: tuple[Status, ...] = ("open", "partially_filled")
# The incoming order's self-trade prevention mode (docs/order-management.md): under `none` a client's orders
# may trade with each other.
SelfTradePrevention = Literal["none", "cancel_taker", "cancel_maker", "cancel_both", "decrement"]


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
    # Appended with defaults: entries written before these fields existed decode as `none` and no session.
    self_trade_prevention: SelfTradePrevention = "none"
    session: str = ""  # the cancel-on-disconnect session the order was placed through, "" none


class CancelCommand(msgspec.Struct, frozen=True, tag="cancel", tag_field="cmd"):
    """Inbound `orders:{I}` entry that cancels a resting order."""

    order_id: str
    client_id: str  # who asked (the owner, a broker or an admin)
    ts: str


class AmendCommand(msgspec.Struct, frozen=True, tag="amend", tag_field="cmd"):
    """Inbound `orders:{I}` entry that changes a resting order's price and/or total quantity."""

    order_id: str
    client_id: str  # who asked (the owner, a broker or an admin)
    request_id: str  # names the outcome key res:{I}:<request_id> the asking ingest waits on
    price_ticks: str  # "" = unchanged
    quantity_lots: str  # the new total, filled included; "" = unchanged
    ts: str


CancelAllSide = Literal["", "buy", "sell"]
CancelAllReason = Literal["user", "halted"]


class CancelAllCommand(msgspec.Struct, frozen=True, tag="cancel_all", tag_field="cmd"):
    """Inbound `orders:{I}` entry that cancels every resting order of one client on the instrument."""

    client_id: str  # whose orders
    side: CancelAllSide  # "" = both sides
    reason: CancelAllReason  # the cancelled events' reason
    request_id: str  # names the outcome key res:{I}:<request_id>
    requester: str  # who asked
    ts: str


Command = NewOrderCommand | CancelCommand | AmendCommand | CancelAllCommand

AmendOutcomeKind = Literal["amended", "unchanged", "amend_rejected"]


class AmendOutcome(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What match.lua stores as JSON under res:{I}:<request_id> for an amend (reason "" unless rejected;
    the rejection reasons are the amend_rejected event's)."""

    outcome: AmendOutcomeKind
    reason: str


class CancelAllOutcome(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What match.lua stores as JSON under res:{I}:<request_id> for a cancel-all: the orders it cancelled."""

    cancelled: list[str]


# The outcome keys' codecs: ingest decodes exactly what match.lua writes (tests hold the script to these).
decode_amend_outcome = msgspec.json.Decoder(AmendOutcome).decode
decode_cancel_all_outcome = msgspec.json.Decoder(CancelAllOutcome).decode



def command_fields(command: Command) -> list[str]:
    """An inbound command as its orders-stream entry's field/value strings, flat: the tag (`cmd`), then each field;
    a field with a default only when its value differs from it (an entry without it means the default)."""
    config = command.__struct_config__
    fields = [str(config.tag_field), str(config.tag)]
    names, defaults = command.__struct_fields__, command.__struct_defaults__
    required = len(names) - len(defaults)
    for at, name in enumerate(names):
        value = getattr(command, name)
        if at < required or value != defaults[at - required]:
            fields += [name, value]
    return fields

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
    # Appended with defaults (a decoder fills them in for a shorter array, here and in the generated Lua codec):
    # records written before these fields existed read as `none` and no session.
    self_trade_prevention: SelfTradePrevention = "none"
    session: str = ""  # the cancel-on-disconnect session, "" none

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


EventKind = Literal["accepted", "rejected", "partially_filled", "filled", "cancelled", "cancel_rejected", "amended",
                    "amend_rejected"]


class EventEntry(msgspec.Struct, frozen=True):
    """`events:{I}` entry. `accepted`, `rejected` and `amended` also carry every field of the order."""

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
    self_trade_prevention: SelfTradePrevention | None = None  # with the order's fields
    # `amended` only: "1" the order went to the back of its (new) level, "0" it kept its place.
    requeued: str | None = None


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
