"""Time `make run` on a fresh checkout until the engine is ready, and the services' memory idle and under load.

    .venv/bin/python -m scripts.measure_startup [--orders 5000] [--keep-venv DIR]

Clones the repository's HEAD into a temporary directory and runs `make run` there twice, on its own Redis
and PostgreSQL (as shipped) and ports and circus endpoints of its own (beside a live engine): first with no
.venv, no data and pip's cache off (cold: the downloads, the install and initdb are part of the time), then
again with the .venv and data the first run made (warm). Ready means every /healthz answers 200 and
ingest's /readyz 200. Then it reads VmRSS (/proc/<pid>/status) of every service,
idle and while it POSTs --orders orders (half of them crossing) with a WebSocket client subscribed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from scripts.bench_report import free_ports
from services.common.env import REPO_ROOT

SERVICES = ("ingest", "matcher", "persister", "broadcaster", "redis", "postgres")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def engine_env(run_dir: Path) -> dict[str, str]:
    """The engine on its own servers (no REDIS_URL / DATABASE_URL), every port its own."""
    # All bound at once, so no two services are handed the same port.
    ingest, broadcaster, matcher, persister, redis, postgres = free_ports(6)
    return {
        **{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "REDIS_KEY_PREFIX")},
        "ENGINE_REDIS_PORT": str(redis),
        "ENGINE_PG_PORT": str(postgres),
        "ENGINE_RUN_DIR": str(run_dir),
        "INGEST_PORT": str(ingest),
        "BROADCASTER_PORT": str(broadcaster),
        "MATCHER_METRICS_PORT": str(matcher),
        "PERSISTER_METRICS_PORT": str(persister),
        # Given, not left to run.sh's default: older revisions measured here default to TCP. Under mkdtemp's
        # directory (0700), so only this user reaches them.
        "CIRCUS_ENDPOINT": f"ipc://{run_dir}/circus.sock",
        "CIRCUS_PUBSUB_ENDPOINT": f"ipc://{run_dir}/circus-pubsub.sock",
        "RATE_LIMIT_PER_SEC": "0",  # the load below is one client's
    }


def ready_urls(env: dict[str, str]) -> list[str]:
    return [
        f"http://127.0.0.1:{env['INGEST_PORT']}/healthz",
        f"http://127.0.0.1:{env['INGEST_PORT']}/readyz",
        f"http://127.0.0.1:{env['MATCHER_METRICS_PORT']}/healthz",
        f"http://127.0.0.1:{env['PERSISTER_METRICS_PORT']}/healthz",
        f"http://127.0.0.1:{env['BROADCASTER_PORT']}/healthz",
    ]


@contextlib.contextmanager
def make_run(checkout: Path, env: dict[str, str], log: Path) -> Iterator[tuple[subprocess.Popen[bytes], float]]:
    """`make run` in its own process group; yields it and the seconds until the engine was ready."""
    started = time.monotonic()
    with log.open("ab") as out:
        process = subprocess.Popen(["make", "-s", "run"], cwd=checkout, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while not all(http_ok(url) for url in ready_urls(env)):
            if process.poll() is not None:
                raise SystemExit(f"make run exited {process.returncode}; see {log}")
            if time.monotonic() - started > 900:
                raise SystemExit(f"not ready after 900 s; see {log}")
            time.sleep(0.05)
        yield process, time.monotonic() - started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def service_pids(checkout: Path, env: dict[str, str]) -> dict[str, list[int]]:
    circusctl = [str(checkout / ".venv/bin/circusctl"), "--endpoint", env["CIRCUS_ENDPOINT"], "--timeout", "10"]
    pids = {}
    for name in SERVICES:
        listed = subprocess.run([*circusctl, "list", name], capture_output=True, text=True, check=True).stdout
        pids[name] = [int(p) for p in listed.replace(",", " ").split() if p.isdigit()]
    return pids


def parent(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise LookupError(pid)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu(pids: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(cpu_s(p) for p in found) for name, found in pids.items()}


def rss(pids: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(rss_mib(p) for p in found) for name, found in pids.items()}


async def post_orders(port: int, numbers: range, headers: str) -> None:
    """POST one order per number over one keep-alive connection (raw HTTP/1.1: httpx would be the bottleneck)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for n in numbers:
            side = "buy" if n % 2 else "sell"
            price = f"{50000 + (n % 20) - 10}.00"  # a band around 50000: about half of them cross
            body = json.dumps({"client_id": f"client-{n % 8}", "instrument": "BTC-USD", "side": side,
                               "type": "limit", "price": price, "quantity": "0.01"}).encode()
            writer.write(f"POST /orders HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Content-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1]
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            answer = await reader.readexactly(length)
            if status != b"201":
                raise SystemExit(f"POST /orders answered {status.decode()}: {answer.decode()}")
    finally:
        writer.close()


async def load(env: dict[str, str], orders: int, concurrency: int = 32) -> float:
    """POST `orders` orders over `concurrency` connections; returns orders/s. A WebSocket client listens."""
    from websockets.asyncio.client import connect

    headers = "Authorization: Bearer demo-broker\r\n"
    async with connect(f"ws://127.0.0.1:{env['BROADCASTER_PORT']}/stream") as ws:
        await ws.send(json.dumps({"op": "subscribe", "channels": ["trades", "orderbook_deltas"]}))

        async def drain() -> None:
            with contextlib.suppress(Exception):
                while True:
                    await ws.recv()

        reader = asyncio.create_task(drain())
        started = time.monotonic()
        await asyncio.gather(*(post_orders(int(env["INGEST_PORT"]), range(c, orders, concurrency), headers)
                               for c in range(concurrency)))
        elapsed = time.monotonic() - started
        reader.cancel()
    return orders / elapsed


def measure_load(env: dict[str, str], pids: dict[str, list[int]], orders: int) -> tuple[float, dict[str, float]]:
    """Peak RSS per service while the load runs (sampled every 0.1 s) and the rate it ran at."""
    peak = rss(pids)
    loop = asyncio.new_event_loop()
    task = loop.create_task(load(env, orders))
    while not task.done():
        loop.run_until_complete(asyncio.sleep(0.1))
        peak = {name: max(peak[name], value) for name, value in rss(pids).items()}
    rate = task.result()
    loop.close()
    return rate, peak


def mean_latency_ms(env: dict[str, str]) -> float:
    """order_latency_seconds sum / count from ingest's /metrics: the server's share of each request."""
    with urllib.request.urlopen(f"http://127.0.0.1:{env['INGEST_PORT']}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("order_latency_seconds_")}
    return 1000 * values["order_latency_seconds_sum"] / max(1.0, values["order_latency_seconds_count"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=5000)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="measure-startup-"))
    checkout = work / "checkout"
    subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(checkout)], check=True)
    results: dict[str, object] = {"cpus": os.cpu_count()}
    env = engine_env(work / "run")
    try:
        for label in ("cold", "warm"):
            # Cold: nothing cached, as on a new machine; warm: the .venv and the data of the cold run.
            run_env = {**env, "PIP_NO_CACHE_DIR": "1"} if label == "cold" else env
            with make_run(checkout, run_env, work / f"make-run-{label}.log") as (_, seconds):
                results[f"ready_s_{label}"] = round(seconds, 1)
                if label != "warm":
                    continue
                pids = service_pids(checkout, env)
                time.sleep(5)
                results["rss_idle_mib"] = {k: round(v, 1) for k, v in rss(pids).items()}
                pids["circusd"] = [parent(pids["ingest"][0])]  # relays every service's log lines
                before, client_before = cpu(pids), time.process_time()
                rate, peak = measure_load(env, pids, args.orders)
                used = {k: v - before[k] for k, v in cpu(pids).items()}
                used["load generator"] = time.process_time() - client_before
                results["cpu_s_during_load"] = {k: round(v, 2) for k, v in used.items()}
                results["load"] = f"{args.orders} POST /orders at {rate:.0f}/s, 1 WebSocket client"
                results["rss_peak_under_load_mib"] = {k: round(v, 1) for k, v in peak.items()}
                results["ingest_mean_order_latency_ms"] = round(mean_latency_ms(env), 2)
                time.sleep(2)
                results["rss_after_load_mib"] = {k: round(v, 1) for k, v in rss(pids).items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
