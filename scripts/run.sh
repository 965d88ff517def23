#!/usr/bin/env bash
# Run the engine under circus: `run.sh foreground|background|stop|scale N`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-.venv}
mkdir -p run

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
    if "${CIRCUSCTL[@]}" quit --waiting >/dev/null 2>&1; then echo "engine stopped"; else echo "no engine running at $CIRCUS_ENDPOINT"; fi
    exit 0 ;;
  scale)
    n=${2:?usage: run.sh scale N}
    "${CIRCUSCTL[@]}" set persister numprocesses "$n"
    echo "persister workers: $("${CIRCUSCTL[@]}" numprocesses persister)"
    exit 0 ;;
esac

"$ENGINE_PYTHON" -m scripts.preflight

echo "engine:"
echo "  ingest       http://${INGEST_HOST:-127.0.0.1}:${INGEST_PORT:-3000}   (orders API, /metrics, /healthz, /readyz)"
echo "  matcher      http://127.0.0.1:${MATCHER_METRICS_PORT:-9101}/metrics"
echo "  process manager: circusctl --endpoint $CIRCUS_ENDPOINT status"

case "${1:-foreground}" in
  foreground)
    exec "$ROOT/$VENV/bin/circusd" deploy/circus.ini ;;
  background)
    "$ROOT/$VENV/bin/circusd" --daemon --pidfile run/circusd.pid --log-output run/engine.log deploy/circus.ini
    echo "started in the background; logs in run/engine.log; \`make stop\` stops it" ;;
  *)
    echo "usage: run.sh foreground|background|stop|scale N" >&2; exit 2 ;;
esac
