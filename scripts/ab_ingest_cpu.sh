#!/usr/bin/env bash
# Ingest CPU per order, two code versions alternated in one run (A/B), k6 at a fixed arrival rate.
#
#   bash scripts/ab_ingest_cpu.sh <git rev for A> [rounds]      # B is the working tree
#
# Each side runs its own ingest + matcher (own port and key prefix, LOG_LEVEL=WARNING, no rate limit)
# from its own checkout; the figure is the ingest process's user+system CPU divided by the requests
# k6 completed at RATE (default 1500/s) for DURATION (15s). CPU time per order is far less sensitive
# than throughput to whatever else the shared machine is doing.
# AB_OWN_REDIS=1: each measurement gets a Redis of its own (the engine's shipped server, appendfsync always as
# `make run` ships it, data in a temp dir), and its CPU per order is reported too; by default both sides share
# the machine's Redis (REDIS_URL unset), whose CPU is everybody's.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
REV=${1:?usage: ab_ingest_cpu.sh <git rev for A> [rounds]}
ROUNDS=${2:-2}
BASE=$(mktemp -d)/base
git worktree add -q --detach "$BASE" "$REV"
trap 'git worktree remove --force "$BASE"' EXIT

measure() {  # measure <checkout> <port>
  local tree=$1 port=$2 prefix="ab-$2-$RANDOM:"
  (
    cd "$tree"
    export PYTHONPATH=$tree REDIS_KEY_PREFIX=$prefix INGEST_PORT=$port MATCHER_METRICS_PORT=$((port + 1))
    export LOG_LEVEL=WARNING RATE_LIMIT_PER_SEC=0 API_KEY_RATE_LIMIT_PER_SEC=0 DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/ab_absent
    local r="" rdir="" cli=(redis-cli)
    if [[ ${AB_OWN_REDIS:-0} == 1 ]]; then
      rdir=$(mktemp -d)
      "$(cd "$ROOT" && "$ROOT/.venv/bin/python" -c 'from services.runtime.binaries import redis_server; print(redis_server())')" \
        --port $((port + 2)) --bind 127.0.0.1 --save '' --appendonly yes --appendfsync always --dir "$rdir" \
        --logfile "$rdir/redis.log" & r=$!
      export REDIS_URL="redis://127.0.0.1:$((port + 2))/0"
      cli=(redis-cli -p $((port + 2)))
      for _ in $(seq 1 50); do "${cli[@]}" ping >/dev/null 2>&1 && break; sleep 0.1; done
    fi
    "$ROOT/.venv/bin/python" -m services.matcher 2>/dev/null & m=$!
    "$ROOT/.venv/bin/python" -m services.ingest 2>/dev/null & i=$!
    for _ in $(seq 1 100); do curl -sf "localhost:$port/readyz" >/dev/null && break; sleep 0.1; done
    before=$(awk '{print $14 + $15}' "/proc/$i/stat")
    [[ -n $r ]] && r_before=$(awk '{print $14 + $15}' "/proc/$r/stat")
    out=$("$ROOT/.venv/bin/k6" run --quiet -e BASE_URL="http://127.0.0.1:$port" -e RATE="${RATE:-1500}" \
      -e DURATION="${DURATION:-15s}" -e P99_MS=100000 -e MAX_VUS=300 "$ROOT/load-test/rate.js" 2>&1 || true)
    after=$(awk '{print $14 + $15}' "/proc/$i/stat")
    [[ -n $r ]] && r_after=$(awk '{print $14 + $15}' "/proc/$r/stat")
    n=$(echo "$out" | awk '$1 ~ /^iterations/ {print $2}')
    kill "$i" "$m"; wait "$i" "$m" 2>/dev/null || true
    ticks=$(getconf CLK_TCK)
    if [[ -n $r ]]; then
      kill "$r"; wait "$r" 2>/dev/null || true
      rm -rf "$rdir"
      echo "$(( (after - before) * 1000000 / ticks / n )) us of ingest CPU, $(( (r_after - r_before) * 1000000 / ticks / n )) us of Redis CPU per order ($n orders)"
    else
      "${cli[@]}" --scan --pattern "$prefix*" | xargs -r "${cli[@]}" del >/dev/null
      echo "$(( (after - before) * 1000000 / ticks / n )) us of ingest CPU per order ($n orders)"
    fi
  )
}

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round  A ($REV): $(measure "$BASE" 3910)"
  echo "round $round  B (working tree): $(measure "$ROOT" 3920)"
done
