"""The interface of every Lua script, declared once: its KEYS and ARGV in order, and what it writes.

Each script's KEYS and ARGV are an array-like Struct: callers build them by field name and pass
`astuple(...)` (msgspec, in C: about 250 ns more per order than a list literal on ingest's hot path).
The loader puts one generated line in front of the script's file that names every position
(`local K_ORDERS, K_ORDER_STATE = KEYS[1], KEYS[2] local A_ORDER_ID = ARGV[1] ...`), plus the order
record's msgpack codec and the book member layout where the script needs them. So a position is
written only here; the .lua files read names. The generated line is a function of this module alone,
so a script's SHA (EVALSHA) stays stable per content; being one line, file line n is script line n + 1
in Redis's error messages. tests/common/test_scripts.py holds each file to its declaration.
"""

from __future__ import annotations

import keyword
from dataclasses import dataclass
from typing import Any, Self

import msgspec

from services.common.keys import DEADLINE_CLIENT, DEADLINE_SESSION, ID_KEYS, IdKey, InstrumentKeys
from services.common.lua import LuaScript
from services.common.risk_limits import PCT_SCALE
from services.common.wire import (
    BookEntry,
    CancelCommand,
    EventEntry,
    NewOrderCommand,
    OrderRecord,
    TradeEntry,
    text,
)

# A resting order's member in its side's zset: "<zero-padded arrival seq>:<order id>". Equal prices sort
# by member, so the padding gives time priority; the order id starts at MEMBER_ID_AT (1-based, Lua).
MEMBER_SEQ_DIGITS = 16
MEMBER_FORMAT = f"%0{MEMBER_SEQ_DIGITS}d:"
MEMBER_ID_AT = MEMBER_SEQ_DIGITS + 2


def book_member(arrival_seq: int, order_id: str) -> str:
    """The zset member of a resting order, as match.lua's member_of writes it."""
    return MEMBER_FORMAT % arrival_seq + order_id


class ScriptArgs(msgspec.Struct, frozen=True, array_like=True):
    """KEYS or ARGV of a script, in order: `astuple()` is the list to pass."""


class InstrumentScriptKeys(ScriptArgs, frozen=True):
    """KEYS that are all keys of one instrument: each field is named after an InstrumentKeys attribute."""

    @classmethod
    def of(cls, keys: InstrumentKeys) -> Self:
        return cls(*[getattr(keys, name) for name in cls.__struct_fields__])


astuple = msgspec.structs.astuple


# match.lua ---------------------------------------------------------------------------------------

class BatchResult(msgspec.Struct, frozen=True, array_like=True):
    """What one match.lua call did: its reply, these fields in this order (its generated reply_of)."""

    applied: int  # commands
    last_id: str  # the orders-stream id the group has read up to
    trades: int
    new_orders: int
    rejected: int
    cancels: int
    invalid: int
    matched: int  # orders matched: each taker with a fill once, each maker once per fill
    # Risk limits (issue 16): new orders rejected for the price band and for the open-order cap (both also in
    # `rejected`), market orders whose rest their protection cancelled, amends rejected for the band.
    price_band: int = 0
    max_open_orders: int = 0
    market_protection: int = 0
    amend_price_band: int = 0


def batch_result(reply: list[Any]) -> BatchResult:
    """match.lua's reply as a BatchResult."""
    return msgspec.convert([text(v) if isinstance(v, bytes) else v for v in reply], BatchResult)


# match.lua (keys and arguments) ---------------------------------------------------------------------------------------

class MatchKeys(InstrumentScriptKeys, frozen=True):
    """KEYS of match.lua; the names are InstrumentKeys' attributes."""

    orders: str
    trades: str
    events: str
    book: str
    bid_orders: str
    ask_orders: str
    bid_levels: str
    ask_levels: str
    bid_depth: str
    ask_depth: str
    order_state: str
    meta: str
    deadlines: str  # swept at the start of every call
    open_counts: str  # client id -> resting orders: the open-order cap's count
    matcher_lease: str  # must hold `holder` (ARGV), else the call returns NOLEASE having done nothing
    migration_guard: str  # never written, never read: TRYAGAIN while the slot migrates (docs/scale-out.md)


