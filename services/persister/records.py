"""Stream entries -> rows (services/persister/rows.py): decoding the trades and events streams, folding
events into order rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Literal

import msgspec

from services.common.instruments import Instrument, Instruments
from services.common.keys import instrument_keys
from services.common.money import EXACT
from services.common.wire import RESTING_STATUSES, EventEntry, TradeEntry
from services.persister.rows import STATIC_FIELDS, EventRow, OrderRow, TradeRow

StreamKind = Literal["trades", "events"]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Events that change an order's state; cancel_rejected and amend_rejected only report on it.
ORDER_CHANGING = frozenset({"accepted", "rejected", "partially_filled", "filled", "cancelled", "amended"})
# Events that carry every field of the order (an amended one its new price and quantity).
CARRIES_ORDER = frozenset({"accepted", "rejected", "amended"})


class MalformedEntry(ValueError):
    """A stream entry that cannot become a row, whatever the database does."""


@dataclass(frozen=True, slots=True)
class StreamRef:
    """One stream the persister reads, with what it needs to decode and dead-letter its entries."""

    key: str
    kind: StreamKind
    instrument: Instrument
    deadletter: str


def deadletter_key(prefix: str, symbol: str) -> str:
    """The dead-letter stream of an instrument (same hash tag: dead-lettering is one MULTI)."""
    return f"{prefix}deadletter:{{{symbol}}}"


def stream_refs(prefix: str, instruments: Instruments) -> list[StreamRef]:
    """The trades and events streams of every configured instrument."""
    refs: list[StreamRef] = []
    for symbol, instrument in instruments.items():
        keys = instrument_keys(prefix, symbol)
        dead = deadletter_key(prefix, symbol)
        refs.append(StreamRef(keys.trades, "trades", instrument, dead))
        refs.append(StreamRef(keys.events, "events", instrument, dead))
    return refs


# Structs rather than dataclasses: one of each per entry, and a frozen dataclass's __init__ costs 3-4x more.
class Entry(msgspec.Struct, frozen=True):
    """One delivered stream entry."""

    stream: StreamRef
    id: str
    fields: dict[str, str]


class Decoded(msgspec.Struct, frozen=True):
    """The rows one entry contributes: a trade, or an order event plus (maybe) an order state."""

    entry: Entry
    trade: TradeRow | None = None
    event: EventRow | None = None
    order: OrderRow | None = None


def _decimal(name: str, text: str) -> Decimal:
    # money.parse_decimal's rules, inlined: three or four of these per entry.
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise MalformedEntry(f"{name}={text!r} is not a decimal") from exc
    if not value.is_finite():
        raise MalformedEntry(f"{name}={text!r} is not a decimal")
    return value


def _ms(name: str, text: str) -> datetime:
    try:
        # Positional microseconds: a third cheaper than timedelta(milliseconds=...), as exact.
        return EPOCH + timedelta(0, 0, int(text) * 1000)
    except (ValueError, OverflowError) as exc:
        raise MalformedEntry(f"{name}={text!r} is not a time in ms") from exc


def _seq(text: str) -> int:
    try:
        seq = int(text)
    except ValueError as exc:
        raise MalformedEntry(f"seq={text!r} is not an integer") from exc
    if not 0 < seq < 2**63:
        raise MalformedEntry(f"seq={text!r} is out of range")
    return seq


def _command_id(text: str | None) -> str | None:
    """A stream entry id `<ms>-<seq>` as the matcher wrote it; None when the event carries none."""
    if not text:
        return None
    # stream_ids.is_stream_id's rule (ASCII digits, 1-19 each, below 2^63) without its regex: one per event.
    ms, dash, seq = text.partition("-")
    if not (dash and 0 < len(ms) < 20 and 0 < len(seq) < 20 and ms.isascii() and ms.isdigit()
            and seq.isascii() and seq.isdigit() and (len(ms) < 19 or int(ms) < 2**63)
            and (len(seq) < 19 or int(seq) < 2**63)):
        raise MalformedEntry(f"command_id={text!r} is not a stream entry id")
    return text


def average_price(instrument: Instrument, filled_quote: Decimal, filled_quantity: Decimal) -> Decimal | None:
    """filled_quote / filled_quantity rounded half-even to the tick, exactly as the API shows it."""
    if filled_quantity == 0:
        return None
    try:
        lots = instrument.quantity_lots(filled_quantity)
        notional = instrument.notional_of(filled_quote)
    except ValueError as exc:
        raise MalformedEntry(f"filled {filled_quantity} for {filled_quote}: {exc}") from exc
    text = instrument.average_price_text(notional, lots)
    return None if text is None else Decimal(text)


def decode_trade(entry: Entry) -> Decoded:
    try:
        t = msgspec.convert(entry.fields, TradeEntry)
    except msgspec.ValidationError as exc:
        raise MalformedEntry(str(exc)) from exc
    if t.instrument != entry.stream.instrument.symbol:
        raise MalformedEntry(f"instrument={t.instrument!r} on {entry.stream.key!r}")
    return Decoded(entry, trade=TradeRow(
        trade_id=t.trade_id, instrument=t.instrument, seq=_seq(t.seq),
        price=_decimal("price", t.price), quantity=_decimal("quantity", t.quantity),
        taker_side=t.taker_side, taker_order_id=t.taker_order_id, maker_order_id=t.maker_order_id,
        buy_order_id=t.buy_order_id, sell_order_id=t.sell_order_id,
        buyer_client_id=t.buyer_client_id, seller_client_id=t.seller_client_id,
        executed_at=_ms("ts", t.ts),
    ))


def decode_event(entry: Entry) -> Decoded:
    try:
        e = msgspec.convert(entry.fields, EventEntry)
    except msgspec.ValidationError as exc:
        raise MalformedEntry(str(exc)) from exc
    instrument = entry.stream.instrument
    if e.instrument != instrument.symbol:
        raise MalformedEntry(f"instrument={e.instrument!r} on {entry.stream.key!r}")
    seq, ts = _seq(e.seq), _ms("ts", e.ts)
    filled = _decimal("filled_quantity", e.filled_quantity)
    remaining = _decimal("remaining_quantity", e.remaining_quantity)
    quote = _decimal("filled_quote", e.filled_quote)
    event = EventRow(
        instrument=e.instrument, seq=seq, event=e.event, order_id=e.order_id or None,
        client_id=e.client_id, status=e.status, filled_quantity=filled,
        remaining_quantity=remaining, filled_quote=quote, reason=e.reason or None, ts=ts,
        command_id=_command_id(e.command_id),
    )
    if e.event not in ORDER_CHANGING or not e.order_id:
        return Decoded(entry, event=event)
    avg = average_price(instrument, quote, filled)
    # A cancel-on-disconnect sweep can cancel an order still `accepted`: that `cancelled` is the order's first
    # event and carries every field of the order (its new command is then skipped), so it is read like one.
    if e.event not in CARRIES_ORDER and e.side is None:
        order = OrderRow(
            order_id=e.order_id, client_order_id=None, client_id=e.client_id, instrument=e.instrument,
            side=None, type=None, time_in_force=None, post_only=None, price=None,
            quantity=EXACT.add(filled, remaining), filled_quantity=filled, remaining_quantity=remaining,
            filled_quote=quote, average_price=avg,
            status=e.status, reason=e.reason or None, created_at=None, updated_at=ts, last_event_seq=seq,
            queued_seq=None, self_trade_prevention=None,
        )
        return Decoded(entry, event=event, order=order)
    if e.side is None or e.type is None or e.time_in_force is None or e.quantity is None \
            or e.created_at is None or e.post_only not in ("0", "1"):
        raise MalformedEntry(f"{e.event} event of {e.order_id!r} lacks the order's fields")
    queued: int | None = None
    reason = e.reason or None
    if e.event == "amended":
        if e.requeued not in ("0", "1"):
            raise MalformedEntry(f"amended event of {e.order_id!r} has requeued={e.requeued!r}")
        if e.requeued == "1":
            queued = seq
        # The amend's reason (self_trade_prevented for an STP decrement) says why it happened, not the
        # order's: a resting order has none, as its record says (match.lua keeps the record's).
        reason = None
    elif e.event == "accepted" and e.status in RESTING_STATUSES:  # holds a place in a level's queue
        queued = seq
    order = OrderRow(
        order_id=e.order_id, client_order_id=e.client_order_id or None, client_id=e.client_id,
        instrument=e.instrument, side=e.side, type=e.type, time_in_force=e.time_in_force,
        post_only=e.post_only == "1", price=_decimal("price", e.price) if e.price else None,
        quantity=_decimal("quantity", e.quantity), filled_quantity=filled, remaining_quantity=remaining,
        filled_quote=quote, average_price=avg,
        status=e.status, reason=reason, created_at=_ms("created_at", e.created_at), updated_at=ts,
        last_event_seq=seq, queued_seq=queued, self_trade_prevention=e.self_trade_prevention or "none",
    )
    return Decoded(entry, event=event, order=order)


def decode(entry: Entry) -> Decoded:
    """The rows of one entry; MalformedEntry when it cannot be read."""
    return decode_trade(entry) if entry.stream.kind == "trades" else decode_event(entry)


def _queued(row: OrderRow) -> int:
    return -1 if row.queued_seq is None else row.queued_seq


def _merge_orders(a: OrderRow, b: OrderRow) -> OrderRow:
    """One row standing for two events of an order, as writer.py's upsert merges them: the newer state,
    the order's fields from either, the price (and queue place) of the one queued last."""
    newer, older = (a, b) if a.last_event_seq >= b.last_event_seq else (b, a)
    merged = newer
    if newer.side is None and older.side is not None:
        merged = msgspec.structs.replace(newer, **{name: getattr(older, name) for name in STATIC_FIELDS})
    # Every price change re-queues the order: the price is the one of its latest queue place. Without
    # one (a market order, an order never queued), the rows that carry a price carry the same.
    placed = max(newer, older, key=_queued)
    price = placed.price if placed.queued_seq is not None else (
        newer.price if newer.price is not None else older.price)
    if price == merged.price and placed.queued_seq == merged.queued_seq:
        return merged
    return msgspec.structs.replace(merged, price=price, queued_seq=placed.queued_seq)


@dataclass(frozen=True, slots=True)
class WriteSet:
    """The rows of a batch, each table's rows sorted by key so concurrent workers lock in one order."""

    trades: list[TradeRow]
    events: list[EventRow]
    orders: list[OrderRow]

    @classmethod
    def of(cls, decoded: list[Decoded]) -> WriteSet:
        """The rows of these entries: one order row per order, each table sorted by its key."""
        trades = sorted((d.trade for d in decoded if d.trade is not None), key=lambda r: r.trade_id)
        events = sorted((d.event for d in decoded if d.event is not None), key=lambda r: (r.instrument, r.seq))
        orders: dict[str, OrderRow] = {}
        for d in decoded:
            if d.order is not None:
                known = orders.get(d.order.order_id)
                orders[d.order.order_id] = d.order if known is None else _merge_orders(known, d.order)
        return cls(trades, events, [orders[k] for k in sorted(orders)])
