"""Enqueueing validated orders: one atomic accept.lua call per instrument through the command batcher."""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from typing import Any

import msgspec
from redis.typing import EncodableT

from services.common.keys import HALT_INSTRUMENT, InstrumentKeys, halt_of_client
from services.common.redis_batch import pack_args
from services.common.redis_cluster_batch import AnyBatcher
from services.common.scripts import ACCEPT_SCRIPT, AcceptArgv, AcceptKeys, AcceptOrderArgv, AcceptOrderKeys, astuple
from services.common.wire import NewOrderCommand, OrderRecord, command_fields, encode_record
from services.ingest.validation import ValidOrder


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    """What every accept.lua reply carries: the client's bucket after the call (0, 0 when it is off)."""

    remaining: int  # whole tokens
    reset_ms: int  # until the bucket is full again


class Accepted(Reply, frozen=True):
    stream_id: str


class Replayed(Reply, frozen=True):
    answer: bytes


class Conflict(Reply, frozen=True):
    pass


class RateLimited(Reply, frozen=True):
    retry_after_ms: int
    by_key: bool  # the API key's bucket refused (else the client's)


class Overloaded(Reply, frozen=True):
    pass


class ClientHalted(Reply, frozen=True):
    """An admin halted the order's client (halts:{I})."""


class InstrumentHalted(Reply, frozen=True):
    """An admin halted the order's instrument (halts:{I})."""


class DuplicateClientOrderId(Reply, frozen=True):
    order_id: str  # the order that already carries the client_order_id


Outcome = (Accepted | Replayed | Conflict | RateLimited | Overloaded | DuplicateClientOrderId | ClientHalted
           | InstrumentHalted)


def accepted_record(order: ValidOrder, order_id: str, created_ms: int, *, session: str = "") -> OrderRecord:
    """The order as it stands once on the stream: what ingest stores, answers (201) and enqueues. `session` is
    the cancel-on-disconnect session the order comes through ("" none)."""
    return OrderRecord(
        order_id=order_id, client_id=order.client_id, client_order_id=order.client_order_id,
        side=order.side, type=order.type, time_in_force=order.time_in_force,
        post_only=1 if order.post_only else 0, price_ticks=order.price_ticks,
        quantity_lots=order.quantity_lots, filled_lots=0, status="accepted", reason="",
        created_at=created_ms, updated_at=created_ms, arrival_seq=0, notional_hi=0, notional_lo=0,
        self_trade_prevention=order.self_trade_prevention, session=session,
    )


def _command_fields(record: OrderRecord) -> list[str]:
    """The orders-stream entry of a new order: NewOrderCommand's fields, flat, integers as text; a field with a
    default only when the order's value differs from it (packed_script_args writes the same)."""
    return command_fields(NewOrderCommand(
        order_id=record.order_id, client_id=record.client_id, client_order_id=record.client_order_id,
        side=record.side, type=record.type, time_in_force=record.time_in_force,
        post_only="1" if record.post_only else "0", price_ticks=str(record.price_ticks),
        quantity_lots=str(record.quantity_lots), created_at=str(record.created_at),
        self_trade_prevention=record.self_trade_prevention, session=record.session,
    ))


class Placement(msgspec.Struct, frozen=True):
    """One order of an accept.lua call: the validated order, what is stored, and its 201 body."""

    order: ValidOrder
    record: OrderRecord
    answer: bytes


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """What every order of a call shares: the buckets' rates, the API key, backpressure, the records' TTL."""

    rate_per_sec: int
    burst: int
    key_id: str
    key_rate_per_sec: int
    key_burst: int
    overloaded: bool
    idempotency_ttl_s: int


async def accept_orders(batcher: AnyBatcher, keys: InstrumentKeys, placements: Sequence[Placement],
                        limits: Limits) -> list[Outcome]:
    """Rate-limit (the client's bucket and the API key's), deduplicate and enqueue each of `placements` (orders
    of `keys`' instrument) atomically in one accept.lua call, in order; one outcome each. No key id
    (AUTH_MODE=off): no key bucket."""
    replies = await batcher.evalsha_packed(ACCEPT_SCRIPT, *packed_script_args(keys, placements, limits))
    if len(replies) != len(placements):
        raise RuntimeError(f"accept.lua answered {len(replies)} replies for {len(placements)} orders")
    return [_outcome(reply) for reply in replies]


