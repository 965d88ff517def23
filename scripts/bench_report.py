"""Helpers of scripts/bench.sh: sample CPU and group backlog during a run, time the drain, write BENCHMARKS.md.

    python -m scripts.bench_report ports N                 # N free TCP ports, one per line
    python -m scripts.bench_report sample --out F --until-pid K6 --pid ingest=123 ...
    python -m scripts.bench_report drain --out F           # seconds until matcher and persister caught up
    python -m scripts.bench_report cleanup                 # delete REDIS_KEY_PREFIX's keys, drop the database
    python -m scripts.bench_report write --dir RESULTS --out BENCHMARKS.md

Redis and PostgreSQL come from REDIS_URL / REDIS_KEY_PREFIX / DATABASE_URL, as the engine's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

from scripts.cpu_per_order import RUNS, orders_received
from scripts.cpu_per_order import report as cpu_per_order_report
from services.common.db import database_url, drop_database
from services.common.env import REPO_ROOT, instruments_file, redis_key_prefix, redis_url
from services.common.instruments import load_instruments
from services.common.keys import MATCHER_GROUP, PERSISTER_GROUP, instrument_keys
from services.common.redis_conn import connect as redis_connect

TICK = os.sysconf("SC_CLK_TCK")


def write_json(path: str, data: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores; from /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / TICK


def children(pid: int) -> list[int]:
    """pid and its descendants (circus runs the persister through env(1), which execs in place)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return found


async def backlog() -> dict[str, int]:
    """Entries each group still has to process: lag (not yet delivered) + pending (delivered, not acked)."""
    redis = redis_connect(redis_url())
    prefix = redis_key_prefix()
    totals = {"matcher": 0, "persister": 0}
    try:
        for symbol in load_instruments(instruments_file()):
            keys = instrument_keys(prefix, symbol)
            for stream, group in ((keys.orders, MATCHER_GROUP), (keys.trades, PERSISTER_GROUP),
                                  (keys.events, PERSISTER_GROUP)):
                try:
                    groups = await redis.xinfo_groups(stream)
                except Exception:  # a stream not created yet has no backlog
                    continue
                for info in groups:
                    name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
                    if name == group:
                        totals["matcher" if group == MATCHER_GROUP else "persister"] += (
                            int(info.get("lag") or 0) + int(info["pending"]))
    finally:
        await redis.aclose()
    return totals


async def postgres_backends() -> list[int]:
    """PostgreSQL server processes serving the engine's database (on this host)."""
    url = database_url().replace("postgresql+asyncpg://", "postgresql://", 1)
    name = url.rsplit("/", 1)[1].split("?")[0]
    conn = await asyncpg.connect(url.rsplit("/", 1)[0] + "/postgres")
    try:
        rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                                name)
    finally:
        await conn.close()
    return [int(r["pid"]) for r in rows]


def redis_server_pid() -> int | None:
    import redis

    try:
        return int(redis.Redis.from_url(redis_url()).info("server")["process_id"])
    except (redis.RedisError, KeyError, ValueError):
        return None


