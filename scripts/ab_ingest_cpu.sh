#!/usr/bin/env bash
# Ingest CPU per order, two code versions alternated in one run (A/B), k6 at a fixed arrival rate.
#
#   bash scripts/ab_ingest_cpu.sh <git rev for A> [rounds]      # B is the working tree
#
# Each side runs its own ingest + matcher (own port and key prefix, LOG_LEVEL=WARNING, no rate limit)
# from its own checkout; the figure is the ingest process's user+system CPU divided by the requests
# k6 completed at RATE (default 1500/s) for DURATION (15s). CPU time per order is far less sensitive
# than throughput to whatever else the shared machine is doing.
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
    "$ROOT/.venv/bin/python" -m services.matcher 2>/dev/null & m=$!
    "$ROOT/.venv/bin/python" -m services.ingest 2>/dev/null & i=$!
    for _ in $(seq 1 100); do curl -sf "localhost:$port/readyz" >/dev/null && break; sleep 0.1; done
    before=$(awk '{print $14 + $15}' "/proc/$i/stat")
    out=$("$ROOT/.venv/bin/k6" run --quiet -e BASE_URL="http://127.0.0.1:$port" -e RATE="${RATE:-1500}" \
      -e DURATION="${DURATION:-15s}" -e P99_MS=100000 -e MAX_VUS=300 "$ROOT/load-test/rate.js" 2>&1 || true)
    after=$(awk '{print $14 + $15}' "/proc/$i/stat")
    n=$(echo "$out" | awk '$1 ~ /^iterations/ {print $2}')
    kill "$i" "$m"; wait "$i" "$m" 2>/dev/null || true
    redis-cli --scan --pattern "$prefix*" | xargs -r redis-cli del >/dev/null
    ticks=$(getconf CLK_TCK)
    echo "$(( (after - before) * 1000000 / ticks / n )) us of ingest CPU per order ($n orders)"
  )
}

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round  A ($REV): $(measure "$BASE" 3910)"
  echo "round $round  B (working tree): $(measure "$ROOT" 3920)"
done
