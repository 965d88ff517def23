"""Redis key names: client-chosen parts never collide, and every key of an instrument shares its slot."""

from __future__ import annotations

from redis.crc import key_slot

from services.common.keys import instrument_keys


def test_client_chosen_parts_are_length_prefixed_so_no_two_clients_share_a_key() -> None:
    keys = instrument_keys("t:", "BTC-USD")
    assert keys.idempotency("a:b", "c") != keys.idempotency("a", "b:c")
    assert keys.client_order_id("a:b", "c") != keys.client_order_id("a", "b:c")
    assert keys.idempotency("a:b", "c") == "t:idem:{BTC-USD}:3:a:b:c"
    assert keys.client_order_id("a", "b:c") == "t:coid:{BTC-USD}:1:a:b:c"


def test_every_key_built_from_client_strings_is_in_the_instruments_slot() -> None:
    keys = instrument_keys("t:", "BTC-USD")
    slot = key_slot(keys.orders.encode())
    for key in (keys.idempotency("x:{y}", "k:}"), keys.client_order_id("{a}", "b"), keys.rate_bucket("{c}:d"),
                keys.key_rate_bucket("0123abcd")):
        assert key_slot(key.encode()) == slot, key


def test_the_order_management_keys_follow_the_doc() -> None:
    keys = instrument_keys("t:", "BTC-USD")
    assert keys.deadlines == "t:dl:{BTC-USD}"
    assert keys.client_orders("client-A") == "t:co:{BTC-USD}:8:client-A"
    assert keys.client_orders("é") == "t:co:{BTC-USD}:2:é"  # bytes, as Lua's # counts
    assert keys.session_orders("s-1") == "t:cs:{BTC-USD}:s-1"
    assert keys.result("r-1") == "t:res:{BTC-USD}:r-1"
    slot = key_slot(keys.orders.encode())
    for key in (keys.deadlines, keys.client_orders("{a}"), keys.session_orders("}{"), keys.result("{r}")):
        assert key_slot(key.encode()) == slot, key
