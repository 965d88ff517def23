"""The cost of the longest candle answers: GET /analytics/BTC-USD/candles at 1,500 buckets of each interval
(1d: 1,500 days), on a throwaway database holding a fully populated history of 1-minute candles (one per
minute, ~2.16M rows).

    .venv/bin/python scripts/bench_candles.py populate [--days 1501]       # prints the database's URL
    .venv/bin/python scripts/bench_candles.py http --database-url URL [--requests 5] [--read-timeout-ms 60000]
    BENCH_TREE=/path/to/other/checkout .venv/bin/python scripts/bench_candles.py http --database-url URL
    .venv/bin/python scripts/bench_candles.py sql --database-url URL [--runs 3]
    .venv/bin/python scripts/bench_candles.py drop --database-url URL

`populate` migrates a new database to 0003, INSERTs the minute candles straight into candles_1m (no trades:
only the aggregates are read), then migrates to head, so candles_1h comes from the migration's backfill,
whose time it prints. `http` times the requests through an ingest app in-process (httpx over ASGI:
routing, the public-reads pool with its session settings, SQL, rendering), with READ_TIMEOUT_MS raised so
that a slow answer is timed rather than cut at 2 s; then 1d once at the default 2,000 ms, printing the
status. The app is the one of the checkout BENCH_TREE names (default this one), for before/after. `sql`
times the two 1d queries (from candles_1m, as before; from candles_1h) under the server's defaults, with
jit off, and with jit off and no parallel workers, alternated. Needs Redis only for the app's start.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, os.environ.get("BENCH_TREE") or str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import datetime as dt
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import httpx
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from services.analytics.time_buckets import DAY, MINUTE, ceil_to, floor_to, now_ms
from services.common.db import database_url, drop_database, migrate, with_database
from services.common.env import REPO_ROOT, instruments_file, redis_url
from services.common.instruments import load_instruments
from services.common.times import iso
from services.ingest.analytics_routes import INTERVALS
from services.ingest.app import create_app
from services.ingest.settings import IngestSettings

SYMBOL = "BTC-USD"
BUCKETS = 1500  # the most one answer holds: 1,500 days of 1d

# One candle per minute over the range: a slow random-ish walk around 50,000 with exact 2-decimal prices and
# 8-decimal volumes; open/close times and seqs inside the minute.
MINUTES = """
INSERT INTO candles_1m
SELECT :symbol, t, o, t + interval '1 second', n * 10, greatest(o, c) + 5, least(o, c) - 5, c,
       t + interval '59 seconds', n * 10 + 9, v, round(v * (o + c) / 2, 10), 10