async def accept_order(batcher: AnyBatcher, keys: InstrumentKeys, placement: Placement,
                       limits: Limits) -> Outcome:
    """accept_orders of one order (POST /orders), without the list around it."""
    (outcome,) = await accept_orders(batcher, keys, (placement,), limits)
    return outcome


def script_args(keys: InstrumentKeys, placements: Sequence[Placement], limits: Limits
                ) -> tuple[list[str], list[EncodableT]]:
    """accept.lua's KEYS and ARGV for `placements`, as scripts.ACCEPT declares them (the plain form of
    packed_script_args, which tests hold to it)."""
    key_rate = limits.key_rate_per_sec if limits.key_id else 0
    script_keys: list[str] = [*astuple(AcceptKeys(
        orders=keys.orders, order_state=keys.order_state, key_rate_bucket=keys.key_rate_bucket(limits.key_id),
        halts=keys.halts, migration_guard=keys.migration_guard))]
    argv: list[EncodableT] = [*astuple(AcceptArgv(
        rate=limits.rate_per_sec, burst=limits.burst, key_rate=key_rate, key_burst=limits.key_burst,
        overloaded="1" if limits.overloaded else "0", ttl_s=limits.idempotency_ttl_s,
        halt_instrument=HALT_INSTRUMENT))]
    for placement in placements:
        command = _command_fields(placement.record)
        order_keys, order_argv = _order_args(keys, placement, len(command))
        script_keys += order_keys
        argv += order_argv
        argv += command
    return script_keys, argv


def _order_args(keys: InstrumentKeys, placement: Placement, command_values: int
                ) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """One order's AcceptOrderKeys and AcceptOrderArgv; the command's `command_values` values follow that block."""
    order, record = placement.order, placement.record
    client_id = order.client_id
    keyed = order.idempotency_key is not None
    # Absent records still get a key name (never read): all keys are passed, all in the instrument's slot.
    order_keys = astuple(AcceptOrderKeys(
        rate_bucket=keys.rate_bucket(client_id),
        idempotency=keys.idempotency(client_id, order.idempotency_key or ""),
        client_order_id=keys.client_order_id(client_id, order.client_order_id),
        client_orders=keys.client_orders(client_id), session_orders=keys.session_orders(record.session)))
    # The fingerprint and the answer are read only to store or check an idempotency record.
    order_argv = astuple(AcceptOrderArgv(
        fingerprint=order.fingerprint() if keyed else "", answer=placement.answer if keyed else b"",
        order_id=record.order_id, record=encode_record(record), has_idempotency_key="1" if keyed else "0",
        has_client_order_id="1" if order.client_order_id else "0", created_at=record.created_at,
        has_session="1" if record.session else "0", halt_client=halt_of_client(client_id),
        command_fields=command_values))
    return order_keys, order_argv


# The orders-stream entry, packed: NewOrderCommand's tag, then each field's name (RESP, built once) and the
# record's value of the same name, integers as text (post_only is the record's 0 or 1). The fields with a default
# (appended later: self-trade prevention, session) are written only when the order's value differs from it:
# an entry without them means the default (match.lua), and most orders' entries stay as short as before.
_TAG = NewOrderCommand.__struct_config__
_COMMAND_HEAD = pack_args((_TAG.tag_field or "", str(_TAG.tag)))
_COMMAND_DEFAULTS = NewOrderCommand.__struct_defaults__
_COMMAND_REQUIRED = NewOrderCommand.__struct_fields__[:len(NewOrderCommand.__struct_fields__) - len(_COMMAND_DEFAULTS)]
_COMMAND_OPTIONAL = tuple(zip(NewOrderCommand.__struct_fields__[len(_COMMAND_REQUIRED):], _COMMAND_DEFAULTS,
                              strict=True))
_COMMAND_NAMES = [pack_args((name,)) for name in _COMMAND_REQUIRED]
_OPTIONAL_NAMES = [(name, pack_args((name,)), default) for name, default in _COMMAND_OPTIONAL]
_command_values = operator.attrgetter(*_COMMAND_REQUIRED)
_COMMAND_VALUES = 2 + 2 * len(_COMMAND_REQUIRED)
_KEYS_EACH = len(AcceptOrderKeys.__struct_fields__)
_ARGV_EACH = len(AcceptOrderArgv.__struct_fields__) + _COMMAND_VALUES
_KEYS_SHARED = len(AcceptKeys.__struct_fields__)
_ARGV_SHARED = len(AcceptArgv.__struct_fields__)


