"""Times in analytics queries: parsing ISO-8601 or epoch milliseconds, aligning to UTC buckets."""

from __future__ import annotations

import datetime as dt
import re

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MS = dt.timedelta(milliseconds=1)
MINUTE = dt.timedelta(minutes=1)
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
# Far enough from datetime.max that a default window or a day's end never overflows.
LATEST = dt.datetime(9999, 12, 1, tzinfo=dt.UTC)
_EPOCH_MS = re.compile(r"^[0-9]{1,15}$")
# Every time a query parameter takes, exactly (the OpenAPI document publishes this pattern): epoch
# milliseconds, or an ISO-8601 date or date-time (UTC unless it names an offset; a '+' of an offset that
# arrived unencoded as a space is read as '+').
TIME_PATTERN = (r"^([0-9]{1,15}|[0-9]{4}-[0-9]{2}-[0-9]{2}"
                r"([T ][0-9]{2}(:[0-9]{2}(:[0-9]{2}([.][0-9]{1,6})?)?)?(Z|[+ -][0-9]{2}:?[0-9]{2})?)?)$")
_TIME = re.compile(TIME_PATTERN)
_LATEST_MS = (LATEST - EPOCH) // MS


def floor_to(moment: dt.datetime, step: dt.timedelta) -> dt.datetime:
    """The start of the UTC-aligned `step` bucket holding `moment`."""
    return EPOCH + ((moment - EPOCH) // step) * step


def ceil_to(moment: dt.datetime, step: dt.timedelta) -> dt.datetime:
    """The first UTC-aligned `step` boundary at or after `moment`."""
    floor = floor_to(moment, step)
    return floor if floor == moment else floor + step


def now_ms() -> dt.datetime:
    """Now, in whole milliseconds (the precision trades carry and answers show)."""
    return floor_to(dt.datetime.now(dt.UTC), MS)


def parse_time(raw: str) -> dt.datetime:
    """An ISO-8601 time (UTC when it names no offset) or epoch milliseconds, in whole milliseconds;
    ValueError for anything else."""
    if not _TIME.match(raw):
        raise ValueError(f"not an ISO-8601 time or epoch milliseconds: {raw[:40]!r}")
    text = raw
    outside = ValueError(f"{raw[:40]!r} is outside 1970-01-01 .. {LATEST.date()}")
    if _EPOCH_MS.match(text):
        milliseconds = int(text)
        # Compared before the addition: 15 digits of milliseconds reach past datetime.max (year 9999).
        if milliseconds > _LATEST_MS:
            raise outside
        moment = EPOCH + dt.timedelta(milliseconds=milliseconds)
    else:
        # A '+' of an offset arrives as a space when the query string was not encoded.
        if "T" in text and " " in text:
            text = text.replace(" ", "+")
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"not an ISO-8601 time or epoch milliseconds: {raw[:40]!r}") from exc
        try:
            moment = moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
        except OverflowError:  # 0001-01-01T00:00:00+01:00 is before datetime.min in UTC
            raise outside from None
    if not EPOCH <= moment <= LATEST:
        raise outside
    return floor_to(moment, MS)


DATE_PATTERN = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"


def parse_date(raw: str) -> dt.date:
    """A calendar date YYYY-MM-DD; ValueError for anything else."""
    if not re.match(DATE_PATTERN, raw):
        raise ValueError(f"not a date YYYY-MM-DD: {raw[:40]!r}")
    day = dt.date.fromisoformat(raw)
    if not EPOCH.date() <= day < LATEST.date():
        raise ValueError(f"{raw!r} is outside 1970-01-01 .. {LATEST.date()}")
    return day


def day_end(day: dt.date) -> dt.datetime:
    """The end of a UTC date: midnight at the start of the next."""
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC) + DAY
