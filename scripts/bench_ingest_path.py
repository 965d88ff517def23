"""Ingest's own CPU per order on the hot path, in-process: the ASGI app's POST /orders and POST /orders/batch.

    .venv/bin/python scripts/bench_ingest_path.py [--requests 20000] [--batches 400] [--concurrency 32]
    BENCH_TREE=/path/to/other/checkout .venv/bin/python scripts/bench_ingest_path.py    # its code, for A/B

Drives the app as uvicorn would (scope, receive, send; no HTTP client, no sockets to the app) against the
machine's Redis (REDIS_URL, default 127.0.0.1:6379) under a key prefix of its own, deleted afterwards. No
matcher runs: nothing but ingest's path is measured. The flow is load-test/lib.js's: one idempotency key per
order, 10% market orders, 500 client ids, the broker's demo key. Each phase prints the process's CPU time
(time.process_time) per order, with the statuses it got; bodies are built before the clock starts.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

TREE = Path(os.environ.get("BENCH_TREE") or Path(__file__).resolve().parents[1]).resolve()
sys.path.insert(0, str(TREE))

import uvloop  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from services.ingest.app import create_app, serving_app  # noqa: E402
from services.ingest.settings import IngestSettings  # noqa: E402

HEADERS = [(b"host", b"bench"), (b"content-type", b"application/json"), (b"authorization", b"Bearer demo-broker")]


def order_body(run: str, n: int) -> dict[str, Any]:
    """Order n of the flow: a limit buy or sell near 50,000 (every tenth a market order), with its own key."""
    body: dict[str, Any] = {"client_id": f"bench-{n % 500}", "instrument": "BTC-USD",
                            "side": "buy" if n % 2 else "sell", "quantity": f"0.{1 + n % 9:08d}",
                            "idempotency_key": f"bench-{run}-{n}"}
    if n % 10 == 9:
        body["type"] = "market"
    else:
        body["type"] = "limit"
        body["price"] = f"{49_000 + n % 2_000}.{n % 100:02d}"
    return body


async def call(app: Any, path: str, body: bytes) -> tuple[int, bytes]:
    """One POST through the ASGI app; its status and body."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [*HEADERS, (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 3000)}
    sent = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        else:
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


async def drive(app: Any, path: str, bodies: list[bytes], concurrency: int) -> list[tuple[int, bytes]]:
    """POST every body, `concurrency` requests in flight."""
    answers: list[tuple[int, bytes]] = [(0, b"")] * len(bodies)
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < len(bodies):
            index = next_index
            next_index += 1
            answers[index] = await call(app, path, bodies[index])

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers


async def phase(app: Any, name: str, path: str, bodies: list[bytes], per_body: int, concurrency: int,
                chunks: int, statuses_of: Any) -> dict[str, Any]:
    """Send `bodies` in `chunks` runs, each timed on its own: on a shared machine the least disturbed run
    (the minimum) says most about the code, the median about the usual case."""
    statuses: Counter[int] = Counter()
    figures: list[float] = []
    wall = 0.0
    size = -(-len(bodies) // chunks)
    for at in range(0, len(bodies), size):
        part = bodies[at:at + size]
        started_cpu, started = time.process_time(), time.perf_counter()
        answers = await drive(app, path, part, concurrency)
        cpu = time.process_time() - started_cpu
        wall += time.perf_counter() - started
        figures.append(round(cpu * 1e6 / (len(part) * per_body), 1))
        for status, body in answers:
            statuses.update(statuses_of(status, body))
    orders = len(bodies) * per_body
    return {"phase": name, "orders": orders, "cpu_us_per_order_min": min(figures),
            "cpu_us_per_order_median": statistics.median(figures), "cpu_us_per_order_runs": figures,
            "orders_per_s": round(orders / wall), "statuses": dict(sorted(statuses.items()))}


def batch_statuses(status: int, body: bytes) -> list[int]:
    if status != 200:
        return [status]
    return [result["status"] for result in json.loads(body)["results"]]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="single POST /orders")
    parser.add_argument("--batches", type=int, default=400, help="POST /orders/batch requests")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument("--warmup", type=int, default=1_000, help="single orders before the clock starts")
    parser.add_argument("--chunks", type=int, default=5, help="timed runs per phase (min and median reported)")
    args = parser.parse_args()

    run = uuid.uuid4().hex[:8]
    prefix = f"bench-ingest-{run}:"
    settings = dataclasses.replace(
        IngestSettings.from_env(), key_prefix=prefix, log_activity_s=0.0, log_orders=False,
        # No matcher runs: the orders stream only grows, so backpressure would refuse orders; and the API
        # key's bucket (10,000/s) is slower than this loop. Both stay in the path, never refusing.
        max_matcher_lag=10**12, api_key_rate_limit_per_sec=10**9, api_key_rate_limit_burst=10**9)
    app = create_app(settings)
    served = serving_app(app)
    singles = [json.dumps(order_body(run, n)).encode() for n in range(args.warmup + args.requests)]
    base = len(singles)
    batches = [json.dumps({"orders": [order_body(run, base + b * args.batch_size + i)
                                      for i in range(args.batch_size)]}).encode() for b in range(args.batches)]
    redis = Redis.from_url(settings.redis_url)
    try:
        async with app.router.lifespan_context(app):
            await drive(served, "/orders", singles[: args.warmup], args.concurrency)
            results = [
                await phase(served, "POST /orders", "/orders", singles[args.warmup:], 1, args.concurrency,
                            args.chunks, lambda status, body: [status]),
                await phase(served, f"POST /orders/batch ({args.batch_size})", "/orders/batch", batches,
                            args.batch_size, max(1, args.concurrency // 8), args.chunks, batch_statuses),
            ]
    finally:
        deleted = 0
        keys: list[bytes] = []
        async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
            keys.append(key)
        for at in range(0, len(keys), 1000):
            deleted += await redis.delete(*keys[at:at + 1000])
        await redis.aclose()
    code = str(Path(sys.modules[create_app.__module__].__file__ or "").parents[2])  # the checkout measured
    for result in results:
        print(json.dumps({"code": code, **result}))
    print(json.dumps({"code": code, "deleted_keys": deleted}))


if __name__ == "__main__":
    uvloop.run(main())  # as ingest runs (services/common/runner.py)
