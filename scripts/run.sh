#!/usr/bin/env bash
# Run the engine under circus: `run.sh foreground|background|stop|scale N`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-.venv}
# Where the background pid file and log go (tests point it elsewhere to run beside a live engine).
RUN_DIR=${ENGINE_RUN_DIR:-run}
mkdir -p "$RUN_DIR"

export ENGINE_ROOT=$ROOT
export ENGINE_PYTHON=$ROOT/$VENV/bin/python
export CIRCUS_ENDPOINT=${CIRCUS_ENDPOINT:-tcp://127.0.0.1:5555}
export CIRCUS_PUBSUB_ENDPOINT=${CIRCUS_PUBSUB_ENDPOINT:-tcp://127.0.0.1:5556}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
export DATABASE_URL=${DATABASE_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/trading}
export PERSISTER_WORKERS=${PERSISTER_WORKERS:-1}
CIRCUSCTL=("$ROOT/$VENV/bin/circusctl" --endpoint "$CIRCUS_ENDPOINT" --timeout 15)

case "${1:-foreground}" in
  stop)
    if ! "${CIRCUSCTL[@]}" status >/dev/null 2>&1; then echo "no engine running at $CIRCUS_ENDPOINT"; exit 0; fi
    # Stop the workers gracefully first (each finishes its batch), then the manager.
    "${CIRCUSCTL[@]}" stop --waiting >/dev/null
    "${CIRCUSCTL[@]}" quit --waiting >/dev/null 2>&1 || true
    if [[ -f "$RUN_DIR/circusd.pid" ]]; then
      pid=$(cat "$RUN_DIR/circusd.pid")
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$RUN_DIR/circusd.pid"
    fi
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
esac

"$ENGINE_PYTHON" -m scripts.preflight

echo "engine:"
echo "  ingest       http://${INGEST_HOST:-127.0.0.1}:${INGEST_PORT:-3000}   (orders API, /metrics, /healthz, /readyz)"
echo "  matcher      http://127.0.0.1:${MATCHER_METRICS_PORT:-9101}/metrics"
echo "  broadcaster  ws://${BROADCASTER_HOST:-127.0.0.1}:${BROADCASTER_PORT:-3001}/stream   (/metrics, /healthz, /readyz)"
echo "  persister    http://127.0.0.1:${PERSISTER_METRICS_PORT:-9102}/metrics   (worker N: port +N-1; make scale-workers N=4)"
echo "  process manager: circusctl --endpoint $CIRCUS_ENDPOINT status"

case "${1:-foreground}" in
  foreground)
    exec "$ROOT/$VENV/bin/circusd" deploy/circus.ini ;;
  background)
    # circusd in the foreground of a detached shell, so the services' own log lines reach the file too.
    nohup "$ROOT/$VENV/bin/circusd" deploy/circus.ini >>"$RUN_DIR/engine.log" 2>&1 </dev/null &
    echo $! >"$RUN_DIR/circusd.pid"
    echo "started in the background (pid $(cat "$RUN_DIR/circusd.pid")); logs in $RUN_DIR/engine.log; \`make stop\` stops it" ;;
  *)
    echo "usage: run.sh foreground|background|stop|scale N" >&2; exit 2 ;;
esac
