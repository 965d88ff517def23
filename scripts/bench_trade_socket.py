"""Latency of one place: POST /orders (HTTP/1.1 keep-alive) against `place` on the order-entry socket.

    .venv/bin/python -m scripts.bench_trade_socket --orders 2000 --rounds 3

One client, one request at a time (closed loop: this is the latency of an idle engine, not under load), the
two transports alternated round by round so that a noisy machine hurts both alike; each round places --orders
resting buys (far below any price, so nothing matches) with the broker key. Reports the median, p90 and p99
round trip in µs per transport, and then the same with --concurrency requests in flight (orders/s). With
--pid (the ingest process), also ingest's CPU per place in each mode, from /proc.
Environment: INGEST_URL (http://127.0.0.1:3000), TRADE_KEY (demo-broker).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

_ids = itertools.count()


def order() -> dict[str, str]:
    return {"client_id": "bench-ws", "instrument": "BTC-USD", "side": "buy", "type": "limit", "price": "1.00",
            "quantity": "0.001", "client_order_id": f"b{next(_ids)}-{time.time_ns()}"}


class Http:
    """HTTP/1.1 keep-alive connections written and read by hand: a client's own cost kept near the socket's
    (httpx spends about a millisecond of Python per request, more than the server does)."""

    def __init__(self, host: str, port: int, authorization: str) -> None:
        self.host, self.port, self.authorization = host, port, authorization
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened: list[asyncio.StreamWriter] = []

    async def place(self) -> None:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self.opened.append(writer)
        body = json.dumps(order()).encode()
        writer.write(b"POST /orders HTTP/1.1\r\nHost: %b\r\nAuthorization: %b\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%b" % (self.host.encode(), self.authorization.encode(), len(body),
                                                         body))
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        await reader.readexactly(length)
        assert status == 201, head
        self.idle.append((reader, writer))

    async def close(self) -> None:
        for writer in self.opened:
            writer.close()


class Socket:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.waiting: dict[str, asyncio.Future[int]] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for frame in self.ws:
            reply = json.loads(frame)
            self.waiting.pop(reply["id"]).set_result(reply["status"])

    async def place(self) -> None:
        request_id = str(next(_ids))
        future = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = future
        await self.ws.send(json.dumps({"id": request_id, "op": "place", "order": order()}))
        status = await future
        assert status == 201, status


def cpu_s(pid: int | None) -> float:
    """The process's user + system CPU seconds so far (0 without a pid)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def timed(place: Callable[[], Awaitable[None]], count: int) -> list[float]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        await place()
        out.append((time.perf_counter() - started) * 1e6)
    return out


async def throughput(place: Callable[[], Awaitable[None]], count: int, concurrency: int) -> float:
    started = time.perf_counter()

    async def worker() -> None:
        for _ in range(count // concurrency):
            await place()

    await asyncio.gather(*[worker() for _ in range(concurrency)])
    return (count // concurrency * concurrency) / (time.perf_counter() - started)


def summary(name: str, samples: list[float]) -> str:
    samples = sorted(samples)

    def pick(q: float) -> float:
        return samples[min(len(samples) - 1, int(q * len(samples)))]
    return (f"{name:>6}: median {statistics.median(samples):7.0f} µs  p90 {pick(0.9):7.0f} µs  "
            f"p99 {pick(0.99):7.0f} µs  ({len(samples)} places)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--pid", type=int, help="the ingest process, for its CPU per place")
    args = parser.parse_args()
    base = os.environ.get("INGEST_URL", "http://127.0.0.1:3000")
    key = os.environ.get("TRADE_KEY", "demo-broker")
    headers = {"Authorization": f"Bearer {key}"}
    url = urllib.parse.urlsplit(base)
    http = Http(url.hostname or "127.0.0.1", url.port or 80, headers["Authorization"])
    async with connect(base.replace("http", "ws", 1) + "/trade", additional_headers=headers) as ws:
        await ws.recv()  # authenticated
        socket = Socket(ws)
        lat: dict[str, list[float]] = {"http": [], "socket": []}
        rate: dict[str, list[float]] = {"http": [], "socket": []}
        cpu: dict[str, float] = {"http": 0.0, "socket": 0.0}
        places = {"http": http.place, "socket": socket.place}
        for _ in range(args.rounds):
            for name, place in places.items():
                before = cpu_s(args.pid)
                lat[name] += await timed(place, args.orders)
                rate[name].append(await throughput(place, args.orders, args.concurrency))
                cpu[name] += cpu_s(args.pid) - before
        for name in places:
            print(summary(name, lat[name]))
        for name in places:
            print(f"{name:>6}: {statistics.median(rate[name]):7.0f} places/s with {args.concurrency} in flight "
                  f"(median of {args.rounds} rounds)")
        if args.pid is not None:
            for name in places:
                per_place = cpu[name] / (2 * args.orders * args.rounds) * 1e6
                print(f"{name:>6}: ingest CPU {per_place:5.0f} µs per place (both modes)")
        await http.close()


if __name__ == "__main__":
    asyncio.run(main())
