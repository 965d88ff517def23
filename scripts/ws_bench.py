"""WebSocket fan-out under order flow: messages/s delivered to N clients, and order → trade-on-socket latency.

    .venv/bin/python -m scripts.ws_bench --spawn                      # own ingest+matcher+broadcaster
    .venv/bin/python -m scripts.ws_bench --clients 100 --rate 1000    # against a running engine
    .venv/bin/python -m scripts.ws_bench --spawn --mode xadd          # no ingest: XADD to the orders stream

N clients subscribe to trades and orderbook_deltas of one instrument. Orders alternate buy and sell
at one price, so about every second order trades. Latency runs from just before an order is sent
(the POST in `post` mode, the XADD in `xadd` mode) to the arrival of its trade (as taker) on each
socket: one sample per client and trade, so fan-out delay counts. --spawn starts the services under
a fresh REDIS_KEY_PREFIX on free ports (no rate limit), leaving any running engine alone.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec
import uvloop
from websockets.asyncio.client import ClientConnection, connect

from services.common.env import REPO_ROOT, instruments_file, redis_url
from services.common.instruments import Instrument, load_instruments
from services.common.keys import instrument_keys
from services.common.redis_conn import connect as redis_connect
from services.common.wire import NewOrderCommand

DECODER = msgspec.json.Decoder()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def spawned(mode: str, prefix: str, log_dir: Path) -> Iterator[tuple[str, str, dict[str, int]]]:
    """Start matcher, broadcaster and (post mode) ingest; yield (ingest url, ws url, pids)."""
    ingest_port, ws_port = free_port(), free_port()
    env = {**os.environ, "REDIS_KEY_PREFIX": prefix, "INGEST_PORT": str(ingest_port),
           "BROADCASTER_PORT": str(ws_port), "MATCHER_METRICS_PORT": str(free_port()), "RATE_LIMIT_PER_SEC": "0",
           "LOG_LEVEL": "WARNING"}
    names = ["matcher", "broadcaster"] + (["ingest"] if mode == "post" else [])
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in names:
            with (log_dir / f"ws_bench_{name}.log").open("wb") as log:
                processes[name] = subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=env,
                                                   cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        for url in [f"http://127.0.0.1:{ws_port}/readyz"] + ([f"http://127.0.0.1:{ingest_port}/readyz"]
                                                              if mode == "post" else []):
            wait_ready(url, processes)
        yield (f"http://127.0.0.1:{ingest_port}", f"ws://127.0.0.1:{ws_port}/stream",
               {name: p.pid for name, p in processes.items()})
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def wait_ready(url: str, processes: dict[str, subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for name, process in processes.items():
            if process.poll() is not None:
                raise SystemExit(f"{name} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} not ready after 20 s")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class WsClient:
    """One subscriber: counts messages and frames, notes when each trade (by taker order id) arrived."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages = 0
        self.frames = 0
        self.last_trade_seq = 0
        self.arrivals: list[tuple[str, float, float, str]] = []  # taker, perf_counter, wall clock, executed_at
        self.done = asyncio.Event()
        self.target_seq = -1

    async def run(self) -> None:
        async for frame in self.ws:
            now, wall = time.perf_counter(), time.time()
            data = DECODER.decode(frame)
            batch = data if isinstance(data, list) else [data]
            self.frames += 1
            self.messages += len(batch)
            for message in batch:
                if message["type"] == "trade":
                    taker = message["buy_order_id"] if message["taker_side"] == "buy" else message["sell_order_id"]
                    self.arrivals.append((taker, now, wall, message["executed_at"]))
                    self.last_trade_seq = message["seq"]
            if self.last_trade_seq >= self.target_seq >= 0:
                self.done.set()


async def open_clients(url: str, count: int, instrument: str) -> list[WsClient]:
    clients = []
    for _ in range(count):
        ws = await connect(url, max_size=None, ping_interval=None)
        await ws.send(json.dumps({"op": "subscribe", "channels": ["trades", "orderbook_deltas"],
                                  "instruments": [instrument]}))
        clients.append(WsClient(ws))
    for client in clients:  # subscribed + snapshot: not counted
        for _ in range(2):
            await client.ws.recv()
    return clients


def client_process(url: str, count: int, instrument: str, conn: Connection) -> None:
    """A child process running `count` clients, so decoding their frames does not slow the order sender."""
    uvloop.run(client_group(url, count, instrument, conn))


