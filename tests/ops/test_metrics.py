"""After some traffic, every metric the operations issue names is on the service that owns it, and the
Grafana dashboard queries only metrics that exist; every service answers its health endpoints."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import pytest

from services.common.env import instruments_file
from services.common.instruments import load_instruments
from tests.ops.conftest import Engine, EngineFactory, drive_traffic, get
from tests.ops.test_compose import DASHBOARD

pytestmark = pytest.mark.timeout(120)

# Metric families (as Prometheus exposes them) each service must serve, with a label set that traffic produced.
EXPECTED: dict[str, list[str]] = {
    "ingest": [
        'orders_received_total{instrument="BTC-USD"}',
        'orders_rejected_total{reason="auth"}',
        'orders_rejected_total{reason="validation"}',
        'orders_rejected_total{reason="forbidden"}',
        'orders_rejected_total{reason="rate_limited"}',
        "order_latency_seconds_bucket",
        "order_latency_seconds_count",
        "idempotent_replays_total",
        "rate_limited_total",
    ],
    "matcher": [
        'orders_matched_total{instrument="BTC-USD"}',
        'trades_total{instrument="BTC-USD"}',
        'orders_rejected_total{instrument="BTC-USD",reason="post_only_would_cross"}',
        'current_orderbook_depth{instrument="BTC-USD",side="buy"}',
        'current_orderbook_depth{instrument="BTC-USD",side="sell"}',
        'orderbook_levels{instrument="BTC-USD",side="sell"}',
        'stream_group_lag{group="matcher"',
        'stream_group_pending{group="matcher"',
    ],
    "persister": [
        "persister_batch_size_bucket",
        "persister_batch_seconds_bucket",
        'persister_rows_written_total{table="trades"}',
        'persister_rows_written_total{table="orders"}',
        'stream_group_lag{group="persister"',
        'stream_group_pending{group="persister"',
        "persister_dead_letters_total",
        "persister_reclaimed_total",
        "persister_database_up",
    ],
    "broadcaster": [
        "websocket_clients",
        "websocket_messages_sent_total",
        "websocket_frames_sent_total",
        'websocket_clients_dropped_total{reason="slow"}',
        "broadcaster_events_read_total",
    ],
}


@pytest.fixture(scope="module")
async def engine(start_engine: EngineFactory) -> AsyncIterator[Engine]:
    running = await start_engine("metrics")
    await drive_traffic(running)
    yield running


def scrape(engine: Engine) -> dict[str, str]:
    texts = {}
    for name in EXPECTED:
        status, text = get(getattr(engine, name) + "/metrics")
        assert status == 200, name
        texts[name] = text
    return texts


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value of every sample line."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            found[key] = float(value)
    return found


def matches(key: str, wanted: str) -> bool:
    """`wanted` is a sample name, optionally with the start of its labels: `name{a="1"`."""
    return key.partition("{")[0] == wanted.partition("{")[0] and key.startswith(wanted)


def value(text: str, wanted: str) -> float:
    return sum(v for k, v in samples(text).items() if matches(k, wanted))


def test_every_named_metric_is_on_its_service(engine: Engine) -> None:
    texts = scrape(engine)
    for service, names in EXPECTED.items():
        keys = samples(texts[service])
        missing = [n for n in names if not any(matches(k, n) for k in keys)]
        assert not missing, f"{service} lacks {missing}"


def test_metrics_count_what_the_traffic_did(engine: Engine) -> None:
    texts = scrape(engine)
    ingest, matcher, persister, ws = texts["ingest"], texts["matcher"], texts["persister"], texts["broadcaster"]
    assert value(ingest, "idempotent_replays_total") == 1
    assert value(ingest, "rate_limited_total") >= 1
    assert value(ingest, 'orders_rejected_total{reason="auth"}') == 3
    assert value(ingest, "order_latency_seconds_count") == value(ingest, "orders_received_total") + value(
        ingest, "orders_rejected_total") + value(ingest, "idempotent_replays_total")
    assert value(matcher, 'trades_total{instrument="BTC-USD"}') == 1
    assert value(matcher, 'orders_matched_total{instrument="BTC-USD"}') == 2  # the taker and the maker
    assert value(matcher, 'current_orderbook_depth{instrument="BTC-USD",side="buy"}') == 0  # cancelled
    assert value(matcher, 'stream_group_lag{group="matcher"') == 0
    assert value(persister, 'persister_rows_written_total{table="trades"}') >= 1
    assert value(persister, 'stream_group_pending{group="persister"') == 0
    assert value(persister, "persister_database_up") == 1
    assert value(ws, "websocket_clients") == 0  # the traffic's client has left
    assert value(ws, "websocket_messages_sent_total") >= 3  # subscribed, snapshot, trade


def test_dashboard_queries_only_metrics_the_services_serve(engine: Engine) -> None:
    served = {key.partition("{")[0] for text in scrape(engine).values() for key in samples(text)} | {"up"}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    promql_words = {"sum", "by", "rate", "increase", "histogram_quantile", "max", "min", "count", "le", "job",
                    "instance", "instrument", "side", "reason", "group", "stream", "table"}
    without_strings = [re.sub(r'"[^"]*"|\[[^]]*\]', "", e) for e in exprs]  # label values, ranges
    used = {w for e in without_strings for w in re.findall(r"[a-z_][a-z0-9_]*", e)} - promql_words
    assert used and not used - served, f"the dashboard queries unknown metrics: {sorted(used - served)}"
    # The list, each on a panel.
    for name in ("orders_received_total", "orders_rejected_total", "order_latency_seconds_bucket",
                 "orders_matched_total", "trades_total", "current_orderbook_depth", "stream_group_lag",
                 "stream_group_pending", "persister_batch_size_bucket", "persister_batch_seconds_bucket",
                 "persister_rows_written_total", "websocket_clients", "websocket_messages_sent_total",
                 "websocket_clients_dropped_total", "idempotent_replays_total", "rate_limited_total"):
        assert name in used, name


def test_health_endpoints(engine: Engine) -> None:
    """/healthz (the process is up) on all four; /readyz where a service has dependencies to check."""
    for service in ("ingest", "broadcaster", "persister"):
        assert get(getattr(engine, service) + "/healthz") == (200, '{"status":"ok"}'), service
    # The matcher's lists the instruments whose lease it holds: the only matcher holds them all.
    status, body = get(engine.matcher + "/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok", "leases": sorted(load_instruments(instruments_file()))})
    assert get(engine.ingest + "/readyz") == (200, '{"status":"ready","missing":[]}')
    assert get(engine.broadcaster + "/readyz") == (200, '{"status":"ready"}')
