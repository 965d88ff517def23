"""services/common/times.py: ISO-8601 UTC with milliseconds."""

from __future__ import annotations

import datetime as dt

from services.common.times import iso_ms


def test_iso_ms_is_the_utc_time_with_milliseconds() -> None:
    assert iso_ms(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"


def test_iso_ms_of_each_millisecond_of_a_second_and_the_next() -> None:
    # The seconds' text is cached: every millisecond still gets its own, across second boundaries.
    start = 1_764_633_599_000
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    for ms in (*range(start, start + 2_001, 7), start - 1):
        expected = (epoch + dt.timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        assert iso_ms(ms) == expected