async def client_group(url: str, count: int, instrument: str, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    clients = await open_clients(url, count, instrument)
    readers = [asyncio.create_task(c.run()) for c in clients]
    began = cpu_seconds(os.getpid())
    conn.send("ready")
    final_seq: int = await loop.run_in_executor(None, conn.recv)
    for client in clients:
        client.target_seq = final_seq
        if client.last_trade_seq >= final_seq:
            client.done.set()
    try:
        await asyncio.wait_for(asyncio.gather(*(c.done.wait() for c in clients)), 60)
    except TimeoutError:
        print("warning: not every client received every trade within 60 s", file=sys.stderr)
    for task in readers:
        task.cancel()
    conn.send((sum(c.messages for c in clients), sum(c.frames for c in clients),
               [a for c in clients for a in c.arrivals], cpu_seconds(os.getpid()) - began))
    for client in clients:
        await client.ws.close()


class Flow:
    """Alternating buys and sells at one price; sent_at[order_id] = when the order left the script."""

    def __init__(self, instrument: Instrument, quantity: str) -> None:
        self.instrument = instrument
        self.ticks = instrument.price_ticks(Decimal(100))
        self.price = instrument.price_text(self.ticks)
        self.quantity = quantity
        self.sent_at: dict[str, float] = {}
        self.request_seconds: list[float] = []
        self.errors = 0

    def body(self, n: int) -> bytes:
        return msgspec.json.encode({
            "client_id": f"bench-{n % 100}", "instrument": self.instrument.symbol,
            "side": "buy" if n % 2 else "sell", "type": "limit", "price": self.price, "quantity": self.quantity})

    def command(self, n: int, prefix: str) -> dict[str, str]:
        order_id = f"{prefix}{n}"
        self.sent_at[order_id] = time.perf_counter()
        command = NewOrderCommand(
            order_id=order_id, client_id=f"bench-{n % 100}", client_order_id="", side="buy" if n % 2 else "sell",
            type="limit", time_in_force="GTC", post_only="0", price_ticks=str(self.ticks),
            quantity_lots=str(self.instrument.quantity_lots(Decimal(self.quantity))), created_at="0")
        fields: dict[str, str] = msgspec.to_builtins(command)
        return fields


async def drive(args: argparse.Namespace, flow: Flow, ingest_url: str, prefix: str) -> float:
    """Send args.orders orders at args.rate per second (open loop, ticks of 10 ms); returns the seconds taken."""
    began = time.perf_counter()
    tick = 0.01
    counter = itertools.count()
    if args.mode == "post":
        jobs: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
        workers = [asyncio.create_task(post_worker(ingest_url, args.api_key, flow, jobs))
                   for _ in range(args.concurrency)]
        sent = 0
        while sent < args.orders:
            now = time.perf_counter()
            due = min(args.orders, int((now - began) * args.rate) + 1)
            for _ in range(due - sent):
                jobs.put_nowait((next(counter), now))  # latency counts from when the order was due
            sent = due
            await asyncio.sleep(tick)
        for _ in workers:
            jobs.put_nowait(None)
        await asyncio.gather(*workers)
    else:
        redis = redis_connect(redis_url())
        stream = instrument_keys(prefix, flow.instrument.symbol).orders
        sent = 0
        order_prefix = f"wsb-{uuid.uuid4().hex[:6]}-"
        while sent < args.orders:
            due = min(args.orders, int((time.perf_counter() - began) * args.rate) + 1)
            async with redis.pipeline(transaction=False) as pipe:
                for _ in range(due - sent):
                    pipe.xadd(stream, flow.command(next(counter), order_prefix))  # type: ignore[arg-type]
                await pipe.execute()
            sent = due
            await asyncio.sleep(tick)
        await redis.aclose()
    return time.perf_counter() - began


async def post_worker(ingest_url: str, api_key: str, flow: Flow, jobs: asyncio.Queue[tuple[int, float] | None]) -> None:
    """POST /orders over one keep-alive HTTP/1.1 connection (a bare client: httpx costs ~3 ms per request)."""
    url = urllib.parse.urlsplit(ingest_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port or 80)
    head = (f"POST /orders HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {api_key}\r\n"
            "Content-Type: application/json\r\nContent-Length: ").encode()
    try:
        while (job := await jobs.get()) is not None:
            n, due = job
            body = flow.body(n)
            writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            answer = await reader.readexactly(length)
            flow.request_seconds.append(time.perf_counter() - due)
            if status_line.split()[1] != b"201":
                flow.errors += 1
                continue
            flow.sent_at[DECODER.decode(answer)["order_id"]] = due
    finally:
        writer.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench(args: argparse.Namespace, ingest_url: str, ws_url: str, prefix: str,
                pids: dict[str, int]) -> None:
    instrument = load_instruments(instruments_file())[args.instrument]
    redis = redis_connect(redis_url())
    meta = instrument_keys(prefix, instrument.symbol).meta
    start_seq = int(await redis.hget(meta, "trade_seq") or 0)
    loop = asyncio.get_running_loop()
    context = multiprocessing.get_context("spawn")
    groups = []
    for n in range(args.client_procs):
        parent_end, child_end = context.Pipe()
        count = args.clients // args.client_procs + (n < args.clients % args.client_procs)
        process = context.Process(target=client_process, args=(ws_url, count, instrument.symbol, child_end))
        process.start()
        groups.append((process, parent_end))
    for _, conn in groups:
        assert await loop.run_in_executor(None, conn.recv) == "ready"
    flow = Flow(instrument, args.quantity)
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    own_cpu = cpu_seconds(os.getpid())
    began = time.perf_counter()
    send_seconds = await drive(args, flow, ingest_url, prefix)
    await asyncio.sleep(0.2)  # let the matcher finish the last commands
    final_seq = int(await redis.hget(meta, "trade_seq") or 0)
    for _, conn in groups:
        conn.send(final_seq)
    results = [await loop.run_in_executor(None, conn.recv) for _, conn in groups]
    elapsed = time.perf_counter() - began
    cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    for process, _ in groups:
        process.join(10)
    await redis.aclose()

    arrivals = [a for r in results for a in r[2]]
    latencies = [(a[1] - flow.sent_at[a[0]]) * 1000 for a in arrivals if a[0] in flow.sent_at]
    executed = {text: datetime.fromisoformat(text).timestamp() for text in {a[3] for a in arrivals}}
    hop = [(a[2] - executed[a[3]]) * 1000 for a in arrivals]
    messages = sum(r[0] for r in results)
    frames = sum(r[1] for r in results)
    print(f"mode={args.mode} clients={args.clients} in {args.client_procs} processes orders={args.orders} "
          f"target_rate={args.rate}/s achieved={args.orders / send_seconds:.0f} orders/s "
          f"trades={final_seq - start_seq} errors={flow.errors}")
    print(f"delivered {messages} messages in {frames} frames over {elapsed:.2f} s: "
          f"{messages / elapsed:,.0f} messages/s ({messages / max(frames, 1):.1f} per frame)")
    if latencies:
        label = "POST" if args.mode == "post" else "XADD"
        print(f"{label} -> trade on socket, ms ({len(latencies)} samples): p50 {percentile(latencies, 0.5):.1f}  "
              f"p90 {percentile(latencies, 0.9):.1f}  p99 {percentile(latencies, 0.99):.1f}  "
              f"max {max(latencies):.1f}")
        print(f"matcher (trade executed_at, ms resolution) -> socket, ms: p50 {percentile(hop, 0.5):.1f}  "
              f"p90 {percentile(hop, 0.9):.1f}  p99 {percentile(hop, 0.99):.1f}  max {max(hop):.1f}")
    if flow.request_seconds:
        ms = [s * 1000 for s in flow.request_seconds]
        print(f"HTTP POST /orders from when due, ms: p50 {statistics.median(ms):.1f}  p99 {percentile(ms, 0.99):.1f}")
    cpu["bench sender"] = cpu_seconds(os.getpid()) - own_cpu
    cpu["bench clients"] = sum(r[3] for r in results)
    print("CPU seconds: " + ", ".join(f"{name} {seconds:.1f} ({seconds / elapsed:.0%})"
                                      for name, seconds in cpu.items()))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=1000, help="orders per second sent")
    parser.add_argument("--mode", choices=["post", "xadd"], default="post")
    parser.add_argument("--spawn", action="store_true", help="start the services under a fresh key prefix")
    parser.add_argument("--concurrency", type=int, default=128, help="HTTP connections (post mode)")
    parser.add_argument("--client-procs", type=int, default=2, help="processes the clients are spread over")
    parser.add_argument("--instrument", default="BTC-USD")
    parser.add_argument("--quantity", default="0.01")
    parser.add_argument("--api-key", default=os.environ.get("BENCH_API_KEY", "demo-broker"))
    parser.add_argument("--ingest-url", default=os.environ.get("INGEST_URL", "http://127.0.0.1:3000"))
    parser.add_argument("--ws-url", default=os.environ.get("BROADCASTER_URL", "ws://127.0.0.1:3001/stream"))
    parser.add_argument("--log-dir", type=Path, default=REPO_ROOT / "run")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.spawn:
        prefix = f"wsbench-{uuid.uuid4().hex[:8]}:"
        args.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            with spawned(args.mode, prefix, args.log_dir) as (ingest_url, ws_url, pids):
                uvloop.run(bench(args, ingest_url, ws_url, prefix, pids))
        finally:
            uvloop.run(clean(prefix))
    else:
        uvloop.run(bench(args, args.ingest_url, args.ws_url, os.environ.get("REDIS_KEY_PREFIX", ""), {}))


async def clean(prefix: str) -> None:
    redis = redis_connect(redis_url())
    keys: list[Any] = [key async for key in redis.scan_iter(match=f"{prefix}*", count=1000)]
    for start in range(0, len(keys), 500):
        await redis.delete(*keys[start:start + 500])
    await redis.aclose()


if __name__ == "__main__":
    main()
