"""Order ids: UUIDv7-style strings (48-bit millisecond timestamp, then random bits), sortable by time."""

from __future__ import annotations

import os
import time

_MS_MASK = (1 << 48) - 1
_RAND_A_MASK = (1 << 12) - 1
_RAND_B_MASK = (1 << 62) - 1
_LOW_48 = (1 << 48) - 1
_VARIANT = 0b10 << 14  # RFC 9562 variant, in the top bits of the fourth group


def new_order_id(now_ms: int | None = None) -> str:
    """A new id unique across instruments and restarts: time-ordered by millisecond, 74 random bits."""
    ms = (time.time_ns() // 1_000_000 if now_ms is None else now_ms) & _MS_MASK
    rand = int.from_bytes(os.urandom(10), "big")
    rand_b = rand & _RAND_B_MASK
    # 8-4-4-4-12 hex digits: the 48-bit ms, version 7 and rand_a (12 bits), variant and rand_b (62 bits).
    return (f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-7{(rand >> 62) & _RAND_A_MASK:03x}-"
            f"{_VARIANT | (rand_b >> 48):04x}-{rand_b & _LOW_48:012x}")


def id_timestamp_ms(order_id: str) -> int:
    """The millisecond timestamp an id was made at."""
    return int(order_id[:8] + order_id[9:13], 16)