async def sample(args: argparse.Namespace) -> None:
    """Every --interval s until --until-pid exits: CPU% per named process group and the groups' backlog."""
    groups: dict[str, list[int]] = {}
    for item in args.pid:
        name, _, pids = item.partition("=")
        groups.setdefault(name, []).extend(c for p in pids.split(",") if p for c in children(int(p)))
    for item in args.own_pid:  # circusd: its children are the engine's processes, counted on their own
        name, _, pids = item.partition("=")
        groups.setdefault(name, []).extend(int(p) for p in pids.split(",") if p)
    # The engine's own servers come as --pid redis= / postgres= (whole process trees); shared ones are
    # found through their clients: the Redis server process and the database's backends.
    if "redis" not in groups and (rpid := redis_server_pid()) is not None:
        groups["redis-server (shared)"] = [rpid]
    if "postgres" not in groups:
        groups["postgres backends"] = await postgres_backends()
    seen: dict[int, float] = {}

    def used_by(pids: list[int]) -> float:
        # A process that exited keeps its last reading (k6 and the probe end before the last sample).
        for p in pids:
            if (value := cpu_seconds(p)) is not None:
                seen[p] = value
        return sum(seen.get(p, 0.0) for p in pids)

    groups["machine (all processes)"] = []
    last = {name: used_by(pids) for name, pids in groups.items()}
    last["machine (all processes)"] = machine_busy_seconds()
    received = orders_received(args.metrics_url) if args.metrics_url else None
    began = last_t = time.monotonic()
    series: dict[str, list[float]] = {name: [] for name in groups}
    backlogs: list[dict[str, int]] = []
    total = dict.fromkeys(groups, 0.0)
    while True:
        await asyncio.sleep(args.interval)
        now = time.monotonic()
        for name, pids in groups.items():
            used = machine_busy_seconds() if name.startswith("machine") else used_by(pids)
            series[name].append(round(100 * (used - last[name]) / (now - last_t), 1))
            total[name] += used - last[name]
            last[name] = used
        last_t = now
        backlogs.append(await backlog())
        if cpu_seconds(args.until_pid) is None or now - began > args.max_seconds:
            break
    elapsed = time.monotonic() - began
    received_end = orders_received(args.metrics_url) if args.metrics_url else None
    result = {
        "seconds": round(elapsed, 1),
        # Orders ingest accepted in the same window as the CPU (server CPU per order = cpu_seconds / accepted).
        "accepted": None if received is None or received_end is None else received_end - received,
        "cpu_seconds": {name: round(total[name], 3) for name in groups},
        "cpu_percent": {name: round(100 * total[name] / elapsed, 1) for name in groups},
        "cpu_percent_peak": {name: max(values, default=0.0) for name, values in series.items()},
        "backlog_max": {g: max((b[g] for b in backlogs), default=0) for g in ("matcher", "persister")},
        "backlog_series": backlogs,
        "host_load": os.getloadavg()[0],
    }
    write_json(args.out, result)


async def drain(args: argparse.Namespace) -> None:
    """From now, seconds until the matcher and persister groups have nothing left (or --timeout)."""
    began = time.monotonic()
    first = await backlog()
    current = first
    while any(current.values()) and time.monotonic() - began < args.timeout:
        await asyncio.sleep(0.1)
        current = await backlog()
    result = {"at_end": first, "left": current, "drained": not any(current.values()),
              "seconds": round(time.monotonic() - began, 2)}
    write_json(args.out, result)


async def cleanup() -> None:
    prefix = redis_key_prefix()
    if not prefix:
        raise SystemExit("refusing to clean up without a REDIS_KEY_PREFIX: that would be a live engine's keys")
    redis = redis_connect(redis_url())
    try:
        keys = [key async for key in redis.scan_iter(match=f"{prefix}*", count=1000)]
        for start in range(0, len(keys), 500):
            await redis.delete(*keys[start:start + 500])
    finally:
        await redis.aclose()
    await drop_database(database_url())


def free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    ports = [int(s.getsockname()[1]) for s in sockets]
    for sock in sockets:
        sock.close()
    return ports


# The report --------------------------------------------------------------------------------------

def load(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data


def k6_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """The figures of a k6 --summary-export file: rate achieved, latency, failures, drops."""
    metrics = summary.get("metrics", {})
    duration = metrics.get("http_req_duration{name:POST /orders}") or metrics.get("http_req_duration", {})
    failed = metrics.get("http_req_failed", {})
    checks = metrics.get("checks", {})
    return {
        "requests": int(metrics.get("http_reqs", {}).get("count", 0)),
        "rate": float(metrics.get("http_reqs", {}).get("rate", 0.0)),
        "p50": duration.get("med"), "p90": duration.get("p(90)"), "p95": duration.get("p(95)"),
        "p99": duration.get("p(99)"), "p999": duration.get("p(99.9)"), "max": duration.get("max"),
        "failed_rate": float(failed.get("value", 0.0)),
        "checks_failed": int(checks.get("fails", 0)),
        "dropped": int(metrics.get("dropped_iterations", {}).get("count", 0)),
        "vus_max": int(metrics.get("vus_max", {}).get("max", metrics.get("vus_max", {}).get("value", 0)) or 0),
    }


def ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}"


