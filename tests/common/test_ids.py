"""services/common/ids.py: UUIDv7-style order ids."""

from __future__ import annotations

import os
import re
import uuid

import pytest

from services.common.ids import id_timestamp_ms, new_order_id


def test_ids_are_uuid7_with_the_millisecond_timestamp() -> None:
    order_id = new_order_id(1_700_000_000_123)
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", order_id)
    parsed = uuid.UUID(order_id)
    assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
    assert id_timestamp_ms(order_id) == 1_700_000_000_123


def test_ids_are_unique_and_sort_by_time() -> None:
    assert len({new_order_id(5) for _ in range(10_000)}) == 10_000
    assert new_order_id(1_000) < new_order_id(1_001) < new_order_id()


def test_ids_lay_out_the_timestamp_and_the_random_bits_as_rfc_9562(monkeypatch: pytest.MonkeyPatch) -> None:
    random = bytes(range(0xF6, 0x100))  # 10 bytes: 80 bits, of which the id keeps 74
    monkeypatch.setattr(os, "urandom", lambda n: random[:n])
    ms = 0x0123_4567_89AB
    rand = int.from_bytes(random, "big")
    value = ms << 80 | 0x7 << 76 | ((rand >> 62) & 0xFFF) << 64 | 0b10 << 62 | rand & ((1 << 62) - 1)
    assert new_order_id(ms) == str(uuid.UUID(int=value))
