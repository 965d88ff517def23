#!/usr/bin/env bash
# Run the engine under circus: `run.sh foreground|background|stop|scale N|clean-data`.
#
# Where REDIS_URL / DATABASE_URL are unset, the engine runs its own Redis (127.0.0.1:$ENGINE_REDIS_PORT,
# 6390) and PostgreSQL (:$ENGINE_PG_PORT, 5440) under the same circus, data in $ENGINE_RUN_DIR/data.
# Start order: data services, then (once they answer and the database is migrated) the four services.
# Stop order: the four services (each finishes its batch), then the data services.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-.venv}
# Where the background pid file, logs and data go (tests point it elsewhere to run beside a live engine).
export ENGINE_RUN_DIR=${ENGINE_RUN_DIR:-run}
RUN_DIR=$ENGINE_RUN_DIR
mkdir -p "$RUN_DIR"

export ENGINE_ROOT=$ROOT
export ENGINE_PYTHON=$ROOT/$VENV/bin/python
# The process manager's control endpoint runs any command as the engine's user: Unix sockets in a directory
# only that user can enter (run/ itself stays searchable: PostgreSQL, run as another user, reaches its data
# through it), never TCP, which any local user reaches. CIRCUS_ENDPOINT / CIRCUS_PUBSUB_ENDPOINT override.
CONTROL_DIR=$(cd "$RUN_DIR" && pwd)/control
mkdir -p "$CONTROL_DIR"
chmod 700 "$CONTROL_DIR"
export CIRCUS_ENDPOINT=${CIRCUS_ENDPOINT:-ipc://$CONTROL_DIR/circus.sock}
export CIRCUS_PUBSUB_ENDPOINT=${CIRCUS_PUBSUB_ENDPOINT:-ipc://$CONTROL_DIR/circus-pubsub.sock}
for endpoint in "$CIRCUS_ENDPOINT" "$CIRCUS_PUBSUB_ENDPOINT"; do
  socket_path=${endpoint#ipc://}
  # sockaddr_un holds 107 bytes of path: ZeroMQ refuses a longer one.
  if [[ $endpoint == ipc://* ]] && (( $(printf %s "$socket_path" | wc -c) > 107 )); then
    echo "error: the process manager's socket path is longer than 107 bytes, the limit of a Unix socket:" \
      "$socket_path. Use a shorter ENGINE_RUN_DIR, or set CIRCUS_ENDPOINT and CIRCUS_PUBSUB_ENDPOINT to" \
      "shorter ipc:// paths (in a directory only you can enter)." >&2
    exit 2
  fi
done
export PERSISTER_WORKERS=${PERSISTER_WORKERS:-1}
# Matchers holding instrument leases (docs/scale-out.md): matcher N on MATCHER_METRICS_PORT + 100 x (N - 1).
export MATCHER_WORKERS=${MATCHER_WORKERS:-1}
SERVICES=(ingest matcher persister broadcaster)
CIRCUSCTL=("$ROOT/$VENV/bin/circusctl" --endpoint "$CIRCUS_ENDPOINT" --timeout 30)

# A short timeout: with no circusd at the endpoint, circusctl waits the whole timeout.
# No socket file: no circusd, without waiting for the timeout.
circus_up() {
  [[ $CIRCUS_ENDPOINT != ipc://* || -S ${CIRCUS_ENDPOINT#ipc://} ]] || return 1
  "$ROOT/$VENV/bin/circusctl" --endpoint "$CIRCUS_ENDPOINT" --timeout 2 status >/dev/null 2>&1
}

# The services first, all at once (each finishes and acknowledges its batch), then circus and the data services.
# One `stop` for the four: circus runs one command at a time, so parallel `circusctl stop` calls failed with
# ConflictError, and `quit` then stopped Redis and PostgreSQL under services still finishing their batch.
# Retried on that conflict: circus's own periodic check can hold the arbiter for a moment.
stop_engine() {
  local services out
  services="^($(IFS='|'; echo "${SERVICES[*]}"))\$"
  for _ in 1 2 3 4 5; do
    out=$("${CIRCUSCTL[@]}" stop "$services" --match regex --waiting 2>&1) && break
    [[ $out == *"already running"* ]] || break
    sleep 0.2
  done
  "${CIRCUSCTL[@]}" quit --waiting >/dev/null 2>&1 || true
}

# circusd leaves its socket files behind; the next circus_up would wait its timeout on them.
forget_sockets() { rm -f "$CONTROL_DIR/circus.sock" "$CONTROL_DIR/circus-pubsub.sock"; }

wait_gone() {
  local pid=$1
  for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
}

case "${1:-foreground}" in
  stop)
    if ! circus_up; then echo "no engine running at $CIRCUS_ENDPOINT"; exit 0; fi
    stop_engine
    if [[ -f "$RUN_DIR/circusd.pid" ]]; then wait_gone "$(cat "$RUN_DIR/circusd.pid")"; rm -f "$RUN_DIR/circusd.pid"; fi
    forget_sockets
    echo "engine stopped"
    exit 0 ;;
  scale)
    n=${2:?usage: run.sh scale N}
    "${CIRCUSCTL[@]}" set persister numprocesses "$n" >/dev/null
    # Workers that go away first finish and acknowledge their batch: wait until they are gone.
    for _ in $(seq 1 300); do
      [[ $("${CIRCUSCTL[@]}" numprocesses persister) == "$n" ]] && break
      sleep 0.1
    done
    echo "persister workers: $("${CIRCUSCTL[@]}" numprocesses persister)"
    exit 0 ;;
  clean-data)
    if circus_up; then echo "error: the engine runs at $CIRCUS_ENDPOINT: \`make stop\` first" >&2; exit 1; fi
    rm -rf "$RUN_DIR/data"
    echo "removed $RUN_DIR/data (the engine's own Redis and PostgreSQL data)"
    exit 0 ;;
  foreground|background) ;;
  *)
    echo "usage: run.sh foreground|background|stop|scale N|clean-data" >&2; exit 2 ;;
esac

if circus_up; then echo "error: an engine already runs at $CIRCUS_ENDPOINT (\`make stop\` stops it)" >&2; exit 1; fi
# Exports REDIS_URL / DATABASE_URL of the engine's own servers (where not given), ENGINE_CIRCUS_INI, ENGINE_LOG_DIR.
PLAN=$("$ENGINE_PYTHON" -m services.runtime plan)
eval "$PLAN"

# circusd in a session of its own: Ctrl-C reaches this script, which stops the services before the data services.
# (Python's os.setsid rather than setsid(1), which macOS lacks.)
DETACHED=("$ENGINE_PYTHON" -c 'import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])')
if [[ $1 == foreground ]]; then
  "${DETACHED[@]}" "$ROOT/$VENV/bin/circusd" "$ENGINE_CIRCUS_INI" </dev/null &
else
  # circusd's own lines go to the file; each service writes its own log under $ENGINE_LOG_DIR.
  nohup "${DETACHED[@]}" "$ROOT/$VENV/bin/circusd" "$ENGINE_CIRCUS_INI" >>"$RUN_DIR/engine.log" 2>&1 </dev/null &
fi
CIRCUSD=$!
echo "$CIRCUSD" >"$RUN_DIR/circusd.pid"

# Each service writes its JSON lines to $ENGINE_LOG_DIR/<service>.log itself (LOG_FILE, deploy/circus.ini), and
# anything on its stdout/stderr before logging is set up (a traceback at import) to <service>.stderr.log.
# In the foreground, tail shows them all in the terminal. Started in the background of this script, tail
# ignores Ctrl-C's SIGINT: it keeps showing the services' last lines while they stop, then is ended here.
TAIL=""
show_logs() {
  local files=() service
  for service in "${SERVICES[@]}"; do files+=("$ENGINE_LOG_DIR/$service.log" "$ENGINE_LOG_DIR/$service.stderr.log"); done
  touch "${files[@]}"
  tail -q -n 0 -F "${files[@]}" &
  TAIL=$!
  trap kill_tail EXIT  # whatever ends this script (an error, a second Ctrl-C), tail goes with it
}
kill_tail() { if [[ -n $TAIL ]]; then kill "$TAIL" 2>/dev/null || true; fi; }
stop_showing_logs() {
  [[ -n $TAIL ]] || return 0
  sleep 0.3  # the last lines written before the services exited
  kill_tail
  wait "$TAIL" 2>/dev/null || true
  TAIL=""
}
interrupted() {
  # A second Ctrl-C while stopping ends this script at once, as it always did (`make stop` then finishes the stop).
  trap 'kill_tail; exit 130' INT TERM HUP
  echo "stopping the engine"; stop_engine; wait_gone "$CIRCUSD"; rm -f "$RUN_DIR/circusd.pid"
  stop_showing_logs; forget_sockets; exit 0
}
trap interrupted INT TERM HUP

for _ in $(seq 1 100); do circus_up && break; sleep 0.1; done
if [[ -n $ENGINE_DATA_WATCHERS ]]; then echo "data services: $ENGINE_DATA_WATCHERS (data in $RUN_DIR/data, logs in $ENGINE_LOG_DIR)"; fi
if ! "$ENGINE_PYTHON" -m services.runtime ready; then
  stop_engine; wait_gone "$CIRCUSD"; rm -f "$RUN_DIR/circusd.pid"; exit 1
fi
if [[ $1 == foreground ]]; then show_logs; fi
for service in "${SERVICES[@]}"; do "${CIRCUSCTL[@]}" start "$service" >/dev/null; done

echo "engine:"
echo "  ingest       http://${INGEST_HOST:-127.0.0.1}:${INGEST_PORT:-3000}   (orders API, /metrics, /healthz, /readyz)"
echo "  matcher      http://127.0.0.1:${MATCHER_METRICS_PORT:-9101}/metrics   (/healthz lists its leases;" \
  "$MATCHER_WORKERS matcher(s), matcher N: port +100 x (N-1))"
echo "  broadcaster  ws://${BROADCASTER_HOST:-127.0.0.1}:${BROADCASTER_PORT:-3001}/stream   (/metrics, /healthz, /readyz)"
echo "  market page  http://${BROADCASTER_HOST:-127.0.0.1}:${BROADCASTER_PORT:-3001}/   (book, depth, tape, candles, ticker; live)"
echo "  persister    http://127.0.0.1:${PERSISTER_METRICS_PORT:-9102}/metrics   (worker N: port +N-1; make scale-workers N=4)"
# Only the engine's own servers' URLs: an operator's may carry a password.
if [[ $ENGINE_DATA_WATCHERS == *redis* ]]; then echo "  redis        $REDIS_URL   (the engine's own: make redis-cli)"; fi
if [[ $ENGINE_DATA_WATCHERS == *postgres* ]]; then echo "  postgresql   ${DATABASE_URL/+asyncpg/}   (the engine's own: make psql)"; fi
echo "  process manager: circusctl --endpoint $CIRCUS_ENDPOINT status"

if [[ $1 == background ]]; then
  trap - INT TERM HUP
  echo "started in the background (pid $CIRCUSD); logs in $ENGINE_LOG_DIR/ (one per service; circus's own in" \
    "$RUN_DIR/engine.log); \`make stop\` stops it"
  exit 0
fi
# Foreground: until circusd ends, or Ctrl-C (the trap) stops the engine.
while kill -0 "$CIRCUSD" 2>/dev/null; do wait "$CIRCUSD" || true; done
rm -f "$RUN_DIR/circusd.pid"
stop_showing_logs
forget_sockets