def machine() -> list[str]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                           capture_output=True, text=True).stdout.strip()
    versions = []
    for cmd in (["redis-server", "--version"], ["psql", "--version"], [str(REPO_ROOT / ".venv/bin/k6"), "version"]):
        try:
            versions.append(subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.split("\n")[0])
        except OSError:
            continue
    return [f"- CPU: {os.cpu_count()} x {model} (nproc {len(os.sched_getaffinity(0))})",
            f"- memory: {mem_kb / 1024 / 1024:.1f} GiB; {platform.platform()}; Python {platform.python_version()}",
            f"- commit: `{commit}`" + (" (with uncommitted changes)" if dirty else ""),
            "- " + "; ".join(v.strip() for v in versions if v.strip())]


def bottleneck(cpu: dict[str, Any]) -> tuple[str, float]:
    percent = cpu.get("cpu_percent", {})
    engine = {k: v for k, v in percent.items() if not k.startswith(("k6", "probe", "machine"))}
    if not engine:
        return ("-", 0.0)
    name = max(engine, key=lambda k: engine[k])
    return name, float(engine[name])


def bottleneck_sentence(rate: int, cpu: dict[str, Any]) -> str:
    """Names what limited the run at `rate`: a process at ~100% of a core, or the machine's CPU as a whole."""
    name, value = bottleneck(cpu)
    percent = cpu.get("cpu_percent", {})
    machine = float(percent.get("machine (all processes)", 0))
    ours = sum(v for k, v in percent.items() if not k.startswith("machine"))
    if value >= 85:
        return (f"At {rate:,}/s the bottleneck is **{name}** at {value:.0f}% of a core "
                f"(peak {cpu['cpu_percent_peak'].get(name, 0):.0f}%).")
    return (f"At {rate:,}/s no engine process was CPU-bound (busiest: {name} at {value:.0f}% of a core, "
            f"peak {cpu['cpu_percent_peak'].get(name, 0):.0f}%), but the machine was at {machine:.0f}% of its "
            f"200%, of which the engine, Redis, PostgreSQL, k6 and the probe used {ours:.0f}%: the limit was "
            "the two shared cores themselves (other work on the machine took the rest), so requests queued "
            "for CPU in every process at once.")


def sustained(step: dict[str, Any], target: int, p99_bound: float) -> tuple[bool, str]:
    """A rate is sustained when acceptance, matching, persisting and broadcasting all kept up."""
    k6, drained, probe = step["k6"], step["drain"], step["probe"]
    reasons = []
    if k6["rate"] < 0.95 * target:
        reasons.append(f"accepted only {k6['rate']:.0f}/s")
    if k6["dropped"] > 0.01 * target * step["seconds"]:
        reasons.append(f"k6 dropped {k6['dropped']} requests")
    if k6["failed_rate"] > 0.01:
        reasons.append(f"{k6['failed_rate']:.1%} failed")
    if k6["p99"] is not None and k6["p99"] > p99_bound:
        reasons.append(f"p99 {k6['p99']:.0f} ms > {p99_bound:.0f}")
    if not drained.get("drained", False) or drained.get("seconds", 99) > 5:
        reasons.append(f"backlog {drained.get('at_end')} took {drained.get('seconds')} s to drain")
    socket_ms = probe.get("socket_ms", {})
    if socket_ms.get("missing", 1) or (socket_ms.get("p99") or 0) > 1000:
        reasons.append(f"socket p99 {socket_ms.get('p99')} ms, missing {socket_ms.get('missing')}")
    return (not reasons, "; ".join(reasons) or "kept up")


