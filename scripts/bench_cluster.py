"""Matching throughput of 1 and of 3 instruments on a Redis Cluster of 1 and of 3 masters (issue 17).

    .venv/bin/python -m scripts.bench_cluster --orders 30000 --rounds 2

Starts a local cluster of 3 masters from the runtime's server binary (tests/cluster/conftest.py): "1 master" moves
the 3 instruments' slots onto one of them, "3 masters" spreads them one per master. For each configuration it
enqueues scripts.bench_matcher's seeded flow on every instrument, then times match.lua draining them, one matcher
loop per instrument in this process, all at once (batch 256, as the matcher runs under load). Besides the
wall-clock rate it reads each server's CPU time from /proc: a master's
commands over its CPU seconds is what that master would match with a core of its own, and instruments on
different masters add up. On a machine with fewer cores than masters plus this client the wall-clock rate is
capped by the cores, not by the masters.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from scripts.bench_matcher import order_flow
from services.common.instruments import Instrument, load_instruments
from services.common.keys import instrument_keys
from services.common.redis_conn import connect
from services.matcher.engine import InstrumentMatcher
from tests.cluster.conftest import LocalCluster, start_cluster

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def client_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Run:
    commands: int
    seconds: float
    server_cpu: dict[int, float]  # master port -> CPU seconds used during the drain
    per_master: dict[int, int]  # master port -> commands it applied
    client_cpu: float

    @property
    def rate(self) -> float:
        return self.commands / self.seconds

    @property
    def core_per_master(self) -> float:
        """Commands/s with a core per master: each master's commands over its CPU seconds, summed."""
        return sum(n / self.server_cpu[p] for p, n in self.per_master.items() if self.server_cpu[p] > 0)


async def measure(cluster: LocalCluster, instruments: list[Instrument], orders: int, batch: int) -> Run:
    redis = connect(cluster.url, mode="cluster")
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    matchers: list[InstrumentMatcher] = []
    per_master: dict[int, int] = dict.fromkeys(cluster.nodes, 0)
    try:
        for n, instrument in enumerate(instruments):
            keys = instrument_keys(prefix, instrument.symbol)
            matcher = InstrumentMatcher(redis, instrument, keys, "bench", batch)
            await matcher.prepare()
            await matcher.take_lease()
            commands = order_flow(instrument, orders, seed=n + 1)
            for start in range(0, len(commands), 1000):
                async with redis.pipeline(transaction=False) as pipe:
                    for fields in commands[start:start + 1000]:
                        pipe.xadd(keys.orders, fields)  # type: ignore[arg-type]
                    await pipe.execute()
            matchers.append(matcher)
            per_master[cluster.master_of(instrument.symbol)] += orders
        pids = {port: process.pid for port, process in zip(cluster.nodes, cluster.processes, strict=True)}
        cpu_before = {port: cpu_seconds(pid) for port, pid in pids.items()}
        client_before = client_cpu_seconds()
        began = time.perf_counter()
        applied = sum(await asyncio.gather(*(m.drain() for m in matchers)))
        elapsed = time.perf_counter() - began
        server_cpu = {port: cpu_seconds(pid) - cpu_before[port] for port, pid in pids.items()}
        return Run(applied, elapsed, server_cpu, {p: n for p, n in per_master.items() if n},
                   client_cpu_seconds() - client_before)
    finally:
        for port in cluster.nodes:
            node = cluster.client(port)
            with node.pipeline(transaction=False) as pipe:  # one DEL per key: a DEL names one slot
                for key in node.scan_iter(match=f"{prefix}*", count=1000):
                    pipe.delete(key)
                pipe.execute()
        await redis.aclose()


def place(cluster: LocalCluster, symbols: list[str], masters: int) -> None:
    """Put the instruments' slots on one master (`masters` 1) or each on its own (3), moving slots as needed."""
    home = [cluster.master_of(symbols[0])] * len(symbols) if masters == 1 else list(cluster.nodes[:len(symbols)])
    for symbol, port in zip(symbols, home, strict=True):
        if cluster.master_of(symbol) != port:
            cluster.move_slot(symbol, port)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=30_000, help="commands per instrument")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2, help="alternate the configurations this many times")
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    # One cluster of 3 masters: "1 master" puts every instrument's slot on the same one (the others idle).
    cluster = start_cluster(run_dir)
    try:
        symbols = cluster.spread_symbols(3)
        loaded = load_instruments(cluster.instruments_toml(symbols, run_dir / "instruments.toml"))
        every = [loaded[s] for s in symbols]
        configs = [(masters, count) for masters in (1, 3) for count in (1, 3)]
        results: dict[tuple[int, int], list[Run]] = {c: [] for c in configs}
        print(f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.2f}; {args.orders:,} commands per instrument, "
              f"batch {args.batch}; instruments {symbols}")
        for _ in range(args.rounds):
            for masters, count in configs:
                place(cluster, symbols, masters)
                run = await measure(cluster, every[:count], args.orders, args.batch)
                results[(masters, count)].append(run)
                cpu = ", ".join(f"{s:.2f}" for s in run.server_cpu.values())
                print(f"{masters} master(s), {count} instrument(s): {run.rate:>8,.0f} commands/s wall clock; "
                      f"server CPU s [{cpu}], client {run.client_cpu:.2f} s; a core per master: "
                      f"{run.core_per_master:>8,.0f}/s")
        print("\nbest of rounds (commands/s): wall clock | a core per master")
        for (masters, count), runs in results.items():
            print(f"  {masters} master(s), {count} instrument(s): {max(r.rate for r in runs):>8,.0f} | "
                  f"{max(r.core_per_master for r in runs):>8,.0f}")
    finally:
        cluster.close()
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
