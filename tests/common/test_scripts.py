"""services/common/scripts.py: each Lua script against its one declaration (KEYS, ARGV, record, stream fields).

The first tests read the .lua files only (no Redis); the others run a script in Redis once, without the engine.
"""

from __future__ import annotations

import re
import time
from importlib import resources

import msgspec
import pytest
from redis.asyncio import Redis

from services.common import scripts
from services.common.instruments import Instruments
from services.common.keys import (
    DEADLINE_CLIENT,
    DEADLINE_SESSION,
    HALT_INSTRUMENT,
    ID_KEYS,
    InstrumentKeys,
    halt_of_client,
    instrument_keys,
)
from services.common.redis_batch import pack_args
from services.common.scripts import (
    ACCEPT,
    ACCEPT_SCRIPT,
    CANCEL,
    CANCEL_SCRIPT,
    INTERFACES,
    MATCH,
    MEMBER_FORMAT,
    MEMBER_ID_AT,
    AcceptArgv,
    AcceptKeys,
    AcceptOrderArgv,
    AcceptOrderKeys,
    BatchResult,
    BookKeys,
    CancelArgv,
    CancelKeys,
    InstrumentScriptKeys,
    MatchKeys,
    ScriptInterface,
    astuple,
    book_member,
    id_keys_lua,
    record_codec_lua,
)
from services.common.wire import (
    AmendCommand,
    AmendOutcome,
    CancelAllCommand,
    CancelAllOutcome,
    CancelCommand,
    NewOrderCommand,
    OrderRecord,
    decode_amend_outcome,
    decode_cancel_all_outcome,
    decode_record,
    encode_record,
    fields_to_dict,
)
from services.ingest.accept import Limits, Placement, _command_fields, accepted_record, packed_script_args, script_args
from services.ingest.validation import ValidOrder
from tests.matcher.order_harness import OrderHarness

RECORD_FIELDS = set(OrderRecord.__struct_fields__)
COMMANDS = (NewOrderCommand, CancelCommand, AmendCommand, CancelAllCommand)
COMMAND_TAGS = {command.__struct_config__.tag for command in COMMANDS}


def _code(interface: ScriptInterface) -> str:
    """The script's file without its comments."""
    source = resources.files(interface.package).joinpath(interface.filename).read_text()
    return re.sub(r"--[^\n]*", "", source)


def _struct_fields(struct: type[msgspec.Struct]) -> set[str]:
    fields = set(struct.__struct_fields__)
    tag = struct.__struct_config__.tag_field
    return fields | {tag} if tag is not None else fields


@pytest.mark.parametrize("interface", INTERFACES, ids=lambda i: i.filename)
def test_the_script_numbers_no_position_of_keys_or_argv(interface: ScriptInterface) -> None:
    assert re.findall(r"\b(?:KEYS|ARGV)\s*\[\s*\d", _code(interface)) == []


@pytest.mark.parametrize("interface", INTERFACES, ids=lambda i: i.filename)
def test_the_script_uses_exactly_the_declared_keys_and_argv(interface: ScriptInterface) -> None:
    code = _code(interface)
    # The migration guard is declared for Redis Cluster alone (test below): no script reads or writes it.
    keys = {f"K_{n.upper()}" for n in interface.keys if n != "migration_guard"}
    declared = {f"A_{n.upper()}" for n in interface.argv}
    if interface.argv_rest is not None:
        declared.add(f"A_{interface.argv_rest.upper()}_FROM")
    if interface.keys_each:
        keys |= {"K_EACH_FROM", "K_EACH_SIZE"}
    if interface.argv_each:
        declared |= {"A_EACH_FROM", "A_EACH_SIZE"}
    assert set(re.findall(r"\bK_[A-Z0-9_]+\b", code)) == keys
    assert set(re.findall(r"\bA_[A-Z0-9_]+\b", code)) == declared
    # Within an order's block: exactly the declared offsets, each read from KEYS / ARGV at a block's base.
    assert set(re.findall(r"\bKE_[A-Z0-9_]+\b", code)) == {f"KE_{n.upper()}" for n in interface.keys_each}
    assert set(re.findall(r"\bAE_[A-Z0-9_]+\b", code)) == {f"AE_{n.upper()}" for n in interface.argv_each}
    assert re.findall(r"\bKE_\w+", code) == re.findall(r"KEYS\[kb \+ (KE_\w+)\]", code)
    assert re.findall(r"\bAE_\w+", code) == re.findall(r"ARGV\[ab \+ (AE_\w+)\]", code)


