"""services/common/ids.py: UUIDv7-style order ids."""

from __future__ import annotations

import re
import uuid

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