class MatchArgv(ScriptArgs, frozen=True):
    """ARGV of match.lua. The keys named after a client, session or request id (keys.ID_KEYS: co, cs, res) are
    built inside the script from key_prefix and symbol by the generated id_keys: they cannot be known before
    the commands are read. All carry the instrument's hash tag, so they are in the slot of the KEYS."""

    group: str
    consumer: str
    max_commands: str
    symbol: str
    price_multiplier: str  # a tick is price_multiplier units of 10^-price_decimals
    price_decimals: str
    quantity_multiplier: str
    quantity_decimals: str
    key_prefix: str  # the engine's REDIS_KEY_PREFIX
    # The instrument's risk limits (Instrument.risk), 0 = off: percentages as pct x PCT_SCALE (hundredths of a
    # percent), compared in integers against risk_scale = 100 x PCT_SCALE.
    price_band_bp: str
    market_protection_bp: str
    max_open_orders: str
    risk_scale: str
    holder: str  # the calling matcher's lease-holder id (MATCHER_CONSUMER)


RISK_SCALE = 100 * PCT_SCALE  # a percentage of pct_bp is the fraction pct_bp / RISK_SCALE


# accept.lua --------------------------------------------------------------------------------------
# N orders of one instrument per call (POST /orders is N = 1, POST /orders/batch one call per instrument):
# KEYS are AcceptKeys then AcceptOrderKeys per order; ARGV is AcceptArgv then, per order, AcceptOrderArgv
# followed by its `command_fields` values (the orders-stream entry's field/value pairs).

class AcceptKeys(ScriptArgs, frozen=True):
    """KEYS of accept.lua shared by every order of the call."""

    orders: str
    order_state: str
    key_rate_bucket: str  # the API key's, in this instrument's slot
    halts: str  # the admin halts in force (issue 16), read once per call
    migration_guard: str  # never written, never read: TRYAGAIN while the slot migrates (docs/scale-out.md)


class AcceptOrderKeys(ScriptArgs, frozen=True):
    """KEYS of one order of an accept.lua call: named even when unused, so every key is in the call."""

    rate_bucket: str  # the client's
    idempotency: str
    client_order_id: str
    client_orders: str  # the client's live orders (ZADD)
    session_orders: str  # the COD session's orders (SADD when the order has a session)


class AcceptArgv(ScriptArgs, frozen=True):
    """ARGV of accept.lua shared by every order of the call."""

    rate: int  # the client bucket's tokens per second, 0 = no limit
    burst: int
    key_rate: int  # the API key bucket's, 0 = no limit
    key_burst: int
    overloaded: str  # "1" | "0"
    ttl_s: int  # of the idempotency and client order id records
    halt_instrument: str  # the instrument's own field in halts (keys.HALT_INSTRUMENT)


class AcceptOrderArgv(ScriptArgs, frozen=True):
    """ARGV of one order of an accept.lua call; `command_fields` values follow (the stream entry's pairs)."""

    fingerprint: str  # 64 hex, "" without an idempotency key
    answer: bytes  # the 201 body to replay, b"" without an idempotency key
    order_id: str
    record: bytes  # the packed OrderRecord (encode_record)
    has_idempotency_key: str  # "1" | "0"
    has_client_order_id: str  # "1" | "0"
    created_at: int  # ms: the order's score in client_orders
    has_session: str  # "1" | "0"
    halt_client: str  # the order's client's field in halts (keys.halt_of_client)
    command_fields: int  # how many ARGV values follow this block


# cancel.lua --------------------------------------------------------------------------------------

class CancelKeys(InstrumentScriptKeys, frozen=True):
    """KEYS of cancel.lua."""

    orders: str
    order_state: str
    migration_guard: str  # never written, never read: TRYAGAIN while the slot migrates (docs/scale-out.md)


