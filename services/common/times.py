"""How times look on every surface a user sees: ISO-8601 UTC with milliseconds ("2026-11-25T01:02:03.456Z")."""

from __future__ import annotations

import datetime as dt
import functools
import time


def iso_ms(ms: int) -> str:
    """Milliseconds since the epoch (the streams' `ts`) as ISO-8601 UTC with milliseconds."""
    seconds, millis = divmod(ms, 1000)
    return f"{_iso_seconds(seconds)}.{millis:03d}Z"


@functools.lru_cache(maxsize=256)
def _iso_seconds(seconds: int) -> str:
    # strftime is most of iso_ms's cost, and the orders of one second share it (a 201 formats two times).
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def iso(moment: dt.datetime) -> str:
    """A timezone-aware datetime (PostgreSQL timestamptz) as ISO-8601 UTC with milliseconds."""
    utc = moment.astimezone(dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
