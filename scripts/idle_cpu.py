"""The engine's fixed CPU cost: each process's CPU from /proc over a window in which no order arrives.

    make run            # in another terminal, then with no load:
    python3 scripts/idle_cpu.py 60

The idle loops (the matcher's lease manager and 250 ms deadline sweep, blocked stream reads, health and
metrics) cost this whatever the load; divided by an order rate it is the floor under the CPU per order that
`make bench` reports. Processes are the four services and circusd of this checkout, and the Redis and
PostgreSQL servers the engine runs itself (their command lines name this checkout's run/ directory).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("ingest", "matcher", "persister", "broadcaster")
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _cmdline(pid: str) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def _parent(pid: str) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]


def _role(pid: str) -> str | None:
    """Which engine process `pid` is, or None for anything else on the machine."""
    command = _cmdline(pid)
    for service in SERVICES:
        if f"services.{service}" in command:
            return service
    if "circusd" in command and str(REPO_ROOT) in command:
        return "circusd"
    if ("valkey-server" in command or "redis-server" in command) and str(REPO_ROOT) in command:
        return "redis (own)"
    if "postgres" in command:
        # A backend's command line is "postgres: ..."; its postmaster (the parent) names the data directory.
        owner = command if str(REPO_ROOT) in command else _cmdline(_parent(pid))
        if str(REPO_ROOT) in owner:
            return "postgres (own)"
    return None


def engine_processes() -> dict[str, str]:
    """pid -> role of every engine process running now."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            role = _role(pid)
        except OSError:  # ended while we looked
            continue
        if role is not None:
            found[pid] = role
    return found


def cpu_ticks(pid: str) -> int:
    """User + system CPU of `pid` so far, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def main(argv: list[str]) -> int:
    window_s = float(argv[0]) if argv else 60.0
    processes = engine_processes()
    if not any(role in SERVICES for role in processes.values()):
        print("no engine process of this checkout is running: start `make run` first", file=sys.stderr)
        return 1
    before = {pid: cpu_ticks(pid) for pid in processes}
    time.sleep(window_s)
    by_role: dict[str, int] = {}
    for pid, role in processes.items():
        try:
            by_role[role] = by_role.get(role, 0) + cpu_ticks(pid) - before[pid]
        except OSError:  # a process that ended is counted up to its last sample only
            continue
    for role, ticks in sorted(by_role.items(), key=lambda item: -item[1]):
        print(f"{role:16s} {100 * ticks / TICKS_PER_S / window_s:5.1f}% of a core")
    total = sum(by_role.values())
    print(f"{'engine':16s} {100 * total / TICKS_PER_S / window_s:5.1f}% of a core over {window_s:g} s with no orders")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