class CancelArgv(ScriptArgs, frozen=True):
    """ARGV of cancel.lua."""

    order_id: str
    only_client_id: str  # "" = any owner (broker, admin)
    requester: str
    ts: str  # ms


# book.lua ----------------------------------------------------------------------------------------

class BookKeys(InstrumentScriptKeys, frozen=True):
    """KEYS of book.lua."""

    bid_levels: str
    ask_levels: str
    bid_depth: str
    ask_depth: str
    meta: str
    migration_guard: str  # never written, never read: TRYAGAIN while the slot migrates (docs/scale-out.md)


class BookArgv(ScriptArgs, frozen=True):
    """ARGV of book.lua."""

    levels: str  # per side


# Declarations -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ScriptInterface:
    """One script's file, its KEYS and ARGV names in order, and the Structs of what it writes, by key.

    A script taking several items per call (accept.lua: orders) declares the per-item names too: KEYS are
    `keys` then `keys_each` per item; ARGV is `argv` then per item `argv_each`, whose last field
    (`argv_each_rest`) counts the values that follow the item's block. The prelude names the fixed positions
    (K_*, A_*) and the offsets within an item's block (KE_*, AE_*: 0-based), with K_EACH_FROM / K_EACH_SIZE
    and A_EACH_FROM / A_EACH_SIZE."""

    package: str
    filename: str
    keys: tuple[str, ...]
    argv: tuple[str, ...]
    argv_rest: str | None = None  # name of the variable tail of ARGV (A_<NAME>_FROM is its first index)
    keys_each: tuple[str, ...] = ()
    argv_each: tuple[str, ...] = ()
    argv_each_rest: str | None = None  # the last of argv_each: how many values follow an item's block
    record_codec: bool = False  # the script gets unpack_record / pack_record
    book_member: bool = False  # the script gets MEMBER_FORMAT / MEMBER_ID_AT
    id_keys: tuple[IdKey, ...] = ()  # the script gets id_keys(prefix, symbol) and the DEADLINE_* member prefixes
    reply: type[msgspec.Struct] | None = None  # array-like: the script gets reply_of(table by field name)
    writes: tuple[tuple[str, type[msgspec.Struct]], ...] = ()

    def __post_init__(self) -> None:
        if self.argv_each_rest is not None and self.argv_each[-1:] != (self.argv_each_rest,):
            raise ValueError(f"{self.filename}: {self.argv_each_rest!r} must be the last per-item ARGV field")
        if self.argv_rest is not None and self.argv_each:
            raise ValueError(f"{self.filename}: a variable ARGV tail and per-item ARGV blocks exclude each other")

    def prelude(self) -> str:
        """The generated first line: every position by name, and the codecs the script asked for."""
        parts = [_locals("K_", self.keys, "KEYS"), _locals("A_", self.argv, "ARGV")]
        if self.argv_rest is not None:
            parts.append(f"local A_{self.argv_rest.upper()}_FROM = {len(self.argv) + 1}")
        if self.keys_each:
            parts.append(f"local K_EACH_FROM, K_EACH_SIZE = {len(self.keys) + 1}, {len(self.keys_each)}")
            parts.append(_offsets("KE_", self.keys_each))
        if self.argv_each:
            parts.append(f"local A_EACH_FROM, A_EACH_SIZE = {len(self.argv) + 1}, {len(self.argv_each)}")
            parts.append(_offsets("AE_", self.argv_each))
        if self.book_member:
            parts.append(f"local MEMBER_FORMAT, MEMBER_ID_AT = '{MEMBER_FORMAT}', {MEMBER_ID_AT}")
        if self.id_keys:
            parts.append(id_keys_lua(self.id_keys))
        if self.record_codec:
            parts.append(record_codec_lua())
        if self.reply is not None:
            values = ", ".join(f"r.{_lua_name(n)}" for n in self.reply.__struct_fields__)
            parts.append(f"local function reply_of(r) return {{{values}}} end")
        return " ".join(parts) + "\n"

    def script(self) -> LuaScript:
        return LuaScript(self.package, self.filename, self.prelude())


