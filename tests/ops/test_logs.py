"""One JSON line per important event, with the ids involved, and never an API key.

Per order, trade and event: counts in one `activity` line per service by default, a line each with LOG_ORDERS=1.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy.engine import make_url

from tests.conftest import TWO_INSTRUMENTS
from tests.ops.conftest import SECRET_KEY, Engine, EngineFactory, drive_traffic
from tests.persister.proxy import TcpProxy
from tests.processes import Service, free_port

pytestmark = pytest.mark.timeout(120)

Line = dict[str, Any]


def read_log(path: Path) -> list[Line]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        record = json.loads(line)  # every line is one JSON object
        assert {"ts", "level", "service", "logger", "msg"} <= set(record), line
        parsed.append(record)
    return parsed


def events(lines: list[Line], event: str) -> list[Line]:
    return [line for line in lines if line.get("event") == event]


async def _after_traffic(start_engine: EngineFactory, label: str, env: dict[str, str]) -> Engine:
    engine = await start_engine(label, env)
    await drive_traffic(engine)
    codes = {name: await asyncio.to_thread(service.stop) for name, service in engine.services.items()}
    assert codes == dict.fromkeys(engine.services, 0)
    return engine


@pytest.fixture(scope="module")
async def stopped(start_engine: EngineFactory) -> AsyncIterator[Engine]:
    """The four services with the per-order audit lines on, after traffic with failed authentications,
    stopped with SIGTERM."""
    yield await _after_traffic(start_engine, "logs", {"LOG_ORDERS": "1"})


@pytest.fixture(scope="module")
async def shipped(start_engine: EngineFactory) -> AsyncIterator[Engine]:
    """The same traffic with the log settings as shipped: no line per order, an `activity` line of counts."""
    yield await _after_traffic(start_engine, "quiet", {})


def activity(lines: list[Line]) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """The counts of every `activity` line, summed."""
    counts: dict[str, int] = {}
    reasons: dict[str, dict[str, int]] = {}
    for line in events(lines, "activity"):
        assert line["level"] == "info" and line["seconds"] >= 0, line
        for name, n in line["counts"].items():
            counts[name] = counts.get(name, 0) + n
        for name, by_reason in line["reasons"].items():
            for reason, n in by_reason.items():
                reasons.setdefault(name, {})[reason] = reasons.setdefault(name, {}).get(reason, 0) + n
    return counts, reasons


def test_by_default_no_line_per_order_but_counts(shipped: Engine) -> None:
    ingest = read_log(shipped.services["ingest"].log_path)
    persister = read_log(shipped.services["persister"].log_path)
    per_order = ("accepted", "replayed", "rejected", "cancel_requested", "trade", "cancelled")
    assert not [line for line in ingest + persister if line.get("event") in per_order]
    assert not [line for line in ingest if line["msg"].startswith("cancel requested")]
    counts, reasons = activity(ingest)
    # 4 orders of the traffic and those of the rate-limited burst that passed (a bucket that refills while
    # a slow machine sends the burst lets more than RATE_LIMIT_BURST through).
    assert counts["accepted"] == 4 + int(shipped.facts["burst_accepted"])
    assert counts["replayed"] == 1 and counts["cancel_requested"] == 1
    assert reasons["rejected"]["auth"] == 3 and reasons["rejected"]["validation"] == 1
    assert reasons["rejected"]["forbidden"] == 1 and reasons["rejected"]["rate_limited"] >= 1
    assert counts["rejected"] == sum(reasons["rejected"].values())
    counts, _ = activity(persister)
    assert (counts["trades"], counts["cancelled"], counts["rejected"]) == (1, 1, 1)
    assert counts["events"] > 4  # accepted, filled, partially_filled, cancelled, rejected


def test_no_api_key_in_any_log_line(stopped: Engine) -> None:
    for name, service in stopped.services.items():
        text = service.log_path.read_text()
        read_log(service.log_path)
        for key in (SECRET_KEY, "demo-key-A", "demo-key-B", "Bearer"):
            assert key not in text, f"{name} logged {key!r}"
    broadcaster = read_log(stopped.services["broadcaster"].log_path)
    assert [line["msg"] for line in broadcaster].count("bad API key") == 1  # the failure is logged, not the key


def test_orders_are_logged_at_ingest_with_ids_and_reasons(stopped: Engine) -> None:
    lines = read_log(stopped.services["ingest"].log_path)
    accepted = {line["order_id"]: line for line in events(lines, "accepted")}
    assert stopped.facts["sell"] in accepted and stopped.facts["buy"] in accepted
    assert accepted[stopped.facts["buy"]]["client_id"] == "client-A"
    assert accepted[stopped.facts["buy"]]["instrument"] == "BTC-USD"
    reasons = [line["reason"] for line in events(lines, "rejected")]
    assert reasons.count("auth") == 3 and "validation" in reasons and "forbidden" in reasons
    assert "rate_limited" in reasons
    assert any(stopped.facts["buy"] in line["msg"] for line in lines if line["msg"].startswith("cancel requested"))


def test_trades_cancels_and_matcher_rejections_are_logged_by_the_persister(stopped: Engine) -> None:
    lines = read_log(stopped.services["persister"].log_path)
    facts = stopped.facts
    [trade] = events(lines, "trade")
    assert {k: trade[k] for k in ("trade_id", "instrument", "price", "quantity", "buy_order_id", "sell_order_id",
                                  "taker_side")} == {
        "trade_id": facts["trade"], "instrument": "BTC-USD", "price": "50000.00", "quantity": "0.2",
        "buy_order_id": facts["buy"], "sell_order_id": facts["sell"], "taker_side": "buy"}
    [cancelled] = events(lines, "cancelled")
    assert (cancelled["order_id"], cancelled["client_id"], cancelled["reason"], cancelled["filled_quantity"]) == (
        facts["buy"], "client-A", "user", "0.2")
    [rejected] = events(lines, "rejected")
    assert (rejected["order_id"], rejected["reason"]) == (facts["post_only"], "post_only_would_cross")


def test_workers_log_start_and_stop(stopped: Engine) -> None:
    for name in ("ingest", "matcher", "persister", "broadcaster"):
        lines = read_log(stopped.services[name].log_path)
        assert [line["event"] for line in lines if line.get("event") in ("start", "stop")] == ["start", "stop"], name
        assert {line["service"] for line in lines} == {name}


async def test_redis_lost_and_regained_are_logged(
        redis: Redis, redis_url: str, database_url: str, key_prefix: str, tmp_path: Path) -> None:
    target = make_url(redis_url.replace("redis://", "postgresql://"))
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 6379)
    await proxy.start()
    proxied = f"redis://127.0.0.1:{proxy.port}/{target.database or 0}"
    common = {"REDIS_URL": proxied, "REDIS_KEY_PREFIX": key_prefix, "DATABASE_URL": database_url,
              "INSTRUMENTS_FILE": str(TWO_INSTRUMENTS)}
    ports = {name: free_port() for name in ("matcher", "persister", "broadcaster")}
    services = {
        "matcher": Service("matcher", {**common, "MATCHER_METRICS_PORT": str(ports["matcher"])},
                           f"http://127.0.0.1:{ports['matcher']}/healthz", tmp_path / "matcher.log"),
        "persister": Service("persister", {**common, "PERSISTER_METRICS_PORT": str(ports["persister"]),
                                           "PERSISTER_BACKOFF_MAX_S": "0.5", "PERSISTER_SNAPSHOT_INTERVAL_S": "0"},
                             f"http://127.0.0.1:{ports['persister']}/healthz", tmp_path / "persister.log"),
        "broadcaster": Service("broadcaster", {**common, "BROADCASTER_PORT": str(ports["broadcaster"]),
                                               "BROADCASTER_READ_BLOCK_MS": "200"},
                               f"http://127.0.0.1:{ports['broadcaster']}/readyz", tmp_path / "broadcaster.log"),
    }
    try:
        for service in services.values():
            await asyncio.to_thread(service.start, 30)
        await proxy.cut()
        await asyncio.sleep(3)
        await proxy.restore()
        for name, service in services.items():
            for _ in range(100):
                if events(read_log(service.log_path), "redis_regained"):
                    break
                await asyncio.sleep(0.1)
            lines = read_log(service.log_path)
            assert len(events(lines, "redis_lost")) >= 1 and len(events(lines, "redis_regained")) >= 1, (name, lines)
            lost = [i for i, line in enumerate(lines) if line.get("event") == "redis_lost"]
            regained = [i for i, line in enumerate(lines) if line.get("event") == "redis_regained"]
            assert lost[0] < regained[-1], name
    finally:
        for service in services.values():
            # In a thread: the proxy runs on this event loop, and a worker stops only once its last command
            # through the proxy has its answer.
            await asyncio.to_thread(service.stop)
        await proxy.close()
