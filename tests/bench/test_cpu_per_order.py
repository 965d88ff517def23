"""scripts/cpu_per_order.py: CPU seconds per process over a run, divided by the orders ingest accepted."""

from __future__ import annotations

from typing import Any

from scripts.cpu_per_order import report, us_per_order

CPU: dict[str, Any] = {"seconds": 30.0, "accepted": 30_000, "cpu_seconds": {
    "ingest": 6.0, "matcher": 1.5, "persister": 3.0, "broadcaster": 1.5, "redis": 4.5, "postgres": 1.2,
    "circusd": 0.03, "k6": 5.0, "probe": 1.0, "machine (all processes)": 40.0}}


def test_per_process_and_total_without_the_load_generator() -> None:
    figures = us_per_order(CPU)
    assert {name: round(value) for name, value in figures.items()} == {
        "ingest": 200, "matcher": 50, "persister": 100, "broadcaster": 50, "redis": 150, "postgres": 40,
        "circusd": 1, "server total": 591}


def test_no_figures_without_a_count() -> None:
    assert us_per_order({**CPU, "accepted": None}) == {}
    assert us_per_order({}) == {}


def test_the_report_has_a_column_per_rate_and_names_the_log_settings() -> None:
    doubled = {**CPU, "accepted": 60_000}
    lines = report({"cpu-1000": CPU, "rate-2000": doubled}, "LOG_LEVEL=INFO, LOG_ORDERS=0 (as shipped)")
    assert "| process | 1,000/s (µs/order) | 2,000/s (µs/order) |" in lines
    assert "| ingest | 200 | 100 |" in lines
    assert "| **server total** | **591** | **296** |" in lines
    assert any("LOG_ORDERS=0 (as shipped)" in line for line in lines)
    assert report({"rate-2000": {**CPU, "accepted": None}}, "-") == []