def _lua_name(name: str) -> str:
    if not name.isidentifier() or keyword.iskeyword(name) or name in _LUA_KEYWORDS:
        raise ValueError(f"{name!r} cannot be a Lua name")
    return name


_LUA_KEYWORDS = frozenset({"and", "break", "do", "else", "elseif", "end", "false", "for", "function", "if",
                           "in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until",
                           "while"})


def _locals(prefix: str, names: tuple[str, ...], table: str) -> str:
    lua_names = ", ".join(prefix + _lua_name(n).upper() for n in names)
    values = ", ".join(f"{table}[{i}]" for i in range(1, len(names) + 1))
    return f"local {lua_names} = {values}"


def _offsets(prefix: str, names: tuple[str, ...]) -> str:
    lua_names = ", ".join(prefix + _lua_name(n).upper() for n in names)
    return f"local {lua_names} = {', '.join(str(i) for i in range(len(names)))}"


def _lua_literal(value: object) -> str:
    if isinstance(value, str):
        if not value.isascii() or not value.isprintable():
            raise ValueError(f"{value!r} is not a plain Lua string literal")
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:d}"
    raise ValueError(f"{value!r} has no Lua literal here")


def id_keys_lua(id_keys: tuple[IdKey, ...]) -> str:
    """`id_keys(prefix, symbol)`: a table of functions naming each IdKey's key as IdKey.build does (the byte
    length of a sized id is Lua's #), and the deadlines members' prefixes."""
    builders = []
    for key in id_keys:
        args = ", ".join(_lua_name(n) for n in key.ids)
        parts = [f"prefix .. {_lua_literal(key.kind + ':{')} .. symbol .. '}}'"]
        for name, sized in zip(key.ids, key.sized, strict=True):
            parts.append(f"':' .. #{name} .. ':' .. {name}" if sized else f"':' .. {name}")
        builders.append(f"{_lua_name(key.name)} = function({args}) return {' .. '.join(parts)} end")
    return (f"local DEADLINE_CLIENT, DEADLINE_SESSION = {_lua_literal(DEADLINE_CLIENT)}, "
            f"{_lua_literal(DEADLINE_SESSION)} "
            f"local function id_keys(prefix, symbol) return {{{', '.join(builders)}}} end")


def record_codec_lua() -> str:
    """Lua functions between a packed OrderRecord (a msgpack array) and a table keyed by its field names.
    Fields with a default (appended to the layout later) take it when an older, shorter record lacks them."""
    names = [_lua_name(n) for n in OrderRecord.__struct_fields__]
    defaults = OrderRecord.__struct_defaults__
    first_default = len(names) - len(defaults)
    fields = ", ".join(
        f"{n} = r[{i}]" if i <= first_default else f"{n} = r[{i}] or {_lua_literal(defaults[i - first_default - 1])}"
        for i, n in enumerate(names, 1))
    values = ", ".join(f"o.{n}" for n in names)
    return (f"local function unpack_record(packed) local r = cmsgpack.unpack(packed) return {{{fields}}} end "
            f"local function pack_record(o) return cmsgpack.pack({{{values}}}) end")


MATCH = ScriptInterface(
    "services.matcher", "match.lua", MatchKeys.__struct_fields__, MatchArgv.__struct_fields__,
    record_codec=True, book_member=True, reply=BatchResult, id_keys=ID_KEYS,
    writes=(("trades", TradeEntry), ("events", EventEntry), ("book", BookEntry), ("order_state", OrderRecord)),
)
ACCEPT = ScriptInterface(
    "services.ingest", "accept.lua", AcceptKeys.__struct_fields__, AcceptArgv.__struct_fields__,
    keys_each=AcceptOrderKeys.__struct_fields__, argv_each=AcceptOrderArgv.__struct_fields__,
    argv_each_rest="command_fields",
    writes=(("orders", NewOrderCommand), ("order_state", OrderRecord)),
)
CANCEL = ScriptInterface(
    "services.ingest", "cancel.lua", CancelKeys.__struct_fields__, CancelArgv.__struct_fields__, record_codec=True,
    writes=(("orders", CancelCommand),),
)
BOOK = ScriptInterface("services.common", "book.lua", BookKeys.__struct_fields__, BookArgv.__struct_fields__)
INTERFACES = (MATCH, ACCEPT, CANCEL, BOOK)

