"""p50/p99 latency of the analytics endpoints (ticker, a 24 h 1-minute candle query, positions) on a database
holding many trades, next to the same answers computed from scratch over `trades`.

    .venv/bin/python scripts/load_trades.py --trades 1000000 --database-url $URL
    .venv/bin/python scripts/bench_analytics.py --database-url $URL [--requests 200]

Requests go through the ingest app in-process (httpx over ASGI: routing, auth, SQL, rendering; no network).
Needs Redis only for the app's start (REDIS_URL); uses a key prefix of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from sqlalchemy import text

from services.analytics import from_trades
from services.analytics.time_buckets import DAY, MINUTE, ceil_to, now_ms
from services.common.db import database_url, make_engine
from services.common.env import REPO_ROOT, instruments_file, redis_url
from services.common.instruments import load_instruments
from services.ingest.app import create_app
from services.ingest.settings import IngestSettings

BROKER = {"Authorization": "Bearer demo-broker"}


async def measure(label: str, requests: int, call: Callable[[], Awaitable[object]]) -> None:
    for _ in range(min(10, requests)):  # warm the pool, the plans and the page cache
        await call()
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(f"{label:<44} p50 {statistics.median(times):8.2f} ms   p99 {p99:8.2f} ms   (n={requests})", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=database_url(), help="default: DATABASE_URL")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--client", default="client-1", help="whose positions to read")
    parser.add_argument("--scratch-requests", type=int, default=20, help="runs of each from-scratch query")
    args = parser.parse_args()
    instruments = load_instruments(instruments_file())
    symbol = sorted(instruments)[0]
    settings = IngestSettings(redis_url=redis_url(), key_prefix=f"bench-analytics-{uuid.uuid4().hex[:8]}:",
                              instruments=instruments, api_keys_file=REPO_ROOT / "config" / "demo_api_keys.toml",
                              database_url=args.database_url)
    db = make_engine(args.database_url)
    async with db.connect() as conn:
        count = (await conn.execute(text("SELECT count(*) FROM trades"))).scalar_one()
        end = now_ms()
        in_day = (await conn.execute(text("SELECT count(*) FROM trades WHERE instrument = :s AND executed_at >= :t"),
                                     {"s": symbol, "t": end - DAY})).scalar_one()
        mine = (await conn.execute(text("SELECT count(*) FROM trades WHERE buyer_client_id = :c "
                                        "OR seller_client_id = :c"), {"c": args.client})).scalar_one()
    print(f"{count:,} trades; {in_day:,} of {symbol} in the last 24 h; {mine:,} of {args.client}")

    app = create_app(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://ingest") as client:

        async def get(path: str, **kwargs: object) -> None:
            answer = await client.get(path, **kwargs)  # type: ignore[arg-type]
            answer.raise_for_status()

        await measure(f"GET /analytics/{symbol}/ticker", args.requests,
                      lambda: get(f"/analytics/{symbol}/ticker"))
        await measure(f"GET /analytics/{symbol}/candles 1m, 24 h", args.requests,
                      lambda: get(f"/analytics/{symbol}/candles", params={"interval": "1m"}))
        await measure(f"GET /clients/{args.client}/positions", args.requests,
                      lambda: get(f"/clients/{args.client}/positions", headers=BROKER))

    async def scratch(query: Callable[..., Awaitable[object]], *params: object) -> None:
        async with db.connect() as conn:
            await query(conn, *params)

    n = args.scratch_requests
    end = now_ms()
    first = ceil_to(end - DAY, MINUTE)
    await measure("from scratch over trades: ticker", n,
                  lambda: scratch(from_trades.window_stats, symbol, end - DAY, end))
    await measure("from scratch over trades: candles 1m, 24 h", n,
                  lambda: scratch(from_trades.candles, symbol, first, ceil_to(end, MINUTE), MINUTE))
    await measure("from scratch over trades: positions", n,
                  lambda: scratch(from_trades.client_positions, args.client, end))
    await db.dispose()


if __name__ == "__main__":
    asyncio.run(main())
