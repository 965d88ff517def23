"""Helpers of the recovery tests: a deterministic command program, persisting it, capturing and wiping a book."""

from __future__ import annotations

import random
from dataclasses import dataclass

import msgspec
from redis.asyncio import Redis

from services.common.book import MAX_LEVELS, BookSnapshot, read_book
from services.common.instruments import Instrument, Instruments
from services.common.keys import InstrumentKeys
from services.common.wire import OrderRecord, decode_record, encode_record, fields_to_dict
from services.matcher.settings import MatcherSettings
from tests.conftest import TWO_INSTRUMENTS
from tests.persister.runner import workers
from tests.persister.workload import SHAPES, settings_for, wait_until_read

Command = dict[str, str]
CREATED_AT = 1_767_225_600_000  # fixed, so that two prefixes fed the same program hold equal records


STP_MODES = ("none", "none", "cancel_taker", "cancel_maker", "cancel_both", "decrement")


def amend(order_id: str, n: int, price_ticks: int | None, quantity_lots: int | None) -> Command:
    """An amend command of `order_id` (None: that value unchanged)."""
    return {"cmd": "amend", "order_id": order_id, "client_id": "client-1", "request_id": f"r-{order_id}-{n}",
            "price_ticks": "" if price_ticks is None else str(price_ticks),
            "quantity_lots": "" if quantity_lots is None else str(quantity_lots), "ts": str(CREATED_AT + n)}