FROM (
    SELECT t, n, round((50000 + 5000 * sin(n / 20000.0) + 100 * sin(n / 7.0))::numeric, 2) AS o,
           round((50000 + 5000 * sin((n + 1) / 20000.0) + 100 * sin((n + 1) / 7.0))::numeric, 2) AS c,
           round((0.5 + abs(sin(n / 13.0)))::numeric, 8) AS v
    FROM generate_series(:first, :last, interval '1 minute') WITH ORDINALITY AS g(t, n)
) AS minutes
"""


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


async def populate(days: int) -> None:
    url = with_database(database_url(), f"bench_candles_{uuid.uuid4().hex[:8]}")
    await migrate(url, revision="0003")
    end = floor_to(now_ms(), MINUTE)
    engine = create_async_engine(url)
    try:
        started = time.monotonic()
        async with engine.begin() as conn:
            await conn.execute(text(MINUTES), {"symbol": SYMBOL, "first": end - days * DAY, "last": end - MINUTE})
            rows = (await conn.execute(text("SELECT count(*) FROM candles_1m"))).scalar_one()
        print(f"candles_1m: {rows:,} rows over {days} days inserted in {time.monotonic() - started:.1f} s", flush=True)
        started = time.monotonic()
        await migrate(url)
        async with engine.begin() as conn:
            hours = (await conn.execute(text("SELECT count(*) FROM candles_1h"))).scalar_one()
            for table in ("candles_1m", "candles_1h"):
                await conn.exec_driver_sql(f"ANALYZE {table}")
        print(f"migration to head (candles_1h backfill): {hours:,} rows in {time.monotonic() - started:.1f} s "
              f"({_load()})", flush=True)
    finally:
        await engine.dispose()
    print(url)


def _summary(label: str, times: list[float], result: object) -> None:
    print(f"{label:<58} median {statistics.median(times):8.1f} ms  min {min(times):8.1f}  max {max(times):8.1f}"
          f"  (n={len(times)}, {result}, {_load()})", flush=True)


async def timed(label: str, runs: int, call: Callable[[], Awaitable[object]]) -> None:
    times = []
    result: object = None
    for _ in range(runs):
        started = time.perf_counter()
        result = await call()
        times.append((time.perf_counter() - started) * 1000)
    _summary(label, times, result)


def _settings(url: str, timeout_ms: int) -> IngestSettings:
    return IngestSettings(redis_url=redis_url(), key_prefix=f"bench-candles-{uuid.uuid4().hex[:8]}:",
                          instruments=load_instruments(instruments_file()),
                          api_keys_file=REPO_ROOT / "config" / "demo_api_keys.toml", database_url=url,
                          read_timeout_ms=timeout_ms)


async def http(url: str, requests: int, timeout_ms: int) -> None:
    print(f"app from {REPO_ROOT}; GET /analytics/{SYMBOL}/candles?interval=...&start=<1,500 buckets ago>")
    for label, limit, intervals, runs in (
            (f"READ_TIMEOUT_MS={timeout_ms}", timeout_ms, INTERVALS, requests),
            ("READ_TIMEOUT_MS=2000 (default)", 2000, {"1d": DAY}, 1)):
        app = create_app(_settings(url, limit))
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://ingest", timeout=600) as client:
            for name, interval in intervals.items():
                params = {"interval": name, "start": iso(now_ms() - BUCKETS * interval)}

                async def get(client: httpx.AsyncClient = client, params: dict[str, str] = params) -> str:
                    answer = await client.get(f"/analytics/{SYMBOL}/candles", params=params)
                    return f"{answer.status_code}, {len(answer.json()) if answer.status_code == 200 else '-'} candles"

                await get()  # a connection of the pool, the plan: as in a running service
                await timed(f"{name} over 1,500 buckets, {label}", runs, get)


async def sql(url: str, runs: int) -> None:
    from services.analytics import market

    end = now_ms()
    first = ceil_to(end - BUCKETS * DAY, DAY)
    stop = ceil_to(end, DAY)
    args = (SYMBOL, first, stop, dt.timedelta(days=1))
    parsed = make_url(url)
    dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    settings = {"server defaults": {}, "jit off": {"jit": "off"},
                "jit off, no parallel workers": {"jit": "off", "max_parallel_workers_per_gather": "0"}}
    queries = {"from candles_1m (before)": market.FROM_MINUTES, "from candles_1h (after)": market.FROM_HOURS}
    connections = {name: await asyncpg.connect(dsn, server_settings=s) for name, s in settings.items()}
    statements = {name: str(query).replace(":interval", "$4::interval").replace(":instrument", "$1")
                  .replace(":first", "$2").replace(":stop", "$3") for name, query in queries.items()}
    times: dict[tuple[str, str], list[float]] = {}
    try:
        for setting_name, conn in connections.items():
            for query_name, statement in statements.items():
                plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN (ANALYZE) {statement}", *args))
                jit = f"JIT: {plan.split('Total ')[1].split(' ms')[0]} ms" if "JIT:" in plan else "JIT: no"
                workers = plan.split("Workers Launched: ")[1].split()[0] if "Workers Launched" in plan else "0"
                print(f"{query_name}, {setting_name}: {jit}, parallel workers launched {workers}", flush=True)
        # Alternated, so the shared machine's other work falls on every combination alike.
        for _ in range(runs):
            for setting_name, conn in connections.items():
                for query_name, statement in statements.items():
                    started = time.perf_counter()
                    rows = await conn.fetch(statement, *args)
                    times.setdefault((query_name, setting_name), []).append((time.perf_counter() - started) * 1000)
        for (query_name, setting_name), measured in times.items():
            _summary(f"{query_name}, {setting_name}", measured, f"{len(rows)} rows")
    finally:
        for conn in connections.values():
            await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("populate")
    p.add_argument("--days", type=int, default=BUCKETS + 1)
    for name in ("http", "sql", "drop"):
        p = sub.add_parser(name)
        p.add_argument("--database-url", required=True)
        p.add_argument("--requests", type=int, default=5)
        p.add_argument("--runs", type=int, default=3)
        p.add_argument("--read-timeout-ms", type=int, default=60_000)
    args = parser.parse_args()
    if args.command == "populate":
        asyncio.run(populate(args.days))
    elif args.command == "http":
        asyncio.run(http(args.database_url, args.requests, args.read_timeout_ms))
    elif args.command == "sql":
        asyncio.run(sql(args.database_url, args.runs))
    else:
        asyncio.run(drop_database(args.database_url))


if __name__ == "__main__":
    main()
