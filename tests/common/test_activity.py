"""The `activity` line: counts of what a service did, logged every interval instead of a line per order."""

from __future__ import annotations

import asyncio
import logging

import pytest

from services.common.activity import ActivityLog


def lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "activity"]


def test_counts_and_reasons_in_one_line_then_reset(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="services.common.activity")
    activity = ActivityLog("ingest", 10)
    for _ in range(3):
        activity.count("accepted")
    activity.count("rejected", reason="auth")
    activity.count("rejected", reason="auth")
    activity.count("rejected", reason="validation")
    activity.flush()
    [line] = lines(caplog)
    assert line.counts == {"accepted": 3, "rejected": 3}  # type: ignore[attr-defined]
    assert line.reasons == {"rejected": {"auth": 2, "validation": 1}}  # type: ignore[attr-defined]
    assert line.getMessage().startswith("ingest in the last ") and "3 accepted, 3 rejected" in line.getMessage()
    activity.flush()  # nothing since: no line
    assert len(lines(caplog)) == 1


async def test_periodic_lines_and_the_last_one_at_close(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="services.common.activity")
    activity = ActivityLog("persister", 0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(activity.run(stop))
    activity.count("trades", 2)
    await asyncio.sleep(0.12)
    activity.count("trades", 5)
    stop.set()
    await task
    activity.close()
    counts = [r.counts["trades"] for r in lines(caplog)]  # type: ignore[attr-defined]
    assert counts == [2, 5]


async def test_interval_zero_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="services.common.activity")
    activity = ActivityLog("ingest", 0)
    activity.count("accepted")
    await activity.run(asyncio.Event())  # returns at once
    activity.close()
    assert lines(caplog) == []
