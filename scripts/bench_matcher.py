"""Matcher throughput through the Lua path: commands/s for several batch sizes, in one run.

    .venv/bin/python -m scripts.bench_matcher --orders 50000 --batches 1,16,256

Enqueues the same seeded order flow (limit orders around a mid price, about a third crossing, some
cancels and market orders) under a fresh key prefix per batch size, then times the matcher draining it.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid

import msgspec

from services.common.env import redis_url
from services.common.instruments import Instrument, load_instruments
from services.common.keys import instrument_keys
from services.common.redis_conn import connect
from services.common.wire import CancelCommand, NewOrderCommand, Side
from services.matcher.engine import InstrumentMatcher


def order_flow(instrument: Instrument, count: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    mid = instrument.price_ticks(instrument.tick * 5_000_000)
    commands: list[dict[str, str]] = []
    for n in range(count):
        if n % 20 == 19:
            commands.append(msgspec.to_builtins(CancelCommand(f"o{rng.randrange(n)}", "bench", "0")))
            continue
        side: Side = rng.choice(["buy", "sell"])
        market = rng.random() < 0.03
        # A third of limit orders land across the spread and trade.
        offset = rng.randint(1, 50) * (1 if rng.random() < 0.67 else -1)
        price = 0 if market else mid - offset if side == "buy" else mid + offset
        commands.append(msgspec.to_builtins(NewOrderCommand(
            order_id=f"o{n}", client_id=f"c{n % 100}", client_order_id="", side=side,
            type="market" if market else "limit", time_in_force="IOC" if market else "GTC", post_only="0",
            price_ticks=str(price), quantity_lots=str(rng.randint(1, 100) * 1_000_000), created_at="0")))
    return commands


async def measure(batch: int, commands: list[dict[str, str]], instrument: Instrument) -> tuple[float, int]:
    redis = connect(redis_url())
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    keys = instrument_keys(prefix, instrument.symbol)
    matcher = InstrumentMatcher(redis, instrument, keys, "bench", batch)
    try:
        await matcher.prepare()
        await matcher.take_lease()
        for start in range(0, len(commands), 1000):
            async with redis.pipeline(transaction=False) as pipe:
                for fields in commands[start:start + 1000]:
                    pipe.xadd(keys.orders, fields)  # type: ignore[arg-type]
                await pipe.execute()
        began = time.perf_counter()
        applied = await matcher.drain()
        elapsed = time.perf_counter() - began
        trades = int(await redis.hget(keys.meta, "trade_seq") or 0)
        return applied / elapsed, trades
    finally:
        found = [k async for k in redis.scan_iter(match=f"{prefix}*", count=1000)]
        if found:
            await redis.delete(*found)
        await redis.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=50_000)
    parser.add_argument("--batches", default="1,16,256")
    parser.add_argument("--instruments", default="instruments.toml")
    parser.add_argument("--rounds", type=int, default=2, help="alternate the configurations this many times")
    args = parser.parse_args()
    instrument = next(iter(load_instruments(args.instruments).values()))
    commands = order_flow(instrument, args.orders, seed=1)
    batches = [int(b) for b in args.batches.split(",")]
    results: dict[int, list[float]] = {b: [] for b in batches}
    for _ in range(args.rounds):
        for batch in batches:
            rate, trades = await measure(batch, commands, instrument)
            results[batch].append(rate)
            print(f"batch {batch:>4}: {rate:>9,.0f} commands/s  ({trades:,} trades from {args.orders:,} commands)")
    print("best of rounds:", ", ".join(f"batch {b}: {max(r):,.0f}/s" for b, r in results.items()))


if __name__ == "__main__":
    asyncio.run(main())