@pytest.mark.parametrize("keys", [MatchKeys, CancelKeys, BookKeys], ids=lambda k: k.__name__)
def test_instrument_script_keys_are_instrument_keys(keys: type[InstrumentScriptKeys]) -> None:
    assert set(keys.__struct_fields__) <= set(InstrumentKeys.__struct_fields__)
    instrument = instrument_keys("p:", "BTC-USD")
    assert astuple(keys.of(instrument)) == tuple(getattr(instrument, n) for n in keys.__struct_fields__)


INSTRUMENT_KEY_NAMES = set(InstrumentKeys.__struct_fields__) - {"symbol", "prefix"}
# Every script of services/common/scripts.py that touches several keys of an instrument (a script of one key
# cannot be half-applied: it runs where its key is, following ASK).
INSTRUMENT_SCRIPTS = [v for v in vars(scripts).values() if isinstance(v, ScriptInterface)
                      and set(v.keys) & INSTRUMENT_KEY_NAMES and len(v.keys) + len(v.keys_each) > 1]


def test_every_script_of_several_instrument_keys_is_in_this_list() -> None:
    assert {i.filename for i in INSTRUMENT_SCRIPTS} >= {i.filename for i in INTERFACES} | {"amend.lua"}


@pytest.mark.parametrize("interface", INSTRUMENT_SCRIPTS, ids=lambda i: i.filename)
def test_every_instrument_script_declares_the_migration_guard_last(interface: ScriptInterface) -> None:
    # docs/scale-out.md: a key no one writes makes a multi-key call on a migrating slot TRYAGAIN before it
    # runs, so no script is half-applied on a moving instrument.
    assert interface.keys[-1] == "migration_guard"
    assert "K_MIGRATION_GUARD" not in _code(interface)
    assert instrument_keys("p:", "BTC-USD").migration_guard == "p:guard:{BTC-USD}"


@pytest.mark.parametrize("interface", INTERFACES, ids=lambda i: i.filename)
def test_what_a_script_writes_is_under_its_declared_keys(interface: ScriptInterface) -> None:
    assert {key for key, _ in interface.writes} <= set(interface.keys)


def test_the_prelude_is_one_line_and_the_sha_covers_it() -> None:
    for interface in INTERFACES:
        prelude = interface.prelude()
        assert prelude.count("\n") == 1 and prelude.endswith("\n")
        script = interface.script()
        assert script.source.startswith(prelude) and script.sha == interface.script().sha
    assert "local K_ORDERS, K_ORDER_STATE, K_KEY_RATE_BUCKET, K_HALTS, K_MIGRATION_GUARD = KEYS[1], KEYS[2], " \
           "KEYS[3], KEYS[4], KEYS[5]" in ACCEPT.prelude()
    assert "local K_EACH_FROM, K_EACH_SIZE = 6, 5 local KE_RATE_BUCKET, KE_IDEMPOTENCY, KE_CLIENT_ORDER_ID, " \
           "KE_CLIENT_ORDERS, KE_SESSION_ORDERS = 0, 1, 2, 3, 4" in ACCEPT.prelude()
    assert f"local A_EACH_FROM, A_EACH_SIZE = {len(AcceptArgv.__struct_fields__) + 1}, " \
           f"{len(AcceptOrderArgv.__struct_fields__)}" in ACCEPT.prelude()
    assert ACCEPT.argv_each[-1] == ACCEPT.argv_each_rest == "command_fields"


