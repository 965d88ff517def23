"""Load N synthetic trades into DATABASE_URL quickly, through the persister's own Writer (COPY), so the
analytics aggregates are maintained exactly as in production. Seeded: the same arguments load the same trades.

    .venv/bin/python scripts/load_trades.py [--trades 1000000] [--days 7] [--clients 100] [--seed 1]

Creates and migrates the database if missing. Trades are spread evenly over the `--days` before now across
every configured instrument (INSTRUMENTS_FILE), with a random-walk price, random quantities and buyers and
sellers drawn from client-1..client-N (about 1% self-trades); seq continues after the instrument's last.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from services.analytics.time_buckets import MS, now_ms
from services.common.db import database_url, migrate
from services.common.env import instruments_file
from services.common.instruments import Instrument, load_instruments
from services.common.wire import Side
from services.persister.records import WriteSet
from services.persister.rows import TradeRow
from services.persister.writer import Writer

CHUNK = 100_000


def generate(rng: random.Random, instrument: Instrument, count: int, first_seq: int, start: dt.datetime,
             span: dt.timedelta, clients: int) -> list[TradeRow]:
    """`count` trades of one instrument, evenly spread over [start, start + span), in seq order."""
    mid = min(instrument.max_ticks // 2, instrument.price_ticks(Decimal(50_000)))
    ticks, step = mid, max(1, mid // 20_000)
    lots_max = max(instrument.min_lots, min(instrument.max_lots, instrument.quantity_lots(Decimal("0.5"))))
    spacing = span / count
    rows = []
    for n in range(count):
        seq = first_seq + n
        ticks = min(instrument.max_ticks, max(1, ticks + rng.randint(-step, step)))
        buyer = rng.randint(1, clients)
        seller = buyer if rng.random() < 0.01 else rng.randint(1, clients)
        taker: Side = "buy" if rng.random() < 0.5 else "sell"
        at = start + spacing * n
        rows.append(TradeRow(
            f"{instrument.symbol}-{seq}", instrument.symbol, seq, Decimal(ticks) * instrument.tick,
            Decimal(rng.randint(instrument.min_lots, lots_max)) * instrument.lot, taker,
            f"L{seq}-t", f"L{seq}-m", f"L{seq}-b", f"L{seq}-s", f"client-{buyer}", f"client-{seller}",
            at - (at - start) % MS,  # whole milliseconds, as the matcher's ts
        ))
    return rows


async def load(url: str, count: int, days: float, clients: int, seed: int, instruments_path: Path) -> None:
    await migrate(url)
    instruments = load_instruments(instruments_path)
    rng = random.Random(seed)
    end = now_ms()
    span = dt.timedelta(days=days)
    engine = create_async_engine(url)
    writer = Writer(engine)
    try:
        symbols = sorted(instruments)
        per = [count // len(symbols) + (1 if i < count % len(symbols) else 0) for i in range(len(symbols))]
        for symbol, n in zip(symbols, per, strict=True):
            async with engine.connect() as conn:
                last = (await conn.execute(text("SELECT coalesce(max(seq), 0) FROM trades WHERE instrument = :i"),
                                           {"i": symbol})).scalar_one()
            started = time.monotonic()
            rows = generate(rng, instruments[symbol], n, int(last) + 1, end - span, span, clients)
            generated = time.monotonic()
            for offset in range(0, len(rows), CHUNK):
                await writer.write(WriteSet(rows[offset:offset + CHUNK], [], []))
            print(f"{symbol}: {n:,} trades (generated in {generated - started:.1f} s, "
                  f"written in {time.monotonic() - generated:.1f} s)", flush=True)
        async with engine.begin() as conn:
            for table in ("trades", "candles_1m", "candles_1h", "client_positions_1h"):
                await conn.exec_driver_sql(f"ANALYZE {table}")
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trades", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=7.0, help="spread the trades over this many days before now")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", default=database_url(), help="default: DATABASE_URL")
    parser.add_argument("--instruments", type=Path, default=instruments_file(), help="default: INSTRUMENTS_FILE")
    args = parser.parse_args()
    if args.trades < 1 or args.days <= 0 or args.clients < 1:
        parser.error("--trades, --days and --clients must be positive")
    asyncio.run(load(args.database_url, args.trades, args.days, args.clients, args.seed, args.instruments))


if __name__ == "__main__":
    main()
