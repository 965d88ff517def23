"""Catch-up time of the persister after a PostgreSQL outage, under a steady order flow.

A persister worker (the real `python -m services.persister`, default settings) reaches PostgreSQL
through a TCP proxy. Orders flow at --rate pairs/s through the real matcher; after --warmup seconds the
proxy is cut for --outage seconds, then restored while the flow continues. Reported: the backlog at the
moment the database returns and the time until the group has persisted and acknowledged everything.

    .venv/bin/python scripts/bench_outage.py [--rate 500] [--outage 10]
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
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy.engine import make_url

from services.common.db import database_url, drop_database, migrate, with_database
from services.common.env import redis_url
from services.common.groups import group_lag
from services.common.instruments import load_instruments
from services.common.keys import PERSISTER_GROUP, instrument_keys
from services.common.redis_conn import connect
from services.matcher.engine import InstrumentMatcher
from tests.persister.proxy import TcpProxy

REPO = Path(__file__).resolve().parents[1]


async def order_flow(prefix: str, rate: int, stop: asyncio.Event) -> None:
    """`rate` crossing pairs per second (one trade, four events each), matched as they arrive."""
    redis = connect(redis_url())
    instrument = load_instruments(REPO / "instruments.toml")["BTC-USD"]
    keys = instrument_keys(prefix, "BTC-USD")
    matcher = InstrumentMatcher(redis, instrument, keys, "bench", 500)
    await matcher.prepare()
    await matcher.take_lease()
    n, started = 0, time.monotonic()
    try:
        while not stop.is_set():
            due = int((time.monotonic() - started) * rate)
            async with redis.pipeline(transaction=False) as pipe:
                for i in range(n, due):
                    for side in ("sell", "buy"):
                        pipe.xadd(keys.orders, {
                            "cmd": "new", "order_id": f"o-{side}-{i}", "client_id": f"c-{i % 50}",
                            "client_order_id": "", "side": side, "type": "limit", "time_in_force": "GTC",
                            "post_only": "0", "price_ticks": "5000000", "quantity_lots": "1000000",
                            "created_at": str(int(time.time() * 1000))})
                await pipe.execute()
            n = due
            await matcher.drain()
            await asyncio.sleep(0.01)
    finally:
        await redis.aclose()


async def backlog(redis: object, prefix: str) -> int:
    keys = instrument_keys(prefix, "BTC-USD")
    total = 0
    for key in (keys.trades, keys.events):
        lag = await group_lag(redis, key, PERSISTER_GROUP)  # type: ignore[arg-type]
        total += 0 if lag is None else lag[0] + lag[1]
    return total


async def wait_for(measure: Callable[[], Awaitable[int]], done: Callable[[int], bool]) -> None:
    """Poll `measure` every 50 ms until `done` accepts its value."""
    while not done(await measure()):
        await asyncio.sleep(0.05)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=500, help="crossing pairs per second")
    parser.add_argument("--outage", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    args = parser.parse_args()
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    url = with_database(database_url(), f"bench_{uuid.uuid4().hex[:8]}")
    await migrate(url)
    target = make_url(url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    await proxy.start()
    proxied = make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    redis = connect(redis_url())
    stop = asyncio.Event()
    flow = asyncio.create_task(order_flow(prefix, args.rate, stop))
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "persister.log"
        env = {**os.environ, "REDIS_KEY_PREFIX": prefix, "DATABASE_URL": proxied, "PERSISTER_METRICS_PORT": "0",
               "PERSISTER_SNAPSHOT_INTERVAL_S": "0", "LOG_LEVEL": "WARNING"}
        with log.open("ab") as out:
            worker = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.persister", cwd=REPO,
                                                          env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            await asyncio.sleep(args.warmup)
            print(f"steady: backlog {await backlog(redis, prefix)} entries at {args.rate} trades/s")
            await proxy.cut()
            await asyncio.sleep(args.outage)
            waiting = await backlog(redis, prefix)
            await proxy.restore()
            restored = time.monotonic()
            # Caught up: within a fraction of a second of the live flow.
            await wait_for(lambda: backlog(redis, prefix), lambda left: left <= 2 * args.rate)
            caught_up = time.monotonic() - restored
            print(f"outage {args.outage:.0f} s: {waiting} entries waiting when PostgreSQL returned; "
                  f"caught up {caught_up:.2f} s later (flow continuing at {args.rate} trades/s)")
        finally:
            stop.set()
            await flow
            worker.send_signal(signal.SIGTERM)
            # Wait without blocking this loop: the proxy the worker talks through runs on it.
            await asyncio.wait_for(worker.wait(), 15)
            await proxy.close()
            found = [k async for k in redis.scan_iter(match=f"{prefix}*", count=1000)]
            if found:
                await redis.delete(*found)
            await redis.aclose()
            await drop_database(url)


if __name__ == "__main__":
    asyncio.run(main())
