"""Real streams for the persister tests: orders placed on the orders stream, matched by the real matcher,
and the expected database computed from the streams independently of the persister."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import msgspec
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.groups import group_lag
from services.common.instruments import Instrument, Instruments
from services.common.keys import PERSISTER_GROUP, InstrumentKeys, instrument_keys
from services.common.wire import CancelCommand, NewOrderCommand, fields_to_dict
from services.matcher.engine import InstrumentMatcher
from services.persister.settings import PersisterSettings

_ENCODE = msgspec.to_builtins
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# (mid price in ticks, price spread in ticks, smallest and largest quantity in lots)
SHAPES = {"BTC-USD": (5_000_000, 300, 1_000_000, 50_000_000), "ETH-USD": (60_000, 40, 10, 3_000)}


def new_order(rng: random.Random, symbol: str, order_id: str) -> NewOrderCommand:
    mid, spread, qmin, qmax = SHAPES[symbol]
    side = rng.choice(("buy", "sell"))
    roll = rng.random()
    kind, tif, post_only = "limit", "GTC", "0"
    if roll < 0.1:
        kind, tif = "market", "IOC"
    elif roll < 0.2:
        tif = "IOC"
    elif roll < 0.25:
        tif = "FOK"
    elif roll < 0.3:
        post_only = "1"
    # Buys lean above mid and sells below, so about a third of the orders cross.
    lean = spread // 3 if side == "buy" else -spread // 3
    price = 0 if kind == "market" else max(1, mid + lean + rng.randint(-spread, spread))
    return NewOrderCommand(
        order_id=order_id, client_id=f"client-{rng.randint(1, 7)}",
        client_order_id=rng.choice(("", f"c-{order_id}")), side=side, type=kind,  # type: ignore[arg-type]
        time_in_force=tif, post_only=post_only,  # type: ignore[arg-type]
        price_ticks=str(price), quantity_lots=str(rng.randint(qmin, qmax)),
        created_at=str(int(time.time() * 1000)),
    )


async def place_orders(redis: Redis, keys: InstrumentKeys, count: int, seed: int, tag: str = "") -> None:
    """XADD `count` commands (about 1 in 10 a cancel, some of unknown orders) to the orders stream."""
    rng = random.Random(seed)
    placed: list[str] = []
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(count):
            if placed and rng.random() < 0.1:
                target = rng.choice(placed) if rng.random() < 0.9 else f"{keys.symbol}-unknown-{n}"
                cmd: NewOrderCommand | CancelCommand = CancelCommand(
                    order_id=target, client_id="client-1", ts=str(int(time.time() * 1000)))
            else:
                cmd = new_order(rng, keys.symbol, f"{keys.symbol}-{tag}{seed}-{n}")
                placed.append(cmd.order_id)
            fields = {k: str(v) for k, v in _ENCODE(cmd).items()}
            fields["cmd"] = "new" if isinstance(cmd, NewOrderCommand) else "cancel"
            pipe.xadd(keys.orders, fields)  # type: ignore[arg-type]
        await pipe.execute()


async def produce(redis: Redis, instruments: Instruments, prefix: str, per_instrument: int, seed: int,
                  tag: str = "") -> None:
    """Place orders on every instrument and let the real matcher apply them all."""
    for n, symbol in enumerate(sorted(instruments)):
        keys = instrument_keys(prefix, symbol)
        await place_orders(redis, keys, per_instrument, seed * 100 + n, tag)
        matcher = InstrumentMatcher(redis, instruments[symbol], keys, "t", 200)
        await matcher.prepare()
        await matcher.take_lease()
        await matcher.drain()


# What the database must hold ----------------------------------------------------------------------

def ms(text_ms: str) -> datetime:
    return EPOCH + timedelta(milliseconds=int(text_ms))


async def stream_entries(redis: Redis, key: str) -> list[tuple[str, dict[str, str]]]:
    return [(i.decode(), fields_to_dict(f)) for i, f in await redis.xrange(key)]


def _dec(s: str) -> Decimal:
    return Decimal(s)


@dataclass
class Expected:
    trades: list[tuple[Any, ...]]
    events: list[tuple[Any, ...]]
    orders: list[tuple[Any, ...]]


def average(instrument: Instrument, quote: Decimal, qty: Decimal) -> Decimal | None:
    if qty == 0:
        return None
    ticks = (quote / qty / instrument.tick).to_integral_value(rounding=ROUND_HALF_EVEN)
    return ticks * instrument.tick


async def expected(redis: Redis, instruments: Instruments, prefix: str,
                   skip: frozenset[tuple[str, str]] = frozenset()
                   ) -> Expected:
    """The rows the streams stand for (but the trades entries `skip` names as (stream key, id): ids alone
    repeat across streams written in the same millisecond), computed without the persister's code."""
    trades, events, orders = [], [], []
    for symbol, instrument in sorted(instruments.items()):
        keys = instrument_keys(prefix, symbol)
        fills: dict[str, list[tuple[Decimal, Decimal]]] = defaultdict(list)
        for entry_id, t in await stream_entries(redis, keys.trades):
            if (keys.trades, entry_id) in skip:
                continue
            price, qty = _dec(t["price"]), _dec(t["quantity"])
            trades.append((t["trade_id"], t["instrument"], int(t["seq"]), price, qty, t["taker_side"],
                           t["taker_order_id"], t["maker_order_id"], t["buy_order_id"], t["sell_order_id"],
                           t["buyer_client_id"], t["seller_client_id"], ms(t["ts"])))
            fills[t["buy_order_id"]].append((price, qty))
            fills[t["sell_order_id"]].append((price, qty))
        state: dict[str, dict[str, Any]] = {}
        for _, e in await stream_entries(redis, keys.events):
            events.append((e["instrument"], int(e["seq"]), e["event"], e["order_id"] or None, e["client_id"],
                           e["status"], _dec(e["filled_quantity"]), _dec(e["remaining_quantity"]),
                           _dec(e["filled_quote"]), e["reason"] or None, ms(e["ts"])))
            if e["event"] in ("accepted", "rejected", "amended"):
                # An amend's event carries the whole order too: its price and quantity replace the old ones.
                queued = state.get(e["order_id"], {}).get("queued_seq")
                state[e["order_id"]] = dict(e)
                # The order's place in the queue: its accepted event, or an amend that moved it to the back.
                requeued = e["event"] == "accepted" or e.get("requeued") == "1"
                state[e["order_id"]]["queued_seq"] = e["seq"] if requeued else queued
                if e["event"] == "amended":
                    state[e["order_id"]]["reason"] = ""  # an amend's reason is the event's, not the order's
            elif e["event"] not in ("cancel_rejected", "amend_rejected"):
                state[e["order_id"]].update({k: e[k] for k in (
                    "status", "filled_quantity", "remaining_quantity", "filled_quote", "reason", "ts", "seq")})
        for order_id, o in state.items():
            filled = sum((q for _, q in fills[order_id]), Decimal(0))
            quote = sum((p * q for p, q in fills[order_id]), Decimal(0))
            # The stream's own accounting must agree with the trades (sum of fills, exact).
            assert _dec(o["filled_quantity"]) == filled, order_id
            assert _dec(o["filled_quote"]) == quote, order_id
            orders.append((order_id, o["client_order_id"] or None, o["client_id"], symbol, o["side"], o["type"],
                           o["time_in_force"], o["post_only"] == "1", _dec(o["price"]) if o["price"] else None,
                           _dec(o["quantity"]), filled, _dec(o["remaining_quantity"]), quote,
                           average(instrument, quote, filled), o["status"], o["reason"] or None,
                           ms(o["created_at"]), ms(o["ts"]), int(o["seq"]),
                           None if o["queued_seq"] is None else int(o["queued_seq"]),
                           o.get("self_trade_prevention") or "none"))
    return Expected(sorted(trades), sorted(events), sorted(orders))


