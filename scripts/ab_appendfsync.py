"""The cost of `appendfsync always` (the engine's default) against `everysec`, alternated in one run.

    .venv/bin/python -m scripts.ab_appendfsync [--rounds 2] [--seconds 30] [--rate 2000]

Each side is a whole `make bench` engine on its own servers (scripts/bench.sh with BENCH_SERVERS=own,
only the fixed-rate run, no profile), so both pay the same load generator, probe and drain; the sides
alternate so that the machine's other work hits both. The figure per side: orders accepted per second,
acceptance p50/p99, and server-side CPU per accepted order (every engine process, Redis and PostgreSQL
with their whole process trees; k6 and the probe excluded).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from scripts.bench_report import k6_figures, load
from services.common.env import REPO_ROOT

NOT_SERVER = ("k6", "probe", "machine")


def run_side(mode: str, seconds: int, rate: int, out_dir: Path) -> dict[str, Any]:
    env = {**os.environ, "ENGINE_REDIS_APPENDFSYNC": mode, "BENCH_SERVERS": "own", "BENCH_BASE_S": str(seconds),
           "BENCH_RATES": "", "BENCH_DOWN_RATES": "", "BENCH_SCRIPT": "0", "BENCH_PYSPY": "0",
           "BENCH_OUT": str(out_dir / f"{mode}.md")}
    env.pop("REDIS_URL", None)
    env.pop("DATABASE_URL", None)
    if rate != 2000:
        raise SystemExit("scripts/bench.sh runs its base rate at 2,000/s")
    done = subprocess.run(["bash", "scripts/bench.sh"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    found = re.search(r"results in (\S+)", done.stdout)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"bench.sh failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")
    results = Path(found[1])
    k6 = k6_figures(load(results / "rate-2000.k6.json"))
    cpu = load(results / "rate-2000.cpu.json").get("cpu_percent", {})
    server = sum(v for k, v in cpu.items() if not k.startswith(NOT_SERVER))
    return {"mode": mode, "rate": k6["rate"], "p50": k6["p50"], "p99": k6["p99"],
            "server_cpu_percent": server, "redis_percent": cpu.get("redis", 0.0),
            "postgres_percent": cpu.get("postgres", 0.0),
            "us_per_order": 10_000 * server / max(k6["rate"], 1.0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--rate", type=int, default=2000)
    args = parser.parse_args()
    out_dir = Path(tempfile.mkdtemp(prefix="ab-appendfsync-"))
    print("| round | appendfsync | accepted/s | p50 ms | p99 ms | server CPU % | Redis % | PostgreSQL % "
          "| CPU µs/order |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for round_no in range(1, args.rounds + 1):
        for mode in ("always", "everysec"):
            side = run_side(mode, args.seconds, args.rate, out_dir)
            print(f"| {round_no} | {mode} | {side['rate']:,.0f} | {side['p50']:.1f} | {side['p99']:.1f} "
                  f"| {side['server_cpu_percent']:.0f} | {side['redis_percent']:.0f} "
                  f"| {side['postgres_percent']:.0f} | {side['us_per_order']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
