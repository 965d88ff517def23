"""Server-side CPU per accepted order, per process: each process's CPU from /proc over a run, divided by the
orders ingest accepted in the same window (its `orders_received_total`, the load generator's and the probe's
orders alike). Used by scripts/bench_report.py (sampling, BENCHMARKS.md) and scripts/ab_bench.py."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

# Not the engine: the load generator, the latency probe, the machine as a whole.
NOT_SERVER = ("k6", "probe", "machine")
# Table order; shared servers appear as "redis-server (shared)" / "postgres backends".
ORDER = ("ingest", "matcher", "persister", "broadcaster", "redis", "redis-server (shared)", "postgres",
         "postgres backends", "circusd")
RUNS = (("cpu-1000", "1,000/s"), ("rate-2000", "2,000/s"))


def orders_received(metrics_url: str) -> int | None:
    """The sum of ingest's orders_received_total over instruments; None if /metrics does not answer."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("orders_received_total")))


def server_names(cpu: dict[str, Any]) -> list[str]:
    names = [n for n in cpu.get("cpu_seconds", {}) if not n.startswith(NOT_SERVER)]
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def us_per_order(cpu: dict[str, Any]) -> dict[str, float]:
    """µs of CPU per accepted order by server process, and their sum as "server total"; {} without counts."""
    accepted = int(cpu.get("accepted") or 0)
    if accepted <= 0:
        return {}
    seconds = cpu["cpu_seconds"]
    figures = {name: 1e6 * float(seconds[name]) / accepted for name in server_names(cpu)}
    figures["server total"] = sum(figures.values())
    return figures


def report(cpus: dict[str, dict[str, Any]], log_settings: str) -> list[str]:
    """The BENCHMARKS.md section: one column per run of RUNS that has counts."""
    runs = [(name, label, us_per_order(cpus[name])) for name, label in RUNS if us_per_order(cpus.get(name, {}))]
    if not runs:
        return []
    names: list[str] = []
    for name, _, _ in runs:
        names += [n for n in server_names(cpus[name]) if n not in names]
    lines = ["## Server-side CPU per accepted order", "",
             "Each process's CPU time from /proc over the run (its whole process tree; circusd alone), divided by "
             "the orders ingest accepted in the same window (`orders_received_total`: k6's and the probe's). "
             f"k6 and the probe are not counted. Log settings: {log_settings}.", "",
             "| process | " + " | ".join(f"{label} (µs/order)" for _, label, _ in runs) + " |",
             "|" + " --- |" * (len(runs) + 1)]
    for process in [*names, "server total"]:
        cells = [f"{figures[process]:,.0f}" if process in figures else "-" for _, _, figures in runs]
        bold = "**" if process == "server total" else ""
        lines.append(f"| {bold}{process}{bold} | " + " | ".join(f"{bold}{c}{bold}" for c in cells) + " |")
    accepted = [f"{label}: {int(cpus[name]['accepted']):,} orders accepted in {cpus[name]['seconds']} s "
                f"({int(cpus[name]['accepted']) / max(float(cpus[name]['seconds']), 1e-9):,.0f}/s)"
                for name, label, _ in runs]
    return [*lines, "", "; ".join(accepted) + ".", ""]


def main(argv: list[str]) -> int:
    """`python -m scripts.cpu_per_order RUN.cpu.json`: one line, µs of CPU per accepted order by process."""
    cpu: dict[str, Any] = json.loads(Path(argv[0]).read_text()) if argv and Path(argv[0]).is_file() else {}
    figures = us_per_order(cpu)
    print(", ".join(f"{name} {value:,.0f}" for name, value in figures.items()) + " µs"
          if figures else "no count of accepted orders")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
