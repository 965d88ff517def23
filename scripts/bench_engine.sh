# Sourced by scripts/bench.sh and scripts/bench_batch.sh: an engine of the run's own, started as `make start`
# starts one (its own Redis with appendfsync always and PostgreSQL by default, its own ports, circus endpoints
# and results directory), so a live `make run` is never disturbed; stopped and cleaned up when the script exits.
#
# Needs ROOT, PY, ENGINE_TREE (whose scripts/run.sh, deploy/ and services/ run) and RESULTS (a fresh directory)
# set; BENCH_SERVERS=own (default) or shared (REDIS_URL / DATABASE_URL, default the machine's 6379 / 5432,
# with a prefix and database of the run's own). After bench_engine_start: INGEST_URL, BROADCASTER_URL, the
# ports, CIRCUSCTL, and PID_ARGS for scripts/cpu_per_order.py / bench_report (every engine process, the own
# servers' whole process trees, circusd alone).

bench_engine_env() {
  mapfile -t PORTS < <("$PY" -m scripts.bench_report ports 8)
  SERVERS=${BENCH_SERVERS:-own}
  export ENGINE_RUN_DIR="$RESULTS/engine"
  local id=${RESULTS##*/}
  if [[ $SERVERS == own ]]; then
    # run.sh starts the servers where the URLs are unset; the bench scripts then use their URLs.
    export ENGINE_REDIS_PORT=${PORTS[6]} ENGINE_PG_PORT=${PORTS[7]}
    RUN=(env -u REDIS_URL -u DATABASE_URL bash "$ENGINE_TREE/scripts/run.sh")
    export REDIS_URL="redis://127.0.0.1:$ENGINE_REDIS_PORT/0"
    export DATABASE_URL="postgresql+asyncpg://postgres@127.0.0.1:$ENGINE_PG_PORT/trading"
    export REDIS_KEY_PREFIX=""
  else
    RUN=(bash "$ENGINE_TREE/scripts/run.sh")
    local base_db=${DATABASE_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/trading}
    export REDIS_KEY_PREFIX="$id:"
    export DATABASE_URL="${base_db%/*}/${id//-/_}"
  fi
  export INGEST_PORT=${PORTS[0]} BROADCASTER_PORT=${PORTS[1]} MATCHER_METRICS_PORT=${PORTS[2]}
  export PERSISTER_METRICS_PORT=${PORTS[3]}
  # run.sh's default: the process manager on Unix sockets under this run's ENGINE_RUN_DIR.
  unset CIRCUS_ENDPOINT CIRCUS_PUBSUB_ENDPOINT
  # A capacity test: the per-client and per-key rate limits are off.
  export RATE_LIMIT_PER_SEC=0 API_KEY_RATE_LIMIT_PER_SEC=0
  # The shipped risk limits but an open-order cap the k6 flow never reaches (it never cancels: see the file). A tree
  # without the file (an older revision under scripts/ab_bench.py) runs with its own instruments.toml.
  if [[ -z ${INSTRUMENTS_FILE:-} && -f $ENGINE_TREE/load-test/instruments.toml ]]; then
    export INSTRUMENTS_FILE="$ENGINE_TREE/load-test/instruments.toml"
  fi
  export INGEST_URL="http://127.0.0.1:$INGEST_PORT" BROADCASTER_URL="ws://127.0.0.1:$BROADCASTER_PORT/stream"
  CIRCUSCTL=("$ROOT/.venv/bin/circusctl" --endpoint "ipc://$ENGINE_RUN_DIR/control/circus.sock" --timeout 15)
}

bench_engine_cleanup() {
  bash "$ENGINE_TREE/scripts/run.sh" stop >/dev/null 2>&1 || true
  if [[ $SERVERS == own ]]; then
    rm -rf "$ENGINE_RUN_DIR/data"
  else
    "$PY" -m scripts.bench_report cleanup >/dev/null 2>&1 || echo "warning: could not clean up $REDIS_KEY_PREFIX / $DATABASE_URL" >&2
  fi
}

bench_engine_start() {  # start it, wait until every service answers, collect PID_ARGS
  trap bench_engine_cleanup EXIT
  "${RUN[@]}" background >"$RESULTS/run.log" 2>&1
  ready() { curl -fs "$INGEST_URL/readyz" >/dev/null && curl -fs "http://127.0.0.1:$MATCHER_METRICS_PORT/healthz" >/dev/null \
    && curl -fs "http://127.0.0.1:$PERSISTER_METRICS_PORT/healthz" >/dev/null \
    && curl -fs "http://127.0.0.1:$BROADCASTER_PORT/readyz" >/dev/null; }
  for _ in $(seq 1 600); do ready && break; sleep 0.1; done
  ready || { echo "engine not ready after 60 s:"; tail -n 40 "$ENGINE_RUN_DIR/engine.log" "$ENGINE_RUN_DIR"/logs/*.log; exit 1; }
  pids_of() { "${CIRCUSCTL[@]}" list "$1" | tr -d ' ' ; }
  PID_ARGS=()
  for watcher in ingest matcher persister broadcaster; do PID_ARGS+=(--pid "$watcher=$(pids_of $watcher)"); done
  # The engine's own servers: the whole process tree (PostgreSQL's WAL writer and checkpointer count too).
  [[ $SERVERS == own ]] && for watcher in redis postgres; do PID_ARGS+=(--pid "$watcher=$(pids_of $watcher)"); done
  # The process manager itself, without its children (the processes above).
  PID_ARGS+=(--own-pid "circusd=$(cat "$ENGINE_RUN_DIR/circusd.pid")" --metrics-url "$INGEST_URL/metrics")
}
