"""scripts/bench_report.py reads k6 summaries and decides whether a rate was sustained end to end."""

from __future__ import annotations

from typing import Any

from scripts.bench_report import k6_figures, sustained
from scripts.probe_latency import summary

K6_SUMMARY: dict[str, Any] = {"metrics": {
    "http_reqs": {"count": 60000, "rate": 1999.5},
    "http_req_duration{name:POST /orders}": {"med": 1.2, "p(90)": 2.0, "p(95)": 2.5, "p(99)": 4.0,
                                             "p(99.9)": 9.0, "max": 20.0},
    "http_req_failed": {"value": 0.0, "passes": 0, "fails": 60000},
    "checks": {"passes": 180000, "fails": 0},
    "dropped_iterations": {"count": 3, "rate": 0.05},
}}
DRAINED = {"at_end": {"matcher": 0, "persister": 12}, "drained": True, "seconds": 0.3}
PROBE = {"socket_ms": {"count": 100, "p99": 12.0, "missing": 0}}


def test_k6_figures() -> None:
    figures = k6_figures(K6_SUMMARY)
    assert (figures["requests"], figures["p50"], figures["p99"], figures["dropped"]) == (60000, 1.2, 4.0, 3)


def test_sustained_only_when_every_stage_kept_up() -> None:
    step = {"k6": k6_figures(K6_SUMMARY), "drain": DRAINED, "probe": PROBE, "seconds": 30}
    assert sustained(step, 2000, 100) == (True, "kept up")
    slow_drain = {**step, "drain": {**DRAINED, "drained": False, "seconds": 30}}
    assert sustained(slow_drain, 2000, 100)[0] is False
    lost = {**step, "probe": {"socket_ms": {"count": 90, "p99": 12.0, "missing": 10}}}
    assert sustained(lost, 2000, 100)[0] is False
    assert sustained(step, 4000, 100)[0] is False  # only half the offered rate was accepted


def test_probe_percentiles() -> None:
    figures = summary([float(v) for v in range(1, 1001)])
    assert (figures["count"], figures["p50"], figures["p99"], figures["p999"], figures["max"]) == (
        1000, 501.0, 991.0, 1000.0, 1000.0)
    assert summary([]) == {"count": 0}
