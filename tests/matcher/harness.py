"""Drive match.lua directly: enqueue commands in decimals, apply them, read the book back in decimals."""

from __future__ import annotations

import itertools
import time
from decimal import Decimal

import msgspec
from redis.asyncio import Redis

from services.common.instruments import Instrument
from services.common.keys import InstrumentKeys, instrument_keys
from services.common.wire import (
    CancelCommand,
    EventEntry,
    NewOrderCommand,
    OrderRecord,
    TradeEntry,
    decode_record,
    fields_to_dict,
)
from services.matcher.engine import InstrumentMatcher

Level = tuple[str, str]


class Harness:
    """One instrument's matcher under test, addressed in the instrument's decimal units."""

    def __init__(self, redis: Redis, instrument: Instrument, prefix: str, batch_size: int = 64) -> None:
        self.redis = redis
        self.instrument = instrument
        self.keys: InstrumentKeys = instrument_keys(prefix, instrument.symbol)
        self.matcher = InstrumentMatcher(redis, instrument, self.keys, "test", batch_size)
        self._ids = itertools.count(1)

    async def prepare(self) -> None:
        await self.matcher.prepare()
        await self.matcher.take_lease()

    async def new(self, side: str, price: str | None, quantity: str, *, order_id: str | None = None,
                  type: str = "limit", tif: str | None = None, post_only: bool = False,
                  client: str = "client-1") -> str:
        order_id = order_id or f"o{next(self._ids)}"
        command = NewOrderCommand(
            order_id=order_id, client_id=client, client_order_id="", side=side,  # type: ignore[arg-type]
            type=type, time_in_force=tif or ("IOC" if type == "market" else "GTC"),  # type: ignore[arg-type]
            post_only="1" if post_only else "0",
            price_ticks=str(self.instrument.price_ticks(Decimal(price)) if price is not None else 0),
            quantity_lots=str(self.instrument.quantity_lots(Decimal(quantity))),
            created_at=str(int(time.time() * 1000)),
        )
        await self.redis.xadd(self.keys.orders, msgspec.to_builtins(command))
        return order_id

    async def cancel(self, order_id: str, client: str = "client-1") -> None:
        command = CancelCommand(order_id=order_id, client_id=client, ts=str(int(time.time() * 1000)))
        await self.redis.xadd(self.keys.orders, msgspec.to_builtins(command))

    async def run(self) -> int:
        return await self.matcher.drain()

    async def order(self, order_id: str) -> OrderRecord:
        packed = await self.redis.hget(self.keys.order_state, order_id)
        assert packed is not None, f"no record for {order_id}"
        return decode_record(packed)

    async def status(self, order_id: str) -> tuple[str, str, str]:
        """(status, filled quantity, reason) of an order."""
        record = await self.order(order_id)
        return record.status, self.instrument.quantity_text(record.filled_lots), record.reason

    async def levels(self, side: str) -> list[Level]:
        levels_key = self.keys.bid_levels if side == "buy" else self.keys.ask_levels
        depth_key = self.keys.bid_depth if side == "buy" else self.keys.ask_depth
        ticks = [t.decode() for t in await self.redis.zrange(levels_key, 0, -1)]
        lots = await self.redis.hmget(depth_key, ticks) if ticks else []
        return [(self.instrument.price_text(int(t)), self.instrument.quantity_text(int(q)))
                for t, q in zip(ticks, lots, strict=True)]

    async def book(self) -> dict[str, list[Level]]:
        return {"buy": await self.levels("buy"), "sell": await self.levels("sell")}

    async def trades(self) -> list[TradeEntry]:
        return [msgspec.convert(fields_to_dict(f), TradeEntry) for _, f in await self.redis.xrange(self.keys.trades)]

    async def events(self) -> list[EventEntry]:
        return [msgspec.convert(fields_to_dict(f), EventEntry) for _, f in await self.redis.xrange(self.keys.events)]

    async def resting_order_ids(self, side: str) -> list[str]:
        key = self.keys.bid_orders if side == "buy" else self.keys.ask_orders
        return [m.decode().split(":", 1)[1] for m in await self.redis.zrange(key, 0, -1)]

    async def open_counts(self) -> dict[str, int]:
        """The open-order counts match.lua keeps (client -> resting orders)."""
        return {k: int(v) for k, v in fields_to_dict(await self.redis.hgetall(self.keys.open_counts)).items()}

    async def check_book_consistency(self) -> None:
        """Level totals equal the sum of resting orders; no empty level; every resting order is open; each client's
        open-order count is its number of resting orders."""
        counts: dict[str, int] = {}
        for side in ("buy", "sell"):
            expected: dict[str, int] = {}
            for order_id in await self.resting_order_ids(side):
                record = await self.order(order_id)
                assert record.status in ("open", "partially_filled"), record
                assert record.filled_lots < record.quantity_lots, record
                key = self.instrument.price_text(record.price_ticks)
                expected[key] = expected.get(key, 0) + record.quantity_lots - record.filled_lots
                counts[record.client_id] = counts.get(record.client_id, 0) + 1
            levels = await self.levels(side)
            assert {p: q for p, q in levels} == {p: self.instrument.quantity_text(v) for p, v in expected.items()}
            assert all(q != "0" for _, q in levels)
        assert await self.open_counts() == counts