def packed_script_args(keys: InstrumentKeys, placements: Sequence[Placement], limits: Limits
                       ) -> tuple[int, bytes, int]:
    """script_args as CommandBatcher.evalsha_packed takes them: (KEYS count, KEYS then ARGV in RESP, count).
    What every order of every call shares is packed once (per instrument and API key, per settings)."""
    key_rate = limits.key_rate_per_sec if limits.key_id else 0
    key_parts = [_shared_keys(keys.orders, keys.order_state, keys.key_rate_bucket(limits.key_id), keys.halts,
                              keys.migration_guard)]
    argv_parts = [_shared_argv(limits.rate_per_sec, limits.burst, key_rate, limits.key_burst,
                               "1" if limits.overloaded else "0", limits.idempotency_ttl_s)]
    optional_values = 0
    for placement in placements:
        record = placement.record
        # The fields that differ from their defaults, packed: one part per value (its name, then its value).
        optional: list[bytes] = []
        for attribute, name, default in _OPTIONAL_NAMES:
            text = getattr(record, attribute)
            if text != default:
                data = text.encode()
                optional.append(name)
                optional.append(b"$%d\r\n%b\r\n" % (len(data), data))
        order_keys, order_argv = _order_args(keys, placement, _COMMAND_VALUES + len(optional))
        key_parts.append(pack_args(order_keys))
        argv_parts.append(pack_args(order_argv))
        argv_parts.append(_COMMAND_HEAD)
        for name, value in zip(_COMMAND_NAMES, _command_values(record), strict=True):
            data = value.encode() if type(value) is str else b"%d" % value
            argv_parts.append(name)
            argv_parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
        argv_parts += optional
        optional_values += len(optional)
    key_count = _KEYS_SHARED + _KEYS_EACH * len(placements)
    key_parts += argv_parts
    argv_count = _ARGV_SHARED + _ARGV_EACH * len(placements) + optional_values
    return key_count, b"".join(key_parts), key_count + argv_count


@functools.lru_cache(maxsize=1024)
def _shared_keys(orders: str, order_state: str, key_rate_bucket: str, halts: str, migration_guard: str) -> bytes:
    return pack_args(astuple(AcceptKeys(orders=orders, order_state=order_state, key_rate_bucket=key_rate_bucket,
                                        halts=halts, migration_guard=migration_guard)))


@functools.lru_cache(maxsize=256)
def _shared_argv(rate: int, burst: int, key_rate: int, key_burst: int, overloaded: str, ttl_s: int) -> bytes:
    return pack_args(astuple(AcceptArgv(rate=rate, burst=burst, key_rate=key_rate, key_burst=key_burst,
                                        overloaded=overloaded, ttl_s=ttl_s, halt_instrument=HALT_INSTRUMENT)))


def _outcome(reply: list[Any]) -> Outcome:
    kind, value, remaining, reset_ms = reply
    if kind == b"ok":
        return Accepted(value.decode(), remaining=remaining, reset_ms=reset_ms)
    if kind == b"replay":
        return Replayed(bytes(value), remaining=remaining, reset_ms=reset_ms)
    if kind == b"conflict":
        return Conflict(remaining=remaining, reset_ms=reset_ms)
    if kind == b"rate_limited" or kind == b"key_rate_limited":
        return RateLimited(int(value), kind == b"key_rate_limited", remaining=remaining, reset_ms=reset_ms)
    if kind == b"overloaded":
        return Overloaded(remaining=remaining, reset_ms=reset_ms)
    if kind == b"client_halted":
        return ClientHalted(remaining=remaining, reset_ms=reset_ms)
    if kind == b"instrument_halted":
        return InstrumentHalted(remaining=remaining, reset_ms=reset_ms)
    if kind == b"duplicate_client_order_id":
        return DuplicateClientOrderId(value.decode(), remaining=remaining, reset_ms=reset_ms)
    raise RuntimeError(f"accept.lua answered {reply!r}")