def write_report(args: argparse.Namespace) -> None:
    results = Path(args.dir)
    config = load(results / "config.json")
    p99_bound = float(config.get("step_p99_ms", 100))
    lines = ["# Benchmarks", "",
             f"Written by `make bench` (scripts/bench.sh) on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
             "Every figure below comes from this one run; the machine is shared (the load generator runs on "
             "the same 2 cores as the engine, and other work may run beside it), so compare figures within a "
             "run, not across runs.", "", "## Machine", "", *machine(),
             f"- other work on the machine before the engine started: {config.get('machine_busy_before', '-')}% of "
             f"one core busy (of 200%); load average {config.get('load_before', '-')}", "",
             "## Configuration", ""]
    lines += [f"- {line}" for line in config.get("notes", [])]
    cpus = {name: load(results / f"{name}.cpu.json") for name, _ in RUNS}
    per_order = cpu_per_order_report(cpus, config.get("log_settings", "not recorded"))
    if per_order:
        lines += ["", *per_order[:-1]]
    lines += ["", "## The assignment's target: 2,000 orders/s", ""]
    base = load(results / "rate-2000.k6.json")
    base_probe = load(results / "rate-2000.probe.json")
    base_cpu = load(results / "rate-2000.cpu.json")
    base_drain = load(results / "rate-2000.drain.json")
    fig = k6_figures(base) if base else {}
    if fig:
        lines += [f"k6 `load-test/rate.js`, constant arrival rate 2,000/s for {config.get('base_seconds')} s "
                  "(no coordinated omission), plus the probe's crossing pairs:", "",
                  "| figure | value |", "| --- | --- |",
                  f"| POST /orders accepted | {fig['requests']:,} at {fig['rate']:,.0f}/s, "
                  f"{fig['failed_rate']:.2%} failed, {fig['dropped']} dropped by k6 |",
                  f"| acceptance latency (k6) p50 / p90 / p99 / p99.9 / max, ms | {ms(fig['p50'])} / "
                  f"{ms(fig['p90'])} / {ms(fig['p99'])} / {ms(fig['p999'])} / {ms(fig['max'])} |"]
        if base_drain:
            lines.append(f"| backlog when the load stopped (matcher / persister entries) | "
                         f"{base_drain['at_end']['matcher']} / {base_drain['at_end']['persister']}, "
                         f"drained in {base_drain['seconds']} s |")
        if base_cpu:
            lines.append(f"| largest backlog during the run (matcher / persister) | "
                         f"{base_cpu['backlog_max']['matcher']} / {base_cpu['backlog_max']['persister']} |")
        lines.append("")
    if base_probe:
        lines += ["End-to-end latency, `scripts/probe_latency.py` "
                  f"({base_probe.get('pairs_per_s')} crossing pairs/s during the run above; from just before the "
                  "buy's POST is written to when its trade is seen; PostgreSQL polled every "
                  f"{base_probe.get('pg_poll_ms')} ms):", "",
                  "| path | samples | p50 ms | p99 ms | p99.9 ms | max ms | missing |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, label in (("accept", "POST → 201 (probe's own requests)"), ("stream", "POST → trade on the stream"),
                            ("socket", "POST → trade on the WebSocket"), ("postgres", "POST → row in PostgreSQL")):
            f = base_probe.get(f"{name}_ms", {})
            lines.append(f"| {label} | {f.get('count', 0)} | {ms(f.get('p50'))} | {ms(f.get('p99'))} | "
                         f"{ms(f.get('p999'))} | {ms(f.get('max'))} | {f.get('missing', '-')} |")
        lines.append("")
    if base_cpu:
        lines += ["CPU during the 2,000/s run (% of one core; 200% is the whole machine):", "",
                  "| process | mean | peak (1 s) |", "| --- | --- | --- |"]
        for name, value in sorted(base_cpu["cpu_percent"].items(), key=lambda kv: -kv[1]):
            lines.append(f"| {name} | {value:.0f}% | {base_cpu['cpu_percent_peak'][name]:.0f}% |")
        lines.append("")

    closed = load(results / "script.k6.json")
    if closed:
        f = k6_figures(closed)
        closed_cpu = load(results / "script.cpu.json")
        lines += ["## The assignment's profile (closed loop, 100 VUs)", "",
                  f"`load-test/script.js` shortened to {config.get('script_profile')}: each VU sends its next order as "
                  "soon as the last is answered, so this is throughput at 100 concurrent clients (comparable to "
                  "the original implementation's ≈1,500 requests/s, p95 11 ms), not latency at a rate.", "",
                  f"- {f['requests']:,} requests, {f['rate']:,.0f}/s over the whole run including the ramp; "
                  f"p50 {ms(f['p50'])} ms, p95 {ms(f['p95'])} ms, p99 {ms(f['p99'])} ms; {f['failed_rate']:.2%} failed"]
        if closed_cpu:
            lines.append(f"- {bottleneck_sentence(int(f['rate']), closed_cpu)} (k6 itself: "
                         f"{closed_cpu['cpu_percent'].get('k6', 0):.0f}%)")
        lines.append("")

    steps = config.get("steps", [])
    best = 0
    if steps:
        lines += ["## Highest sustained rate, end to end", "",
                  f"Fixed arrival rates through `load-test/rate.js`, {config.get('step_seconds')} s each, with the "
                  f"probe at {config.get('step_probe_rate')} pairs/s. A rate counts as sustained when k6 offered it "
                  f"without dropping requests, ≥95% was accepted at p99 ≤ {p99_bound:.0f} ms with <1% errors, the "
                  "matcher's and persister's backlog drained within 5 s of the end, and every probe trade reached "
                  "the WebSocket (p99 ≤ 1 s).", "",
                  "| offered /s | accepted /s | p50 ms | p99 ms | dropped | failed | backlog max (matcher/persister)"
                  " | drain s | socket p99 ms | PG p99 ms | busiest process (mean CPU) | verdict |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for rate in steps:
            k6 = load(results / f"rate-{rate}.k6.json")
            if not k6:
                continue
            step = {"k6": k6_figures(k6), "drain": load(results / f"rate-{rate}.drain.json"),
                    "probe": load(results / f"rate-{rate}.probe.json"), "seconds": config.get("step_seconds", 30)}
            if rate == 2000:
                step["seconds"] = config.get("base_seconds", 60)
            cpu = load(results / f"rate-{rate}.cpu.json")
            ok, why = sustained(step, rate, p99_bound)
            if ok:
                best = max(best, rate)
            name, value = bottleneck(cpu)
            f, probe = step["k6"], step["probe"]
            lines.append(
                f"| {rate:,} | {f['rate']:,.0f} | {ms(f['p50'])} | {ms(f['p99'])} | {f['dropped']} | "
                f"{f['failed_rate']:.2%} | {cpu.get('backlog_max', {}).get('matcher', '-')}/"
                f"{cpu.get('backlog_max', {}).get('persister', '-')} | {step['drain'].get('seconds', '-')} | "
                f"{ms(probe.get('socket_ms', {}).get('p99'))} | {ms(probe.get('postgres_ms', {}).get('p99'))} | "
                f"{name} {value:.0f}% | {'sustained' if ok else 'not sustained: ' + why} |")
        lines.append("")
        lines += ["CPU per process at each rate (mean % of one core over the run; k6 and the probe share the "
                  "same 2 cores):", ""]
        header_done = False
        for rate in steps:
            cpu = load(results / f"rate-{rate}.cpu.json")
            if not cpu:
                continue
            names = list(cpu["cpu_percent"])
            if not header_done:
                lines += ["| offered /s | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 1)]
                header_done = True
            lines.append(f"| {rate:,} | " + " | ".join(f"{cpu['cpu_percent'].get(n, 0):.0f}%" for n in names) + " |")
        lines.append("")
        verdict = (f"**Highest sustained rate: {best:,} orders/s.**" if best else
                   "**No tested rate was sustained end to end** (see the verdicts above).")
        top = max(steps)
        top_cpu = load(results / f"rate-{top}.cpu.json")
        if top_cpu:
            verdict += " " + bottleneck_sentence(top, top_cpu)
        lines += [verdict, ""]
    profiles = sorted(results.glob("pyspy-*.txt"))
    if profiles:
        lines += ["## Where the time goes (py-spy)", "",
                  "Sampled for 8 s in the middle of a run at the rate named in the file name (py-spy record, "
                  "non-blocking, idle time excluded); share of samples by the innermost Python function. "
                  "`Runner.run` is time spent inside the event loop's own C code (uvloop: socket I/O and "
                  "callbacks), below any Python frame.", ""]
        for path in profiles:
            lines += [f"`{path.stem}`, top functions by own time:", "", "```", *path.read_text().splitlines()[:14],
                      "```", ""]
    optimisations = REPO_ROOT / "load-test" / "optimisations.md"
    if optimisations.exists():
        lines += [*optimisations.read_text().splitlines(), ""]
    lines += multi_node(best, base_cpu, float(fig.get("rate", 0.0)) if fig else 0.0)
    lines += ["## Reproduce", "", "```", "make bench                                 # ~10 minutes; BENCHMARKS.md",
              "BENCH_RATES='4000 6000' BENCH_STEP_S=20 make bench   # other steps",
              "# by hand, against an engine started with RATE_LIMIT_PER_SEC=0:",
              ".venv/bin/k6 run -e RATE=2000 -e DURATION=60s load-test/rate.js",
              ".venv/bin/python -m scripts.probe_latency --rate 50 --duration 60",
              "python3 fixtures/gen_orders.py --seed 1 --out fixtures/orders.jsonl && "
              ".venv/bin/k6 run load-test/replay.js", "```", "",
              f"Raw results of this run (k6 summaries, probe and CPU samples, py-spy profiles): "
              f"`{results.relative_to(REPO_ROOT) if results.is_relative_to(REPO_ROOT) else results}`.", ""]
    Path(args.out).write_text("\n".join(lines))


def multi_node(best: int, base_cpu: dict[str, Any], accepted: float) -> list[str]:
    cpu = base_cpu.get("cpu_percent", {})
    thousands = max(accepted, 1.0) / 1000

    def per_k(name: str) -> str:
        value = cpu.get(name)
        return "-" if value is None else f"{value / thousands:.0f}%"

    ceiling = (f"On this machine the whole pipeline sustained {best:,} orders/s with the load generator on the "
               "same two cores. " if best else "No rate was sustained in this run, so the scaling argument rests on "
               "the CPU each part spent per order, which contention inflates but does not reorder. ")
    return [
        "## Going multi-node", "",
        ceiling + f"CPU per 1,000 orders/s accepted, from the 2,000/s run ({accepted:,.0f}/s accepted), in % of "
        "one core: ingest " + per_k("ingest") + ", matcher " + per_k("matcher")
        + ", persister " + per_k("persister") + ", broadcaster " + per_k("broadcaster") + ", Redis "
        + per_k("redis" if "redis" in cpu else "redis-server (shared)") + ", PostgreSQL "
        + per_k("postgres" if "postgres" in cpu else "postgres backends") + ".", "",
        "- **Ingest is stateless**: more uvicorn workers or hosts behind a load balancer scale acceptance "
        "linearly until Redis is the limit; each host adds roughly 1,000 / (its ingest CPU per 1,000 orders/s) "
        "x cores of acceptance.",
        "- **Instruments sharded over Redis Cluster by hash tag**: every key of an instrument carries `{SYMBOL}`, "
        "so one instrument lives in one slot and `match.lua` stays a single atomic call. A matcher per shard "
        "(or per group of instruments) adds the single-instrument ceiling per shard: N shards ≈ N x the "
        "matcher rate measured here, as long as no single instrument needs more than one Redis core "
        "(FACTS.md: ≈25k orders/s per core for the Lua matcher at 30% crossing). One hot instrument cannot "
        "be split this way; it is bounded by one Redis core and one matcher.",
        "- **Persister groups across hosts**: the `persister` consumer group already shares trades and events "
        "between workers (`make scale-workers N=4`); workers on other hosts join the same group. Each worker "
        "adds its COPY throughput until PostgreSQL's write path is the limit (FACTS.md: ≈66k rows/s through "
        "asyncpg COPY on one such machine, against ≈2-3 rows per order: one event per changed order plus trades).",
        "- **PostgreSQL partitioning**: `trades` and `order_events` by time (daily/monthly ranges) keeps the "
        "indexes the writes touch small and makes retention a DROP PARTITION; by instrument (hash) it lets "
        "shards of instruments write to separate tablespaces or, with Citus-style distribution, separate "
        "servers, which multiplies the ≈66k rows/s write ceiling by the number of nodes.",
        "- **Broadcaster**: fan-out is per connection; more broadcaster replicas (each reads the streams "
        "itself, no consumer group) behind a WebSocket-aware load balancer scale subscribers linearly.", "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ports = sub.add_parser("ports")
    ports.add_argument("count", type=int)
    smp = sub.add_parser("sample")
    smp.add_argument("--out", required=True)
    smp.add_argument("--until-pid", type=int, required=True)
    smp.add_argument("--pid", action="append", default=[], help="name=pid[,pid...], with their descendants")
    smp.add_argument("--own-pid", action="append", default=[], help="name=pid[,pid...], without descendants")
    smp.add_argument("--metrics-url", help="ingest's /metrics: orders accepted during the run")
    smp.add_argument("--interval", type=float, default=1.0)
    smp.add_argument("--max-seconds", type=float, default=600)
    drn = sub.add_parser("drain")
    drn.add_argument("--out", required=True)
    drn.add_argument("--timeout", type=float, default=30)
    sub.add_parser("cleanup")
    busy = sub.add_parser("busy", help="% of one core the machine is busy over SECONDS (before the engine starts)")
    busy.add_argument("seconds", type=float)
    ver = sub.add_parser("verdict", help="1 when the run NAME sustained RATE end to end, else 0; then why")
    ver.add_argument("--dir", required=True)
    ver.add_argument("--name", required=True)
    ver.add_argument("--rate", type=int, required=True)
    ver.add_argument("--seconds", type=float, required=True)
    ver.add_argument("--p99-ms", type=float, default=100)
    wrt = sub.add_parser("write")
    wrt.add_argument("--dir", required=True)
    wrt.add_argument("--out", default=str(REPO_ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    if args.command == "ports":
        print("\n".join(str(p) for p in free_ports(args.count)))
    elif args.command == "sample":
        asyncio.run(sample(args))
    elif args.command == "drain":
        asyncio.run(drain(args))
    elif args.command == "cleanup":
        asyncio.run(cleanup())
    elif args.command == "busy":
        before, began = machine_busy_seconds(), time.monotonic()
        time.sleep(args.seconds)
        print(round(100 * (machine_busy_seconds() - before) / (time.monotonic() - began)))
    elif args.command == "verdict":
        results = Path(args.dir)
        step = {"k6": k6_figures(load(results / f"{args.name}.k6.json")),
                "drain": load(results / f"{args.name}.drain.json"),
                "probe": load(results / f"{args.name}.probe.json"), "seconds": args.seconds}
        ok, why = sustained(step, args.rate, args.p99_ms)
        print(f"{int(ok)} {why}")
    else:
        write_report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
