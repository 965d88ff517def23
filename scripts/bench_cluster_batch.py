"""Python CPU per Redis command, in one run: ClusterBatcher on a 3-master cluster, redis-py's RedisCluster
awaited per command (connect(mode="cluster")), and CommandBatcher on one server.

    .venv/bin/python -m scripts.bench_cluster_batch --commands 60000 --concurrency 100

Starts its own servers from the runtime's binary (services/runtime/binaries.py): a local 3-master cluster
(tests/cluster/conftest.py) and one plain server, on free ports, removed afterwards. Each client runs the same
work: `concurrency` tasks each awaiting SET then GET of keys spread over 3 instruments (3 masters on the
cluster), until `commands` commands are answered. CPU is this process's (time.process_time), so the servers'
own work is excluded; uvloop, as the services run. µs/command = CPU / commands, the median of --repeat
interleaved rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

from services.common.redis_batch import CommandBatcher
from services.common.redis_cluster_batch import ClusterBatcher
from services.common.redis_conn import connect
from services.runtime.binaries import redis_server
from services.runtime.probes import redis_answers, wait_until

Run = Callable[..., Awaitable[Any]]


async def _work(run: Run, symbols: list[str], commands: int, concurrency: int) -> tuple[float, float]:
    """(CPU s, wall s) of `commands` commands through `run`, `concurrency` at a time."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    each = commands // concurrency // 2

    async def task(n: int) -> None:
        key = f"{prefix}k{n}:{{{symbols[n % len(symbols)]}}}"
        for i in range(each):
            await run("SET", key, i)
            await run("GET", key)

    await asyncio.gather(*(task(n) for n in range(concurrency)))  # warm: connections, slot map
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(task(n) for n in range(concurrency)))
    return time.process_time() - cpu, time.perf_counter() - wall


async def measure(cluster_url: str, single_url: str, symbols: list[str], cluster_node: str, commands: int,
                  concurrency: int, repeat: int) -> dict[str, list[tuple[float, float]]]:
    """(CPU s, wall s) per client, `repeat` rounds, the clients interleaved within each (the machine is noisy)."""
    cluster = connect(cluster_url, mode="cluster")
    batcher = ClusterBatcher(cluster)
    single = connect(single_url)
    single_batcher = CommandBatcher(single)
    # The routing's own cost: the same keys (one master's) through ClusterBatcher and through a plain
    # CommandBatcher of that master.
    node = connect(f"redis://{cluster_node}/0")
    node_batcher = CommandBatcher(node)
    clients: dict[str, tuple[Run, list[str]]] = {
        "ClusterBatcher, 3 masters": (batcher.execute, symbols),
        "RedisCluster awaited per command, 3 masters": (cluster.execute_command, symbols),
        "CommandBatcher, 1 server": (single_batcher.execute, symbols),
        "ClusterBatcher, keys of 1 master": (batcher.execute, symbols[:1]),
        "CommandBatcher, that master alone": (node_batcher.execute, symbols[:1]),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
    for _ in range(repeat):
        for name, (run, keys_of) in clients.items():
            results[name].append(await _work(run, keys_of, commands, concurrency))
    await batcher.close()
    await cluster.aclose()
    await single_batcher.close()
    await single.aclose()
    await node_batcher.close()
    await node.aclose()
    return results


def main() -> None:
    from tests.cluster.conftest import start_cluster  # the test fixture's cluster, started the same way
    from tests.processes import free_port

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=60_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    (run_dir / "cluster").mkdir()
    cluster = start_cluster(run_dir / "cluster")
    port = free_port()
    single = subprocess.Popen([str(redis_server()), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(run_dir)], stdout=subprocess.DEVNULL)
    try:
        if not wait_until(redis_answers, f"redis://127.0.0.1:{port}/0", 10):
            raise SystemExit(f"the plain server on {port} did not answer")
        symbols = cluster.spread_symbols()
        results = uvloop.run(measure(cluster.url, f"redis://127.0.0.1:{port}/0", symbols,
                                      f"127.0.0.1:{cluster.master_of(symbols[0])}", options.commands,
                                      options.concurrency, options.repeat))
    finally:
        cluster.close()
        single.terminate()
        single.wait(10)
        shutil.rmtree(run_dir, ignore_errors=True)
    count = options.commands // options.concurrency // 2 * options.concurrency * 2
    print(f"{count} commands per round (SET + GET, {options.concurrency} concurrent tasks, keys of 3 instruments), "
          f"median of {options.repeat} interleaved rounds (min-max)")
    for name, rounds in results.items():
        cpus = sorted(cpu / count * 1e6 for cpu, _ in rounds)
        rates = sorted(count / wall for _, wall in rounds)
        print(f"{name:45s} {statistics.median(cpus):7.1f} µs CPU/command ({cpus[0]:.1f}-{cpus[-1]:.1f})  "
              f"{statistics.median(rates):9,.0f} commands/s")


if __name__ == "__main__":
    main()
