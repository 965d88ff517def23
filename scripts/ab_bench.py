"""Two configurations or code versions of the engine under `make bench`'s 2,000/s run, alternated in one run.

    .venv/bin/python -m scripts.ab_bench --side always::ENGINE_REDIS_APPENDFSYNC=always \\
                                         --side everysec::ENGINE_REDIS_APPENDFSYNC=everysec
    .venv/bin/python -m scripts.ab_bench --side before:86f58b9 --side after:     # a git revision vs the working tree
    options: [--rounds 2] [--seconds 30]

A side is LABEL:REV:VAR=VALUE,...; REV empty means the working tree, otherwise a git worktree of that revision
run with this checkout's .venv. Each side is a whole `make bench` engine on its own servers (scripts/bench.sh
with BENCH_SERVERS=own, only the fixed 2,000/s run, no profile), so both pay the same load generator, probe
and drain; the sides alternate so the shared machine's other work hits both. Per side: orders accepted per
second, acceptance p50/p99, and server-side CPU per accepted order (every engine process, Redis and PostgreSQL
with their whole process trees; k6 and the probe excluded).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.bench_report import k6_figures, load
from services.common.env import REPO_ROOT

NOT_SERVER = ("k6", "probe", "machine")


@dataclass(frozen=True)
class Side:
    label: str
    rev: str
    env: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> Side:
        label, _, rest = text.partition(":")
        rev, _, assignments = rest.partition(":")
        env = dict(a.split("=", 1) for a in assignments.split(",") if a)
        return cls(label, rev, env)


@contextlib.contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """The working tree, or a temporary worktree of `rev` sharing this checkout's .venv."""
    if not rev:
        yield REPO_ROOT
        return
    tree = Path(tempfile.mkdtemp(prefix="ab-bench-")) / "tree"
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(tree), rev], cwd=REPO_ROOT, check=True)
    (tree / ".venv").symlink_to(REPO_ROOT / ".venv")
    try:
        yield tree
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO_ROOT, check=False)
        shutil.rmtree(tree.parent, ignore_errors=True)


def run_side(side: Side, tree: Path, seconds: int, out_dir: Path) -> dict[str, Any]:
    env = {**os.environ, "BENCH_SERVERS": "own", "BENCH_BASE_S": str(seconds), "BENCH_RATES": "",
           "BENCH_DOWN_RATES": "", "BENCH_SCRIPT": "0", "BENCH_PYSPY": "0", "PYTHONPATH": str(tree),
           "BENCH_OUT": str(out_dir / f"{side.label}.md"), **side.env}
    env.pop("REDIS_URL", None)
    env.pop("DATABASE_URL", None)
    done = subprocess.run(["bash", "scripts/bench.sh"], cwd=tree, env=env, capture_output=True, text=True)
    found = re.search(r"results in (\S+)", done.stdout)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"bench.sh failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")
    results = Path(found[1])
    k6 = k6_figures(load(results / "rate-2000.k6.json"))
    cpu = load(results / "rate-2000.cpu.json").get("cpu_percent", {})
    server = sum(v for k, v in cpu.items() if not k.startswith(NOT_SERVER))
    return {"rate": k6["rate"], "p50": k6["p50"], "p99": k6["p99"], "server_cpu_percent": server,
            "redis_percent": cpu.get("redis", 0.0), "postgres_percent": cpu.get("postgres", 0.0),
            "us_per_order": 10_000 * server / max(k6["rate"], 1.0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", action="append", type=Side.parse, required=True, help="LABEL:REV:VAR=VALUE,...")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    out_dir = Path(tempfile.mkdtemp(prefix="ab-bench-out-"))
    print("| round | side | accepted/s | p50 ms | p99 ms | server CPU % | Redis % | PostgreSQL % | CPU µs/order |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with contextlib.ExitStack() as stack:
        trees = {side.label: stack.enter_context(checkout(side.rev)) for side in args.side}
        for round_no in range(1, args.rounds + 1):
            for side in args.side:
                got = run_side(side, trees[side.label], args.seconds, out_dir)
                print(f"| {round_no} | {side.label} | {got['rate']:,.0f} | {got['p50']:.1f} | {got['p99']:.1f} "
                      f"| {got['server_cpu_percent']:.0f} | {got['redis_percent']:.0f} "
                      f"| {got['postgres_percent']:.0f} | {got['us_per_order']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
