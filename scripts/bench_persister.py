"""Persisted trades/s with 1, 2 and 4 persister workers, in one run on this machine.

Fills a private set of streams once (crossing orders through the real matcher), then for each worker
count: a fresh database, the persister group reset to 0, N `python -m services.persister` processes,
and the time from the first row persisted to the last. Needs Redis and PostgreSQL (REDIS_URL,
DATABASE_URL's server); cleans up its keys and databases.

    .venv/bin/python scripts/bench_persister.py [--trades 20000] [--workers 1,2,4] [--batch 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from services.common.db import create_database, database_url, drop_database, migrate, with_database
from services.common.env import redis_url
from services.common.instruments import load_instruments
from services.common.keys import PERSISTER_GROUP, instrument_keys
from services.common.redis_conn import connect
from services.matcher.engine import InstrumentMatcher

REPO = Path(__file__).resolve().parents[1]
INSTRUMENTS = REPO / "instruments.toml"


async def fill_streams(prefix: str, trades: int) -> tuple[int, int]:
    """Pairs of a resting sell and a buy that fills it: one trade and four events per pair."""
    redis = connect(redis_url())
    instrument = load_instruments(INSTRUMENTS)["BTC-USD"]
    keys = instrument_keys(prefix, "BTC-USD")
    matcher = InstrumentMatcher(redis, instrument, keys, "bench", 500)
    await matcher.prepare()
    await matcher.take_lease()
    now = str(int(time.time() * 1000))
    for start in range(0, trades, 1000):
        async with redis.pipeline(transaction=False) as pipe:
            for n in range(start, min(trades, start + 1000)):
                price = str(5_000_000 + n % 500)
                for side in ("sell", "buy"):
                    pipe.xadd(keys.orders, {
                        "cmd": "new", "order_id": f"o-{side}-{n}", "client_id": f"c-{n % 50}",
                        "client_order_id": "", "side": side, "type": "limit", "time_in_force": "GTC",
                        "post_only": "0", "price_ticks": price, "quantity_lots": "1000000", "created_at": now})
            await pipe.execute()
        await matcher.drain()
    result = int(await redis.xlen(keys.trades)), int(await redis.xlen(keys.events))
    await redis.aclose()
    return result


async def run_workers(prefix: str, url: str, n: int, batch: int, instruments_file: Path, want: int,
                      log: Path) -> float:
    engine = create_async_engine(url)
    env = {**os.environ, "REDIS_KEY_PREFIX": prefix, "DATABASE_URL": url, "INSTRUMENTS_FILE": str(instruments_file),
           "PERSISTER_BATCH": str(batch)}
    with log.open("ab") as out:
        procs = [await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.persister", cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            env={**env, "PERSISTER_CONSUMER": f"bench-{i}", "PERSISTER_METRICS_PORT": "0"}) for i in range(n)]
    first = last = 0.0
    try:
        while True:
            async with engine.connect() as conn:
                done = (await conn.execute(text(
                    "SELECT (SELECT count(*) FROM trades) + (SELECT count(*) FROM order_events)"))).scalar_one()
            now = time.monotonic()
            if done and not first:
                first = now
            if done >= want:
                last = now
                break
            if any(p.returncode is not None for p in procs):
                raise RuntimeError(f"a worker exited; see {log}")
            await asyncio.sleep(0.02)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            await asyncio.wait_for(p.wait(), 10)
        await engine.dispose()
    return last - first


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trades", type=int, default=20000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    base = with_database(database_url(), f"bench_{uuid.uuid4().hex[:8]}")
    redis = connect(redis_url())
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "workers.log"
        try:
            trades, events = await fill_streams(prefix, args.trades)
            print(f"streams: {trades} trades, {events} events ({trades + events} rows to persist)")
            await migrate(base)
            for n in (int(x) for x in args.workers.split(",")):
                url = with_database(base, f"{base.rsplit('/', 1)[1]}_{n}")
                await create_database(url, template=base)
                keys = instrument_keys(prefix, "BTC-USD")
                for key in (keys.trades, keys.events):
                    await redis.xgroup_destroy(key, PERSISTER_GROUP)
                try:
                    seconds = await run_workers(prefix, url, n, args.batch, INSTRUMENTS, trades + events, log)
                finally:
                    await drop_database(url)
                print(f"{n} worker(s): {trades / seconds:,.0f} trades/s, {(trades + events) / seconds:,.0f} rows/s "
                      f"({seconds:.2f} s)", flush=True)
        finally:
            await drop_database(base)
            keys_left = [k async for k in redis.scan_iter(match=f"{prefix}*", count=1000)]
            if keys_left:
                await redis.delete(*keys_left)
            await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
