"""End-to-end latency under load: POST /orders -> trade on the trades stream, on the WebSocket, in PostgreSQL.

    .venv/bin/python -m scripts.probe_latency --duration 60 --rate 50 --json run/probe.json

Sends crossing pairs at --rate pairs per second (open loop: each pair leaves on schedule) while
something else (k6, see load-test/) provides the background load. A pair is a sell resting at
--price, far above the book, then a buy at the same price: the buy always trades as taker (with the
best ask, whoever placed it), so each buy's first trade is found by its `taker_order_id`:

- stream:    XREAD of trades:{INSTRUMENT} sees an entry with taker_order_id == the buy's order id;
- socket:    a WebSocket client subscribed to `trades` receives the trade (taker from taker_side);
- postgres:  the trade_id from the stream entry appears in the `trades` table (polled every
             --pg-poll-ms, so that figure carries up to that much polling delay).

Every latency runs from just before the buy's request is written to the socket, all on one
clock (perf_counter) in this process. Acceptance (POST -> 201) of every probe request is reported
too. Environment: REDIS_URL, REDIS_KEY_PREFIX, DATABASE_URL, INGEST_URL, BROADCASTER_URL, as the engine's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import uvloop
from websockets.asyncio.client import connect as ws_connect

from services.common.db import database_url
from services.common.env import redis_key_prefix, redis_url
from services.common.keys import instrument_keys
from services.common.redis_conn import connect as redis_connect

DECODER = msgspec.json.Decoder()


@dataclass
class Samples:
    """When each probe buy was sent, and when its first trade showed up on each path."""

    sent: dict[str, float] = field(default_factory=dict)  # buy order id -> perf_counter at send
    stream: dict[str, float] = field(default_factory=dict)
    socket: dict[str, float] = field(default_factory=dict)
    postgres: dict[str, float] = field(default_factory=dict)
    trade_of: dict[str, str] = field(default_factory=dict)  # trade id -> buy order id, awaiting PostgreSQL
    # Trades can arrive before the POST's answer is parsed: first sighting of every buy taker, matched at the end.
    socket_seen: dict[str, float] = field(default_factory=dict)
    accept_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    late_sends: int = 0


class HttpConnection:
    """One keep-alive HTTP/1.1 connection with a bare client (httpx costs ~3 ms per request)."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.url = urllib.parse.urlsplit(base_url)
        self.head = (f"POST /orders HTTP/1.1\r\nHost: {self.url.netloc}\r\nAuthorization: Bearer {api_key}\r\n"
                     "Content-Type: application/json\r\nContent-Length: ").encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post_order(self, body: bytes) -> tuple[int, bytes, float]:
        """(status, body, perf_counter just before the request was written)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.url.hostname, self.url.port or 80)
        assert self.reader is not None
        began = time.perf_counter()
        self.writer.write(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        answer = await self.reader.readexactly(length)
        parts = status_line.split()
        if len(parts) < 2:
            raise ConnectionError(f"no HTTP answer: {status_line!r}")
        return int(parts[1]), answer, began

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Probe:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.samples = Samples()
        self.keys = instrument_keys(args.prefix, args.instrument)
        self.stop = asyncio.Event()
        self.buyer = f"probe-{os.getpid()}-buy"

    def body(self, side: str, n: int) -> bytes:
        client = self.buyer if side == "buy" else f"probe-{os.getpid()}-sell"
        return msgspec.json.encode({"client_id": client, "instrument": self.args.instrument, "side": side,
                                    "type": "limit", "price": self.args.price, "quantity": self.args.quantity,
                                    "client_order_id": f"probe-{os.getpid()}-{side}-{n}"})

    async def send_pair(self, http: HttpConnection, n: int) -> None:
        for side in ("sell", "buy"):
            try:
                status, answer, began = await http.post_order(self.body(side, n))
            except (OSError, ConnectionError, asyncio.IncompleteReadError) as exc:
                key = type(exc).__name__
                self.samples.errors[key] = self.samples.errors.get(key, 0) + 1
                http.close()
                http.writer = None
                return
            self.samples.accept_ms.append((time.perf_counter() - began) * 1000)
            if status != 201:
                self.samples.errors[str(status)] = self.samples.errors.get(str(status), 0) + 1
                return
            if side == "buy":
                self.samples.sent[DECODER.decode(answer)["order_id"]] = began

    async def sender(self) -> None:
        """Open loop: pair n leaves at start + n / rate, on one of a few connections."""
        connections = [HttpConnection(self.args.ingest_url, self.args.api_key) for _ in range(self.args.connections)]
        idle: asyncio.Queue[HttpConnection] = asyncio.Queue()
        for conn in connections:
            idle.put_nowait(conn)
        tasks: set[asyncio.Task[None]] = set()
        began = time.perf_counter()
        total = int(self.args.rate * self.args.duration)
        for n in range(total):
            delay = began + n / self.args.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.005:
                self.samples.late_sends += 1
            conn = await idle.get()

            async def run(conn: HttpConnection = conn, n: int = n) -> None:
                try:
                    await self.send_pair(conn, n)
                finally:
                    idle.put_nowait(conn)

            task = asyncio.create_task(run())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
        for conn in connections:
            conn.close()

    async def stream_reader(self, ready: asyncio.Event) -> None:
        redis = redis_connect(self.args.redis_url)
        last = await redis.xrevrange(self.keys.trades, count=1)
        cursor: Any = last[0][0] if last else "0-0"
        buyer = self.buyer.encode()
        ready.set()
        try:
            while not self.stop.is_set():
                reply: Any = await redis.xread({self.keys.trades: cursor}, count=1000, block=200)
                now = time.perf_counter()
                for _, entries in reply:
                    for entry_id, fields in entries:
                        cursor = entry_id
                        if fields[b"buyer_client_id"] != buyer or fields[b"taker_side"] != b"buy":
                            continue
                        taker = fields[b"taker_order_id"].decode()
                        if taker not in self.samples.stream:
                            self.samples.stream[taker] = now
                            self.samples.trade_of[fields[b"trade_id"].decode()] = taker
        finally:
            await redis.aclose()

    async def socket_reader(self, ready: asyncio.Event) -> None:
        async with ws_connect(self.args.ws_url, max_size=None, ping_interval=None) as ws:
            await ws.send(json.dumps({"op": "subscribe", "channels": ["trades"],
                                      "instruments": [self.args.instrument]}))
            ready.set()
            while not self.stop.is_set():
                try:
                    frame = await asyncio.wait_for(ws.recv(), 0.5)
                except TimeoutError:
                    continue
                now = time.perf_counter()
                data = DECODER.decode(frame)
                for message in data if isinstance(data, list) else [data]:
                    if message.get("type") != "trade" or message["taker_side"] != "buy":
                        continue
                    self.samples.socket_seen.setdefault(message["buy_order_id"], now)

    async def postgres_poller(self) -> None:
        dsn = self.args.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        conn = await asyncpg.connect(dsn)
        try:
            while not self.stop.is_set():
                waiting = list(self.samples.trade_of)
                if waiting:
                    rows = await conn.fetch("SELECT trade_id FROM trades WHERE trade_id = ANY($1::text[])", waiting)
                    now = time.perf_counter()
                    for row in rows:
                        order = self.samples.trade_of.pop(row["trade_id"])
                        self.samples.postgres[order] = now
                await asyncio.sleep(self.args.pg_poll_ms / 1000)
        finally:
            await conn.close()

    def outstanding(self) -> bool:
        sent = self.samples.sent
        self.samples.socket = {o: self.samples.socket_seen[o] for o in sent if o in self.samples.socket_seen}
        return any(len(got) < len(sent) for got in (self.samples.stream, self.samples.socket, self.samples.postgres))

    async def run(self) -> dict[str, Any]:
        stream_ready, socket_ready = asyncio.Event(), asyncio.Event()
        readers = [asyncio.create_task(self.stream_reader(stream_ready)),
                   asyncio.create_task(self.socket_reader(socket_ready)),
                   asyncio.create_task(self.postgres_poller())]
        await asyncio.wait_for(asyncio.gather(stream_ready.wait(), socket_ready.wait()), 15)
        await asyncio.sleep(0.3)  # the socket's subscription settles before the first pair
        began = time.perf_counter()
        await self.sender()
        sent_for = time.perf_counter() - began
        for _ in range(int(self.args.drain / 0.05)):
            if not self.outstanding():
                break
            await asyncio.sleep(0.05)
        self.stop.set()
        await asyncio.gather(*readers, return_exceptions=True)
        return self.report(sent_for)

    def report(self, sent_for: float) -> dict[str, Any]:
        s = self.samples
        result: dict[str, Any] = {
            "pairs_per_s": self.args.rate, "duration_s": round(sent_for, 2), "buys_accepted": len(s.sent),
            "errors": s.errors, "late_sends": s.late_sends, "pg_poll_ms": self.args.pg_poll_ms,
            "accept_ms": summary(s.accept_ms),
        }
        self.outstanding()
        for name, seen in (("stream", s.stream), ("socket", s.socket), ("postgres", s.postgres)):
            values = [(seen[o] - s.sent[o]) * 1000 for o in seen if o in s.sent]
            result[name + "_ms"] = summary(values) | {"missing": len(s.sent) - len(seen)}
        return result


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    return {"count": len(ordered), "p50": round(percentile(ordered, 0.5), 2),
            "p99": round(percentile(ordered, 0.99), 2), "p999": round(percentile(ordered, 0.999), 2),
            "max": round(ordered[-1], 2)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=50, help="crossing pairs per second (default 50)")
    parser.add_argument("--duration", type=float, default=60, help="seconds of sending (default 60)")
    parser.add_argument("--drain", type=float, default=15, help="seconds to wait for the last trades (default 15)")
    parser.add_argument("--instrument", default="BTC-USD")
    parser.add_argument("--price", default="52500.00", help="the pairs' price, above the book (default 52500.00)")
    parser.add_argument("--quantity", default="0.001")
    parser.add_argument("--connections", type=int, default=8, help="HTTP keep-alive connections (default 8)")
    parser.add_argument("--pg-poll-ms", type=float, default=5, help="PostgreSQL polling interval (default 5)")
    parser.add_argument("--api-key", default=os.environ.get("BENCH_API_KEY", "demo-broker"))
    parser.add_argument("--ingest-url", default=os.environ.get("INGEST_URL", "http://127.0.0.1:3000"))
    parser.add_argument("--ws-url", default=os.environ.get("BROADCASTER_URL", "ws://127.0.0.1:3001/stream"))
    parser.add_argument("--redis-url", default=redis_url())
    parser.add_argument("--prefix", default=redis_key_prefix(), help="REDIS_KEY_PREFIX of the engine")
    parser.add_argument("--database-url", default=database_url())
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    result = uvloop.run(Probe(args).run())
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"probe: {result['buys_accepted']} crossing pairs at {args.rate:g}/s; errors {result['errors']}")
    for name in ("accept", "stream", "socket", "postgres"):
        figures = result[f"{name}_ms"]
        if figures.get("count"):
            print(f"  POST -> {name:<8} ms: p50 {figures['p50']:.1f}  p99 {figures['p99']:.1f}  "
                  f"p999 {figures['p999']:.1f}  max {figures['max']:.1f}  (n={figures['count']}"
                  + (f", missing {figures['missing']})" if "missing" in figures else ")"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