def test_a_per_item_tail_count_must_close_the_items_block() -> None:
    with pytest.raises(ValueError, match="must be the last"):
        ScriptInterface("services.ingest", "accept.lua", ("a",), ("b",), argv_each=("count", "other"),
                        argv_each_rest="count")


def test_match_lua_reads_only_command_fields() -> None:
    code = _code(MATCH)
    read = set(re.findall(r"\bf\.(\w+)", code))
    assert read <= set().union(*(_struct_fields(command) for command in COMMANDS))
    assert set(re.findall(r"f\.cmd == '(\w+)'", code)) == COMMAND_TAGS


def test_match_lua_builds_a_new_order_with_every_record_field() -> None:
    code = _code(MATCH)
    body = code[code.index("local function parse_new"):code.index("local function reject_invalid")]
    table = body[body.rindex("return {"):]
    assert set(re.findall(r"(\w+)\s*=[^=]", table)) == RECORD_FIELDS


def test_match_lua_replies_with_every_batch_result_field() -> None:
    code = _code(MATCH)
    stats = re.search(r"local stats = \{([^}]*)\}", code)
    nothing_new = re.search(r"return reply_of\(\{([^}]*)\}\)", code)
    assert stats is not None and nothing_new is not None
    fields = set(BatchResult.__struct_fields__)
    assert set(re.findall(r"(\w+) =", stats[1])) == fields == set(re.findall(r"(\w+) =", nothing_new[1]))
    assert set(re.findall(r"\bstats\.(\w+)", code)) <= fields
    assert "return reply_of(stats)" in code


@pytest.mark.parametrize("interface", [MATCH, CANCEL], ids=lambda i: i.filename)
def test_record_fields_read_in_lua_exist(interface: ScriptInterface) -> None:
    used = set(re.findall(r"\b(?:o|maker|taker|buy|sell|known|record)\.(\w+)", _code(interface)))
    assert used and used <= RECORD_FIELDS


def test_match_lua_takes_the_member_layout_from_the_declaration() -> None:
    code = _code(MATCH)
    assert "MEMBER_FORMAT" in code and "MEMBER_ID_AT" in code
    assert re.findall(r"%0\d+d:", code) == []  # (%06d is the notional limb, not a member)
    member = book_member(42, "o-1")
    assert member == MEMBER_FORMAT % 42 + "o-1" and member[MEMBER_ID_AT - 1:] == "o-1"


# In Redis's Lua ----------------------------------------------------------------------------------

RECORD = OrderRecord(
    order_id="0123456789abcdef0123456789ab", client_id="client-é", client_order_id="", side="sell",
    type="limit", time_in_force="GTC", post_only=1, price_ticks=2**53 - 1, quantity_lots=123_456_789,
    filled_lots=7, status="partially_filled", reason="x" * 40, created_at=1_764_633_600_123,
    updated_at=1_764_633_600_456, arrival_seq=2**32 + 1, notional_hi=99_999_999, notional_lo=999_999,
)

ROUND_TRIP = record_codec_lua() + """
local o = unpack_record(ARGV[1])
local named = {}
for name, value in pairs(o) do named[#named + 1] = name; named[#named + 1] = value end
return {pack_record(o), named}
"""


async def test_an_order_record_round_trips_through_cmsgpack(redis: Redis) -> None:
    packed, named = await redis.eval(ROUND_TRIP, 0, encode_record(RECORD))
    assert packed == encode_record(RECORD)
    assert decode_record(packed) == RECORD
    by_name = {named[i].decode(): named[i + 1] for i in range(0, len(named), 2)}
    expected = msgspec.structs.asdict(RECORD)
    assert by_name == {k: v.encode() if isinstance(v, str) else v for k, v in expected.items()}


