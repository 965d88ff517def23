"""/healthz, /readyz, /metrics and unknown routes."""

from __future__ import annotations

from tests.ingest.conftest import Engine, EngineFactory, limit_order


async def test_healthz(engine: Engine) -> None:
    response = await engine.client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_readyz_needs_the_matcher_groups(make_engine: EngineFactory) -> None:
    engine = await make_engine(prepare=False)
    response = await engine.client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "not_ready", "missing": [
        f"matcher group on {engine.keys[symbol].orders}" for symbol in ("BTC-USD", "ETH-USD")
    ]}
    for matcher in engine.matchers.values():
        await matcher.prepare()
    response = await engine.client.get("/readyz")
    assert (response.status_code, response.json()) == (200, {"status": "ready", "missing": []})


async def test_metrics_count_orders_and_latency(engine: Engine) -> None:
    await engine.post(limit_order())
    await engine.post(limit_order(price="1.001"))
    await engine.post(limit_order(), headers={})
    response = await engine.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'orders_received_total{instrument="BTC-USD"} 1.0' in text
    assert 'orders_rejected_total{reason="validation"} 1.0' in text
    assert 'orders_rejected_total{reason="auth"} 1.0' in text
    assert "order_latency_seconds_count 3.0" in text
    assert 'order_latency_seconds_bucket{le="0.0005"}' in text


async def test_unknown_routes_and_methods_answer_json(engine: Engine) -> None:
    response = await engine.client.get("/nope")
    assert (response.status_code, response.json()["error"]) == (404, "not_found")
    response = await engine.client.put("/orders")
    assert (response.status_code, response.json()["error"]) == (405, "method_not_allowed")
