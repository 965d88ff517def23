"""Order ids: UUIDv7-style strings (48-bit millisecond timestamp, then random bits), sortable by time."""

from __future__ import annotations

import os
import time

_RAND_A_MASK = (1 << 12) - 1
_RAND_B_MASK = (1 << 62) - 1


def new_order_id(now_ms: int | None = None) -> str:
    """A new id unique across instruments and restarts: time-ordered by millisecond, 74 random bits."""
    ms = (time.time_ns() // 1_000_000 if now_ms is None else now_ms) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (ms << 80)
        | (0x7 << 76)  # version 7
        | ((rand >> 62) & _RAND_A_MASK) << 64
        | (0b10 << 62)  # RFC 9562 variant
        | (rand & _RAND_B_MASK)
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def id_timestamp_ms(order_id: str) -> int:
    """The millisecond timestamp an id was made at."""
    return int(order_id[:8] + order_id[9:13], 16)