async def test_a_record_written_before_the_appended_fields_reads_with_their_defaults(redis: Redis) -> None:
    # The 17-field layout of records stored before issue 15: nil in Lua, absent in Python, becomes the default.
    old = msgspec.msgpack.encode(list(msgspec.structs.astuple(RECORD))[:17])
    assert decode_record(old) == RECORD
    assert (RECORD.self_trade_prevention, RECORD.session) == ("none", "")
    packed, named = await redis.eval(ROUND_TRIP, 0, old)
    assert decode_record(packed) == RECORD
    by_name = {named[i].decode(): named[i + 1] for i in range(0, len(named), 2)}
    assert (by_name["self_trade_prevention"], by_name["session"]) == (b"none", b"")
    newer = msgspec.structs.replace(RECORD, self_trade_prevention="cancel_both", session="s-9")
    packed, _ = await redis.eval(ROUND_TRIP, 0, encode_record(newer))
    assert decode_record(packed) == newer


ID_KEYS_IN_LUA = id_keys_lua(ID_KEYS) + """
local key = id_keys(ARGV[1], ARGV[2])
local names = {}
for i = 3, #ARGV do
  names[#names + 1] = key.client_orders(ARGV[i])
  names[#names + 1] = key.session_orders(ARGV[i])
  names[#names + 1] = key.result(ARGV[i])
end
return {names, DEADLINE_CLIENT, DEADLINE_SESSION}
"""


async def test_lua_names_the_id_keys_exactly_as_keys_py(redis: Redis) -> None:
    ids = ["client-1", "a:b", "{x}", "é-ü", ""]
    names, client, session = await redis.eval(ID_KEYS_IN_LUA, 0, "p:", "BTC-USD", *ids)
    keys = instrument_keys("p:", "BTC-USD")
    assert [n.decode() for n in names] == [
        name for i in ids for name in (keys.client_orders(i), keys.session_orders(i), keys.result(i))]
    assert (client.decode(), session.decode()) == (DEADLINE_CLIENT, DEADLINE_SESSION)
    assert {k.name for k in ID_KEYS} <= set(dir(InstrumentKeys))
    assert "id_keys(prefix, symbol)" in MATCH.prelude()


async def test_the_member_layout_in_lua_is_book_member(redis: Redis) -> None:
    script = MATCH.prelude() + "return {string.format(MEMBER_FORMAT, 42) .. 'o-1', MEMBER_ID_AT}"
    keys = [f"unused-{i}" for i in range(len(MATCH.keys))]
    member, at = await redis.eval(script, len(keys), *keys, *[""] * len(MATCH.argv))
    assert (member.decode(), at) == (book_member(42, "o-1"), MEMBER_ID_AT)


