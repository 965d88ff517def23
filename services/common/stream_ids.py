"""Redis stream entry ids (`<ms>-<seq>`) as comparable pairs."""

from __future__ import annotations

import re

StreamId = tuple[int, int]
ZERO: StreamId = (0, 0)
_ID = re.compile(r"([0-9]{1,19})-([0-9]{1,19})")


def is_stream_id(value: str) -> bool:
    """Whether `value` is a complete entry id, both parts below 2^63 (PostgreSQL's BIGINT)."""
    found = _ID.fullmatch(value)
    return found is not None and max(int(found[1]), int(found[2])) < 2**63


def parse_stream_id(value: str) -> StreamId:
    """`<ms>-<seq>` (or a bare `<ms>`, as Redis accepts) as a pair; ValueError otherwise."""
    ms, _, seq = value.partition("-")
    if not ms.isascii() or not ms.isdigit() or not (seq == "" or (seq.isascii() and seq.isdigit())):
        raise ValueError(f"not a stream entry id: {value!r}")
    return int(ms), int(seq or 0)


def format_stream_id(entry_id: StreamId) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"