def program(symbol: str, count: int, seed: int, tag: str, amends: float = 0.0, stp: bool = False) -> list[Command]:
    """`count` commands: mostly GTC limits around a mid price, some IOC/FOK/market/post-only, ~12% cancels;
    with `amends`, that share of amends (new price, new quantity or both) of orders placed before; with `stp`,
    orders in every self-trade prevention mode (a third `none`)."""
    rng = random.Random(seed)
    mid, spread, qmin, qmax = SHAPES[symbol]
    step = max(1, spread // 12)
    placed: list[str] = []
    commands: list[Command] = []
    for n in range(count):
        if placed and rng.random() < 0.12:
            commands.append({"cmd": "cancel", "order_id": rng.choice(placed), "client_id": "client-1",
                             "ts": str(CREATED_AT + n)})
            continue
        if placed and amends and rng.random() < amends:
            roll = rng.random()
            price = mid + rng.randint(-spread, spread) // step * step if roll < 0.5 else None
            quantity = rng.randint(qmin, qmax) if roll > 0.3 else None
            commands.append(amend(rng.choice(placed[-40:]), n, price, quantity))
            continue
        order_id = f"{symbol}-{tag}-{n}"
        placed.append(order_id)
        side = rng.choice(("buy", "sell"))
        roll = rng.random()
        kind, tif, post_only = "limit", "GTC", "0"
        if roll < 0.06:
            kind, tif = "market", "IOC"
        elif roll < 0.12:
            tif = "IOC"
        elif roll < 0.16:
            tif = "FOK"
        elif roll < 0.22:
            post_only = "1"
        # Buys mostly below mid and sells mostly above, overlapping a little: some cross, most rest and
        # build depth, on coarse price steps so that levels hold several orders (time priority matters).
        offset = rng.randint(-spread, spread // 5) if side == "buy" else rng.randint(-spread // 5, spread)
        price = 0 if kind == "market" else max(1, mid + offset // step * step)
        commands.append({
            "cmd": "new", "order_id": order_id, "client_id": f"client-{rng.randint(1, 5)}",
            "client_order_id": rng.choice(("", f"c-{order_id}")), "side": side, "type": kind,
            "time_in_force": tif, "post_only": post_only, "price_ticks": str(price),
            "quantity_lots": str(rng.randint(qmin, qmax)), "created_at": str(CREATED_AT + n),
        })
        if stp:
            commands[-1]["self_trade_prevention"] = rng.choice(STP_MODES)
    return commands


async def enqueue(redis: Redis, keys: InstrumentKeys, commands: list[Command]) -> None:
    """XADD the commands to the instrument's orders stream, as ingest does."""
    async with redis.pipeline(transaction=False) as pipe:
        for command in commands:
            pipe.xadd(keys.orders, command)  # type: ignore[arg-type]
        await pipe.execute()


async def enqueue_accepted(redis: Redis, keys: InstrumentKeys, commands: list[Command]) -> None:
    """XADD the commands and, for new orders, write the `accepted` record and the client's index member, as
    ingest's accept.lua does."""
    async with redis.pipeline(transaction=False) as pipe:
        for command in commands:
            pipe.xadd(keys.orders, command)  # type: ignore[arg-type]
            if command["cmd"] == "new":
                created = int(command["created_at"])
                record = OrderRecord(
                    order_id=command["order_id"], client_id=command["client_id"],
                    client_order_id=command["client_order_id"], side=command["side"],  # type: ignore[arg-type]
                    type=command["type"], time_in_force=command["time_in_force"],  # type: ignore[arg-type]
                    post_only=int(command["post_only"]), price_ticks=int(command["price_ticks"]),
                    quantity_lots=int(command["quantity_lots"]), filled_lots=0, status="accepted", reason="",
                    created_at=created, updated_at=created, arrival_seq=0, notional_hi=0, notional_lo=0,
                    self_trade_prevention=command.get("self_trade_prevention", "none"),  # type: ignore[arg-type]
                    session=command.get("session", ""))
                pipe.hset(keys.order_state, command["order_id"], encode_record(record))
                pipe.zadd(keys.client_orders(command["client_id"]), {command["order_id"]: created})
        await pipe.execute()


Backup = dict[bytes, tuple[bytes, int]]


async def backup(redis: Redis, prefix: str, symbol: str) -> Backup:
    """DUMP (and PTTL) of every key of the prefix that belongs to the instrument: an older copy to restore."""
    names = [key async for key in redis.scan_iter(match=f"{prefix}*{{{symbol}}}*", count=1000)]
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.dump(name)
            pipe.pttl(name)
        replies = await pipe.execute()
    return {name: (replies[2 * n], int(replies[2 * n + 1])) for n, name in enumerate(names)}


async def restore(redis: Redis, prefix: str, symbol: str, saved: Backup) -> None:
    """Put the instrument's keys back as `saved` holds them (RESTORE REPLACE), deleting the ones made since."""
    newer = [key async for key in redis.scan_iter(match=f"{prefix}*{{{symbol}}}*", count=1000) if key not in saved]
    async with redis.pipeline(transaction=True) as pipe:
        if newer:
            pipe.delete(*newer)
        for name, (dumped, pttl) in saved.items():
            pipe.restore(name, max(pttl, 0), dumped, replace=True)
        await pipe.execute()


async def persist(redis: Redis, redis_url: str, prefix: str, db_url: str, instruments: Instruments) -> None:
    """Run a persister worker until every trade and event of the prefix is committed to the database."""
    async with workers(settings_for(redis_url, prefix, db_url, TWO_INSTRUMENTS), instruments):
        await wait_until_read(redis, instruments, prefix, 30)


async def wipe(redis: Redis, prefix: str) -> int:
    """Delete every key of the prefix in one DEL (atomic), as a Redis restart without persistence would."""
    keys = [key async for key in redis.scan_iter(match=f"{prefix}*", count=1000)]
    return int(await redis.delete(*keys)) if keys else 0


@dataclass(frozen=True)
class BookState:
    """What a user and the matcher see of one instrument's book."""

    book: BookSnapshot
    resting: dict[str, list[str]]  # side -> order ids, best first, time priority within a level
    arrivals: dict[str, list[int]]  # side -> arrival numbers in the same order
    records: dict[str, OrderRecord]  # every resting order's record
    meta: dict[str, str]

    def records_without_arrival(self) -> dict[str, OrderRecord]:
        return {k: msgspec.structs.replace(r, arrival_seq=0) for k, r in self.records.items()}


async def capture(redis: Redis, instrument: Instrument, keys: InstrumentKeys) -> BookState:
    book = await read_book(redis, instrument, keys, MAX_LEVELS)
    resting: dict[str, list[str]] = {}
    arrivals: dict[str, list[int]] = {}
    records: dict[str, OrderRecord] = {}
    for side, key in (("buy", keys.bid_orders), ("sell", keys.ask_orders)):
        members = [m.decode() for m in await redis.zrange(key, 0, -1)]
        resting[side] = [m.split(":", 1)[1] for m in members]
        arrivals[side] = [int(m.split(":", 1)[0]) for m in members]
        for order_id in resting[side]:
            packed = await redis.hget(keys.order_state, order_id)
            assert packed is not None, order_id
            records[order_id] = decode_record(packed)
    meta = fields_to_dict(await redis.hgetall(keys.meta))
    return BookState(book, resting, arrivals, records, meta)


def matcher_settings(redis_url: str, prefix: str, database_url: str, instruments: Instruments) -> MatcherSettings:
    return MatcherSettings(
        redis_url=redis_url, key_prefix=prefix, instruments=instruments, consumer="t", batch_size=64,
        block_ms=100, metrics_host="127.0.0.1", metrics_port=0, monitor_interval_s=0.2, log_level="INFO",
        database_url=database_url, recovery_backoff_max_s=0.2,
        # The tests' standalone matchers hold leases as "t" (take_lease); this one takes them back under the
        # same id, for long enough that a test driving its engines after prepare() needs no renewal.
        lease_ms=60_000,
    )