MATCH_SCRIPT = MATCH.script()
ACCEPT_SCRIPT = ACCEPT.script()
CANCEL_SCRIPT = CANCEL.script()
BOOK_SCRIPT = BOOK.script()


# ==== amend.lua (ingest, issue 15: PATCH /orders/{order_id}) =======================================================
# Declared by the ingest side in a block of its own, after the other scripts (E402: its one import is here too).

from services.common.wire import AmendCommand  # noqa: E402


class AmendKeys(InstrumentScriptKeys, frozen=True):
    """KEYS of amend.lua."""

    orders: str
    order_state: str
    halts: str  # the admin halts in force (issue 16)
    migration_guard: str  # never written, never read: TRYAGAIN while the slot migrates (docs/scale-out.md)


class AmendArgv(ScriptArgs, frozen=True):
    """ARGV of amend.lua: AmendCommand's values, and whose orders the caller may amend."""

    order_id: str
    only_client_id: str  # "" = any owner (broker, admin)
    requester: str
    request_id: str  # the outcome key's id: res:{I}:<request_id>
    price_ticks: str  # "" = unchanged
    quantity_lots: str  # the new total, filled included; "" = unchanged
    ts: str  # ms
    halt_client: str  # the order's client's field in halts (keys.halt_of_client)
    halt_instrument: str  # the instrument's own field in halts (keys.HALT_INSTRUMENT)


AMEND = ScriptInterface(
    "services.ingest", "amend.lua", AmendKeys.__struct_fields__, AmendArgv.__struct_fields__, record_codec=True,
    writes=(("orders", AmendCommand),),
)
AMEND_SCRIPT = AMEND.script()
# ==== end of amend.lua ==========================================================================================


# ==== lease_renew.lua, lease_release.lua, matcher_registry.lua (issue 17: services/matcher/lease.py) ==========

class LeaseKeys(InstrumentScriptKeys, frozen=True):
    """KEYS of lease_renew.lua and lease_release.lua."""

    matcher_lease: str


class LeaseRenewArgv(ScriptArgs, frozen=True):
    """ARGV of lease_renew.lua: PEXPIRE the lease only while its value is the holder's."""

    holder: str
    lease_ms: str


class LeaseReleaseArgv(ScriptArgs, frozen=True):
    """ARGV of lease_release.lua: DEL the lease only while its value is the holder's."""

    holder: str


class RegistryKeys(ScriptArgs, frozen=True):
    """KEYS of matcher_registry.lua."""

    matchers: str  # zset: member a live matcher's id, score the ms (Redis's clock) its entry expires


class RegistryArgv(ScriptArgs, frozen=True):
    """ARGV of matcher_registry.lua."""

    holder: str
    ttl_ms: str


LEASE_RENEW = ScriptInterface("services.matcher", "lease_renew.lua", LeaseKeys.__struct_fields__,
                              LeaseRenewArgv.__struct_fields__)
LEASE_RELEASE = ScriptInterface("services.matcher", "lease_release.lua", LeaseKeys.__struct_fields__,
                                LeaseReleaseArgv.__struct_fields__)
MATCHER_REGISTRY = ScriptInterface("services.matcher", "matcher_registry.lua", RegistryKeys.__struct_fields__,
                                   RegistryArgv.__struct_fields__)
LEASE_RENEW_SCRIPT = LEASE_RENEW.script()
LEASE_RELEASE_SCRIPT = LEASE_RELEASE.script()
MATCHER_REGISTRY_SCRIPT = MATCHER_REGISTRY.script()
# ==== end of the lease scripts ==================================================================================
