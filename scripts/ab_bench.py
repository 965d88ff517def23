"""Two configurations or code versions of the engine under `make bench`'s 1,000/s and 2,000/s runs, alternated.

    .venv/bin/python -m scripts.ab_bench --side always::ENGINE_REDIS_APPENDFSYNC=always \\
                                         --side everysec::ENGINE_REDIS_APPENDFSYNC=everysec
    .venv/bin/python -m scripts.ab_bench --side before:86f58b9 --side after:     # a git revision vs the working tree
    options: [--rounds 2] [--seconds 30] [--low-seconds N (default --seconds; 0: no 1,000/s run)]

A side is LABEL:REV:VAR=VALUE,...; REV empty means the working tree, otherwise a git worktree of that revision
run with this checkout's .venv. Each side is a whole `make bench` engine on its own servers: this checkout's
scripts/bench.sh (BENCH_SERVERS=own, only the fixed 1,000/s and 2,000/s runs, no profile) with the side's
engine (BENCH_ENGINE_TREE: its scripts/run.sh, deploy/ and services/), so both sides are measured by the same
harness and pay the same load generator, probe and drain; the sides alternate so the shared machine's other
work hits both. Per side and rate: orders accepted per second, acceptance p50/p99, and server-side CPU µs per
accepted order, in all and per process (every engine process, Redis and PostgreSQL with their whole process
trees, circusd alone; k6 and the probe excluded). Log settings are each side's shipped defaults unless the
side sets LOG_LEVEL / LOG_ORDERS.
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
from scripts.cpu_per_order import RUNS, us_per_order
from services.common.env import REPO_ROOT


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
    # mkdtemp makes it 0700: under root the engine's PostgreSQL runs as `nobody`, which must pass through it
    # to the server binaries (the worktree's .venv) and the data.
    tree.parent.chmod(0o711)
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(tree), rev], cwd=REPO_ROOT, check=True)
    (tree / ".venv").symlink_to(REPO_ROOT / ".venv")
    try:
        yield tree
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO_ROOT, check=False)
        shutil.rmtree(tree.parent, ignore_errors=True)


def run_side(side: Side, tree: Path, seconds: int, low_seconds: int, out_dir: Path) -> dict[str, dict[str, Any]]:
    """One bench.sh run (this checkout's harness, `tree`'s engine): figures per rate, keyed by run name."""
    env = {**os.environ, "BENCH_SERVERS": "own", "BENCH_BASE_S": str(seconds), "BENCH_LOW_S": str(low_seconds),
           "BENCH_RATES": "", "BENCH_DOWN_RATES": "", "BENCH_SCRIPT": "0", "BENCH_PYSPY": "0",
           "BENCH_ENGINE_TREE": str(tree), "BENCH_OUT": str(out_dir / f"{side.label}.md"), **side.env}
    for name in ("REDIS_URL", "DATABASE_URL", "PYTHONPATH"):
        env.pop(name, None)
    done = subprocess.run(["bash", "scripts/bench.sh"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    found = re.search(r"results in (\S+)", done.stdout)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"bench.sh failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")
    results = Path(found[1])
    figures = {}
    for name, _ in RUNS:
        k6 = k6_figures(load(results / f"{name}.k6.json"))
        cpu = load(results / f"{name}.cpu.json")
        if not cpu:
            continue
        figures[name] = {"rate": k6["rate"], "p50": k6["p50"], "p99": k6["p99"], "us": us_per_order(cpu)}
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", action="append", type=Side.parse, required=True, help="LABEL:REV:VAR=VALUE,...")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=30, help="seconds of the 2,000/s run")
    parser.add_argument("--low-seconds", type=int, default=None,
                        help="seconds of the 1,000/s run (default: --seconds; 0 skips it)")
    args = parser.parse_args()
    low_seconds = args.seconds if args.low_seconds is None else args.low_seconds
    out_dir = Path(tempfile.mkdtemp(prefix="ab-bench-out-"))
    columns = ("ingest", "matcher", "persister", "broadcaster", "redis", "postgres", "circusd")
    print("| round | side | offered /s | accepted /s | p50 ms | p99 ms | server CPU µs/order | "
          + " | ".join(columns) + " |")
    print("|" + " --- |" * (7 + len(columns)))
    with contextlib.ExitStack() as stack:
        trees = {side.label: stack.enter_context(checkout(side.rev)) for side in args.side}
        for round_no in range(1, args.rounds + 1):
            for side in args.side:
                for name, got in run_side(side, trees[side.label], args.seconds, low_seconds, out_dir).items():
                    us = got["us"]
                    cells = " | ".join(f"{us[c]:,.0f}" if c in us else "-" for c in columns)
                    total = f"{us['server total']:,.0f}" if us else "-"
                    print(f"| {round_no} | {side.label} | {name.rsplit('-', 1)[1]} | {got['rate']:,.0f} "
                          f"| {got['p50']:.1f} | {got['p99']:.1f} | {total} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