TRADE_COLS = ("trade_id, instrument, seq, price, quantity, taker_side, taker_order_id, maker_order_id, "
              "buy_order_id, sell_order_id, buyer_client_id, seller_client_id, executed_at")
EVENT_COLS = ("instrument, seq, event, order_id, client_id, status, filled_quantity, remaining_quantity, "
              "filled_quote, reason, ts")
ORDER_COLS = ("order_id, client_order_id, client_id, instrument, side, type, time_in_force, post_only, price, "
              "quantity, filled_quantity, remaining_quantity, filled_quote, average_price, status, reason, "
              "created_at, updated_at, last_event_seq, queued_seq, self_trade_prevention")


async def stored(engine: AsyncEngine) -> Expected:
    """Everything in the database, in the same shape as expected()."""
    async with engine.connect() as conn:
        trades = [tuple(r) for r in await conn.execute(text(f"SELECT {TRADE_COLS} FROM trades"))]
        events = [tuple(r) for r in await conn.execute(text(f"SELECT {EVENT_COLS} FROM order_events"))]
        orders = [tuple(r) for r in await conn.execute(text(f"SELECT {ORDER_COLS} FROM orders"))]
    return Expected(sorted(trades), sorted(events), sorted(orders))


async def counts(engine: AsyncEngine) -> tuple[int, int]:
    async with engine.connect() as conn:
        row = (await conn.execute(text(
            "SELECT (SELECT count(*) FROM trades), (SELECT count(*) FROM order_events)"))).one()
    return int(row[0]), int(row[1])


async def wait_until_persisted(engine: AsyncEngine, want: Expected, within: float) -> None:
    deadline = time.monotonic() + within
    target = (len(want.trades), len(want.events))
    while True:
        try:
            got = await counts(engine)
        except OSError:
            got = (-1, -1)
        if got == target:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"persisted {got}, expected {target} (trades, events)")
        await asyncio.sleep(0.05)


async def group_pending(redis: Redis, instruments: Instruments, prefix: str) -> int:
    total = 0
    for symbol in instruments:
        keys = instrument_keys(prefix, symbol)
        for key in (keys.trades, keys.events):
            total += int((await redis.xpending(key, PERSISTER_GROUP))["pending"])
    return total


def settings_for(redis_url: str, prefix: str, db_url: str, instruments_file: Path,
                 **overrides: Any) -> PersisterSettings:
    base = PersisterSettings(
        redis_url=redis_url, key_prefix=prefix, database_url=db_url, instruments_file=instruments_file,
        consumer="persister-1", metrics_host="127.0.0.1", metrics_port=0, batch=500, block_ms=100,
        claim_idle_ms=30000, claim_every_ms=15000, max_deliveries=5, backoff_initial_s=0.05,
        backoff_max_s=0.5, lag_every_s=0.2, db_pool_size=2,
    )
    return replace(base, **overrides)


async def wait_until_read(redis: Redis, instruments: Instruments, prefix: str, within: float) -> None:
    """Until the persister group has read and acknowledged every entry of every stream."""
    deadline = time.monotonic() + within
    while True:
        left = 0
        for symbol in instruments:
            keys = instrument_keys(prefix, symbol)
            for key in (keys.trades, keys.events):
                lag = await group_lag(redis, key, PERSISTER_GROUP)
                left += await redis.xlen(key) if lag is None else lag[0] + lag[1]
        if left == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{left} entries not yet read and acknowledged")
        await asyncio.sleep(0.05)