def _fields(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[dict[str, str]]:
    return [fields_to_dict(f) for _, f in entries]


async def test_match_lua_writes_the_fields_of_the_wire_structs(redis: Redis, key_prefix: str,
                                                               instruments: Instruments) -> None:
    h = OrderHarness(redis, instruments["BTC-USD"], key_prefix)  # through accept.lua: the client's index too
    await h.prepare()
    await h.new("sell", "100", "1", order_id="maker")  # accepted, rests
    await h.new("buy", "100", "0.4", order_id="taker")  # accepted, trade, filled + partially_filled
    await h.new("buy", "101", "1", order_id="cross", post_only=True)  # rejected: would cross
    await h.cancel("maker")  # cancelled
    await h.cancel("maker")  # cancel_rejected of a known order
    await h.cancel("nobody")  # cancel_rejected of an unknown order
    await h.new("buy", "99", "1", order_id="resting")
    await h.redis.xadd(h.keys.orders, msgspec.to_builtins(AmendCommand(  # amended
        order_id="resting", client_id="client-1", request_id="r1", price_ticks="", quantity_lots="50000000", ts="0")))
    await h.redis.xadd(h.keys.orders, msgspec.to_builtins(AmendCommand(  # amend_rejected
        order_id="taker", client_id="client-1", request_id="r2", price_ticks="9000", quantity_lots="", ts="0")))
    await h.redis.xadd(h.keys.orders, msgspec.to_builtins(CancelAllCommand(  # cancelled, the outcome
        client_id="client-1", side="", reason="user", request_id="r3", requester="admin", ts="0")))
    await h.run()

    written = dict(MATCH.writes)
    for stream in ("trades", "book"):
        entries = _fields(await redis.xrange(getattr(h.keys, stream)))
        assert entries and all(set(e) == set(written[stream].__struct_fields__) for e in entries), stream

    event_struct = written["events"]
    everything = set(event_struct.__struct_fields__)
    required = _required(event_struct)
    kinds = set()
    for event in _fields(await redis.xrange(h.keys.events)):
        kinds.add(event["event"])
        # Every event carries command_id; accepted and rejected also carry every field of the order, amended
        # too and `requeued`, its alone (self_trade_prevention only when not none: these orders have none).
        with_order = everything - {"requeued", "self_trade_prevention"}
        if event["event"] == "amended":
            expected = with_order | {"requeued"}
        elif event["event"] in ("accepted", "rejected"):
            expected = with_order
        else:
            expected = required | {"command_id"}
        assert set(event) == expected, event
        msgspec.convert(event, event_struct)
    assert kinds == {"accepted", "filled", "partially_filled", "rejected", "cancelled", "cancel_rejected",
                     "amended", "amend_rejected"}

    # The outcomes decode with the Structs ingest uses.
    assert decode_amend_outcome(await redis.get(h.keys.result("r1")) or b"") == AmendOutcome("amended", "")
    assert decode_amend_outcome(await redis.get(h.keys.result("r2")) or b"") == AmendOutcome(
        "amend_rejected", "already_filled")
    assert decode_cancel_all_outcome(await redis.get(h.keys.result("r3")) or b"") == CancelAllOutcome(["resting"])
    assert 599_000 < await redis.pttl(h.keys.result("r3")) <= 600_000

    assert written["order_state"] is OrderRecord
    records = await redis.hgetall(h.keys.order_state)
    assert {decode_record(v).order_id for v in records.values()} == {"maker", "taker", "cross", "resting"}


def _required(struct: type[msgspec.Struct]) -> set[str]:
    """The fields without a default."""
    fields = struct.__struct_fields__
    return set(fields[:len(fields) - len(struct.__struct_defaults__)])


def _keys(key_prefix: str) -> InstrumentKeys:
    return instrument_keys(key_prefix, "BTC-USD")


async def test_accept_lua_writes_a_new_order_command_and_the_record(redis: Redis, key_prefix: str) -> None:
    keys = _keys(key_prefix)
    record = msgspec.structs.replace(RECORD, status="accepted", filled_lots=0, arrival_seq=0)
    second = msgspec.structs.replace(record, order_id="second", client_id="c2", quantity_lots=5)
    script_keys = [*astuple(AcceptKeys(keys.orders, keys.order_state, keys.key_rate_bucket("k"), keys.halts,
                                       keys.migration_guard))]
    argv: list[object] = [*astuple(AcceptArgv(rate=0, burst=0, key_rate=0, key_burst=0, overloaded="0", ttl_s=60,
                                              halt_instrument=HALT_INSTRUMENT))]
    second = msgspec.structs.replace(second, self_trade_prevention="decrement", session="sess-1")
    for r in (record, second):
        script_keys += astuple(AcceptOrderKeys(keys.rate_bucket(r.client_id), keys.idempotency(r.client_id, ""),
                                               keys.client_order_id(r.client_id, ""), keys.client_orders(r.client_id),
                                               keys.session_orders(r.session)))
        command = _command_fields(r)
        argv += [*astuple(AcceptOrderArgv(fingerprint="", answer=b"", order_id=r.order_id, record=encode_record(r),
                                          has_idempotency_key="0", has_client_order_id="0",
                                          created_at=r.created_at, has_session="1" if r.session else "0",
                                          halt_client=halt_of_client(r.client_id),
                                          command_fields=len(command))), *command]
    replies = await ACCEPT_SCRIPT(redis, script_keys, argv)
    assert [reply[0] for reply in replies] == [b"ok", b"ok"]
    entries = await redis.xrange(keys.orders)
    assert [entry_id for entry_id, _ in entries] == [reply[1] for reply in replies]
    commands = [fields_to_dict(fields) for _, fields in entries]
    # A field with a default is on the entry only when the order's value differs from it.
    assert set(commands[0]) == _struct_fields(NewOrderCommand) - {"self_trade_prevention", "session"}
    assert set(commands[1]) == _struct_fields(NewOrderCommand)
    assert [msgspec.convert(c, NewOrderCommand).order_id for c in commands] == [record.order_id, "second"]
    assert decode_record(await redis.hget(keys.order_state, record.order_id)) == record
    assert decode_record(await redis.hget(keys.order_state, "second")) == second
    assert msgspec.convert(commands[0], NewOrderCommand).self_trade_prevention == "none"
    assert msgspec.convert(commands[1], NewOrderCommand).self_trade_prevention == "decrement"
    # Both orders join their client's live orders (score created_at); only the second came through a session.
    assert await redis.zrange(keys.client_orders(record.client_id), 0, -1, withscores=True) == [
        (record.order_id.encode(), float(record.created_at))]
    assert await redis.zrange(keys.client_orders("c2"), 0, -1) == [b"second"]
    assert await redis.smembers(keys.session_orders("sess-1")) == {b"second"}
    assert await redis.exists(keys.session_orders("")) == 0


async def test_cancel_lua_reads_the_record_and_writes_a_cancel_command(redis: Redis, key_prefix: str) -> None:
    keys = _keys(key_prefix)
    await redis.hset(keys.order_state, RECORD.order_id, encode_record(RECORD))
    now = str(int(time.time() * 1000))
    keys_ = astuple(CancelKeys.of(keys))
    forbidden = await CANCEL_SCRIPT(redis, keys_, astuple(CancelArgv(RECORD.order_id, "other", "other", now)))
    assert forbidden == [b"forbidden"]
    argv = CancelArgv(order_id=RECORD.order_id, only_client_id=RECORD.client_id, requester="admin", ts=now)
    kind, packed = await CANCEL_SCRIPT(redis, keys_, astuple(argv))
    assert (kind, decode_record(packed)) == (b"requested", RECORD)
    (_, fields), = await redis.xrange(keys.orders)
    command = fields_to_dict(fields)
    assert set(command) == _struct_fields(CancelCommand)
    assert msgspec.convert(command, CancelCommand) == CancelCommand(RECORD.order_id, "admin", now)


def test_accept_packs_the_optional_command_fields_as_the_plain_form_does(instruments: Instruments) -> None:
    # packed_script_args (ingest's hot path) builds RESP itself; with a self-trade mode or a session the entry
    # has more fields, and the ARGV count must follow.
    keys = _keys("p:")
    placements = []
    for n, (mode, session) in enumerate((("none", ""), ("decrement", ""), ("none", "s-1"), ("cancel_both", "s-2"))):
        order = ValidOrder(instrument=instruments["BTC-USD"], client_id=f"c{n}", client_order_id="", side="buy",
                           type="limit", time_in_force="GTC", post_only=False, price_ticks=100 + n,
                           quantity_lots=5, idempotency_key=None, self_trade_prevention=mode)  # type: ignore[arg-type]
        record = accepted_record(order, f"o{n}", 1_700_000_000_000 + n, session=session)
        placements.append(Placement(order, record, b""))
    limits = Limits(rate_per_sec=0, burst=1, key_id="", key_rate_per_sec=0, key_burst=1, overloaded=False,
                    idempotency_ttl_s=60)
    for some in ([placements[0]], placements[1:3], placements):
        script_keys, argv = script_args(keys, some, limits)
        key_count, packed, count = packed_script_args(keys, some, limits)
        assert (key_count, count) == (len(script_keys), len(script_keys) + len(argv))
        assert packed == pack_args((*script_keys, *argv))
    fields = _command_fields(placements[3].record)
    assert fields[-4:] == ["self_trade_prevention", "cancel_both", "session", "s-2"]
