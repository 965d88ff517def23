"""CommandBatcher's interface over a Redis Cluster: one batcher per master, each command routed by its first key.

docs/scale-out.md, "Modes". Each command goes to the master serving the slot of its first key (the key's
`{tag}` when it has one; slots cached per tag), in that master's next pipeline, so ingest keeps its ~13 µs
per command in cluster mode. The slot map comes from CLUSTER SLOTS, read before the first command and again
in the background after a MOVED. Replies that say the command did not run are followed:

- MOVED: the slot is now elsewhere; the map is updated at once and the command sent to the named master.
- ASK: the slot is being migrated and the key is already on the named node: `ASKING` and the command go
  adjacent, in order, on that node's one connection.
- TRYAGAIN: a multi-key command or a guarded script (keys.InstrumentKeys.migration_guard) met a slot being
  migrated: it is sent again after 10 ms, doubling to 200 ms, until the migration ends (then MOVED leads
  to the new master); after TRYAGAIN_GIVE_UP_S the caller gets the TryAgainError.

Nothing else is resent: after a connection error or a timeout a command may have run (CommandBatcher).
Commands without a key go to one master (PING, ECHO...), SCRIPT to every master (the script cache is per
node: SCRIPT LOAD answers with the first master's reply, an error if any fails). evalsha's NOSCRIPT loads the
script on every master and sends the command once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, TypeAlias

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterError, MovedError, NoScriptError, RedisError, TryAgainError
from redis.typing import EncodableT

from services.common.lua import LuaScript
from services.common.redis_batch import BatcherClosed, CommandBatcher, _evalsha_head, pack_args, pack_command
from services.common.redis_conn import SLOT_MOVE_FIRST_WAIT_S, SLOT_MOVE_LONGEST_WAIT_S, AnyRedis, RedisMode

logger = logging.getLogger(__name__)

SLOTS = 16384
TRYAGAIN_GIVE_UP_S = 5.0
MAX_REDIRECTIONS = 16  # MOVED and ASK hops of one command (redis-py's RedisClusterRequestTTL)
_ASKING = pack_command(("ASKING",))
_CLUSTER_SLOTS = pack_command(("CLUSTER", "SLOTS"))
# Commands whose key is not their first argument, or that have none.
_SCRIPT_CALLS = frozenset({b"EVAL", b"EVALSHA", b"EVAL_RO", b"EVALSHA_RO", b"FCALL", b"FCALL_RO"})
_STREAM_READS = frozenset({b"XREAD", b"XREADGROUP"})
_EVERY_MASTER = frozenset({b"SCRIPT"})
_NO_KEY = frozenset({b"PING", b"ECHO", b"TIME", b"INFO", b"CLUSTER", b"DBSIZE", b"COMMAND", b"HELLO", b"AUTH",
                     b"SELECT", b"CLIENT", b"CONFIG", b"ASKING", b"READONLY", b"MULTI", b"EXEC"}) | _EVERY_MASTER

Address = tuple[str, int]


class ClusterBatcher:
    """Sends each command within the next pipeline of the master serving its first key's slot."""

    def __init__(self, redis: RedisCluster, *, max_batch: int = 1000, max_in_flight: int = 4) -> None:
        self._redis = redis
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._seeds: list[Address] = [(node.host, int(node.port)) for node in redis.startup_nodes]
        self._nodes: dict[Address, CommandBatcher] = {}
        self._masters: list[Address] = []
        self._slots: list[Address] | None = None  # the master of each slot, once read
        self._tag_slots: dict[bytes, int] = {}
        self._kinds: dict[Any, str] = {}
        self._unrouted: list[tuple[_Routed, bytes | None]] = []  # waiting for the slot map
        self._redirected: set[_Routed] = set()  # following a MOVED, ASK or TRYAGAIN
        self._refresh: asyncio.Task[None] | None = None
        self._refresh_again = False
        self._closed = False

    # Counters, as CommandBatcher's ---------------------------------------------------------------------------

    @property
    def pipelines_sent(self) -> int:
        return sum(batcher.pipelines_sent for batcher in self._nodes.values())

    @property
    def commands_sent(self) -> int:
        return sum(batcher.commands_sent for batcher in self._nodes.values())

    # Callers ---------------------------------------------------------------------------------------------

    def submit(self, *args: EncodableT) -> asyncio.Future[Any]:
        """Queue one command (e.g. "HGET", key, field); the future resolves to its raw reply."""
        return self._submit(pack_command(args), self._key_of_args(args))

    def submit_packed(self, command: bytes) -> asyncio.Future[Any]:
        """Queue one command already in RESP (pack_command); the future resolves to its raw reply."""
        return self._submit(command, _first_key(command))

    async def execute(self, *args: EncodableT) -> Any:
        """Run one command within its master's next pipeline; its raw reply (errors raised)."""
        return await self._submit(pack_command(args), self._key_of_args(args))

    async def evalsha(self, script: LuaScript, keys: Sequence[str], args: Sequence[EncodableT]) -> Any:
        """Run `script` on the master of its first key; on NOSCRIPT, load it everywhere and retry once."""
        return await self.evalsha_packed(script, len(keys), pack_args((*keys, *args)), len(keys) + len(args))

    async def evalsha_packed(self, script: LuaScript, key_count: int, packed: bytes, count: int) -> Any:
        """evalsha of KEYS then ARGV already packed (pack_args: `count` values, the first `key_count` KEYS)."""
        command = b"*%d\r\n%b$%d\r\n%d\r\n%b" % (count + 3, _evalsha_head(script.sha), len(str(key_count)),
                                                  key_count, packed)
        key = _bulk_at(packed, 0)[0] if key_count > 0 else None
        try:
            return await self._submit(command, key)
        except NoScriptError:
            # Nothing ran; the script cache is per node, so load it on every master (a master that had it
            # keeps it) and send once more. A second NOSCRIPT reaches the caller.
            await self.submit("SCRIPT", "LOAD", script.source)
            return await self._submit(command, key)

    async def close(self) -> None:
        """Send what is queued (redirections included), wait for every answer, refuse new commands, close."""
        self._closed = True
        while True:
            waiting: list[asyncio.Future[Any]] = [*self._redirected, *(f for f, _ in self._unrouted)]
            for batcher in self._nodes.values():
                waiting += batcher.unanswered()
            if not waiting:
                break
            await asyncio.gather(*waiting, return_exceptions=True)
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._refresh
        for batcher in self._nodes.values():
            await batcher.close()

    # Routing ---------------------------------------------------------------------------------------------

    def _key_of_args(self, args: Sequence[EncodableT]) -> bytes | None:
        """_first_key of a command not packed yet: most commands name their key first, after their name."""
        name: Any = args[0]
        kind = self._kinds.get(name)
        if kind is None:
            upper = (name.encode() if isinstance(name, str) else bytes(name)).upper()
            kind = _NONE if upper in _NO_KEY else _PARSE if upper in _SCRIPT_CALLS | _STREAM_READS else _FIRST
            if len(self._kinds) < 1000:  # the names callers pass (e.g. "HGET"): learnt once each
                self._kinds[name] = kind
        if kind is _NONE or len(args) < 2:
            return None
        if kind is _PARSE:
            return _first_key(pack_command(args))
        key = args[1]
        if isinstance(key, bytes):
            return key
        if isinstance(key, str):
            return key.encode()
        return _bulk_at(pack_args((key,)), 0)[0]

    def _submit(self, command: bytes, key: bytes | None) -> _Routed:
        if self._closed:
            raise BatcherClosed("the command batcher is closed")
        future = _Routed(self, command, asyncio.get_running_loop())
        if self._slots is None:
            self._unrouted.append((future, key))
            self._refresh_map()
        else:
            self._route(future, key)
        return future

    def _route(self, future: _Routed, key: bytes | None) -> None:
        assert self._slots is not None
        if key is not None:
            self._send(self._slots[self._slot(key)], future)
        elif _name(future.command) in _EVERY_MASTER:
            self._send_everywhere(future)
        else:
            self._send(self._masters[0], future)

    def _slot(self, key: bytes) -> int:
        start = key.find(b"{")
        if start > -1:
            end = key.find(b"}", start + 1)
            if end > start + 1:
                tag = key[start + 1:end]
                slot = self._tag_slots.get(tag)
                if slot is None:
                    if len(self._tag_slots) > 100_000:  # ids in tags: never grow without bound
                        self._tag_slots.clear()
                    slot = self._tag_slots[tag] = key_slot(tag)
                return slot
        return key_slot(key)

    def _node(self, address: Address) -> CommandBatcher:
        batcher = self._nodes.get(address)
        if batcher is None:
            node = ClusterNode(address[0], address[1], **self._redis.connection_kwargs)
            batcher = self._nodes[address] = CommandBatcher(node, max_batch=self._max_batch,
                                                            max_in_flight=self._max_in_flight)
        return batcher

    def _send(self, address: Address, future: _Routed, asking: bool = False) -> None:
        try:
            node = self._node(address)
            if asking:
                # Adjacent in the node's queue, so in one connection's byte stream: ASKING holds for the next
                # command of that connection only.
                node.submit_packed(_ASKING).add_done_callback(_ignore)
            node.enqueue(future.command, future)
        except BatcherClosed as exc:
            future.settle_error(exc)

    def _redirect(self, future: _Routed, error: Exception) -> bool:
        """Follow MOVED, ASK or TRYAGAIN (the command did not run); False: give the caller `error`."""
        redirects = future.redirects
        if redirects is None:
            redirects = future.redirects = _Redirects()
            self._redirected.add(future)
            future.add_done_callback(self._redirected.discard)
        if isinstance(error, AskError):  # MovedError included
            redirects.hops += 1
            if redirects.hops > MAX_REDIRECTIONS:
                future.settle_error(ClusterError(f"more than {MAX_REDIRECTIONS} redirections, last: {error}"))
                return True
            moved = isinstance(error, MovedError)
            if moved and self._slots is not None:
                self._slots[error.slot_id] = error.node_addr
                self._refresh_map()
            self._send(error.node_addr, future, asking=not moved)
            return True
        loop = future.get_loop()
        if redirects.give_up_at == 0.0:
            redirects.give_up_at = loop.time() + TRYAGAIN_GIVE_UP_S
        elif loop.time() >= redirects.give_up_at:
            return False
        loop.call_later(redirects.delay, self._resend, future)
        redirects.delay = min(redirects.delay * 2, SLOT_MOVE_LONGEST_WAIT_S)
        return True

    def _resend(self, future: _Routed) -> None:
        if future.done():
            return
        # From the slot's master again: the migration may have ended (MOVED) or still run (TRYAGAIN).
        assert self._slots is not None
        key = _first_key(future.command)
        self._send(self._slots[self._slot(key)] if key is not None else self._masters[0], future)

    def _send_everywhere(self, future: _Routed) -> None:
        replies = []
        for address in self._masters:
            try:
                replies.append(self._node(address).submit_packed(future.command))
            except BatcherClosed as exc:
                future.settle_error(exc)
                return
        gathered = asyncio.gather(*replies, return_exceptions=True)

        def settle(done: asyncio.Future[list[Any]]) -> None:
            if future.done():
                return
            results = done.result()
            error = next((r for r in results if isinstance(r, BaseException)), None)
            if error is not None:
                future.settle_error(error)
            else:
                future.set_result(results[0])

        gathered.add_done_callback(settle)

    # The slot map ----------------------------------------------------------------------------------------

    def _refresh_map(self) -> None:
        """Read CLUSTER SLOTS in the background (once at a time; again after, if asked meanwhile)."""
        if self._refresh is not None:
            self._refresh_again = True
            return
        self._refresh = asyncio.get_running_loop().create_task(self._read_map(), name="cluster-slot-map")

    async def _read_map(self) -> None:
        try:
            while True:
                self._refresh_again = False
                error: Exception | None = None
                for address in [*self._masters, *(s for s in self._seeds if s not in self._masters)]:
                    try:
                        self._apply_map(address, await self._node(address).submit_packed(_CLUSTER_SLOTS))
                        error = None
                        break
                    except (RedisError, OSError, ValueError) as exc:
                        error = exc
                if error is not None:
                    logger.warning("cannot read the cluster's slot map from %s: %r", self._seeds, error)
                    self._fail_unrouted(error)
                    return
                if not self._refresh_again:
                    return
        finally:
            self._refresh = None

    def _apply_map(self, asked: Address, reply: list[Any]) -> None:
        slots: list[Address | None] = [None] * SLOTS
        masters: list[Address] = []
        for start, end, master, *_ in reply:
            host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
            # An empty host: the node's own, as the asked node is reached (CLUSTER SLOTS, Redis 7).
            address = (host if host and host != "?" else asked[0], int(master[1]))
            if address not in masters:
                masters.append(address)
            slots[int(start):int(end) + 1] = [address] * (int(end) - int(start) + 1)
        missing = slots.count(None)
        if missing:
            raise ValueError(f"{missing} slots are served by no master (CLUSTER SLOTS of {asked})")
        self._slots = [address for address in slots if address is not None]
        self._masters = masters
        unrouted, self._unrouted = self._unrouted, []
        for future, key in unrouted:
            if not future.done():
                self._route(future, key)

    def _fail_unrouted(self, error: Exception) -> None:
        unrouted, self._unrouted = self._unrouted, []
        for future, _ in unrouted:
            if not future.done():
                future.settle_error(error)


class _Routed(asyncio.Future[Any]):
    """One command's future: an error reply that is a redirection (MOVED, ASK, TRYAGAIN) is followed by its
    ClusterBatcher instead of reaching the caller. CommandBatcher settles it as any future, so a command that
    meets no redirection costs no task, callback or second future."""

    def __init__(self, owner: ClusterBatcher, command: bytes, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self.owner = owner
        self.command = command
        self.redirects: _Redirects | None = None

    def set_exception(self, exception: type | BaseException) -> None:
        if isinstance(exception, (AskError, TryAgainError)) and self.owner._redirect(self, exception):
            return
        super().set_exception(exception)

    def settle_error(self, exception: BaseException) -> None:
        """The caller's error, whatever it is (no redirection followed)."""
        if not self.done():
            super().set_exception(exception)


class _Redirects:
    """What one command met so far: MOVED/ASK hops, and its TRYAGAIN backoff."""

    __slots__ = ("delay", "give_up_at", "hops")

    def __init__(self) -> None:
        self.hops = 0
        self.delay = SLOT_MOVE_FIRST_WAIT_S
        self.give_up_at = 0.0


def _ignore(reply: asyncio.Future[Any]) -> None:
    # ASKING's own reply (OK): an error there shows on the command that follows it.
    if not reply.cancelled():
        reply.exception()


def _bulk_at(data: bytes, at: int) -> tuple[bytes, int]:
    """The RESP bulk string `$<len>\\r\\n<bytes>\\r\\n` starting at `at`, and where the next one starts."""
    line_end = data.index(b"\r\n", at)
    start = line_end + 2
    end = start + int(data[at + 1:line_end])
    return data[start:end], end + 2


def _name(command: bytes) -> bytes:
    return _bulk_at(command, command.index(b"\r\n") + 2)[0].upper()


def _first_key(command: bytes) -> bytes | None:
    """The first key of a command in RESP (pack_command's form), None for a command without a key."""
    count_end = command.index(b"\r\n")
    count = int(command[1:count_end])
    name, at = _bulk_at(command, count_end + 2)
    name = name.upper()
    if count < 2 or name in _NO_KEY:
        return None
    if name in _SCRIPT_CALLS:  # name, script or function, numkeys, keys...
        _, at = _bulk_at(command, at)
        numkeys, at = _bulk_at(command, at)
        return _bulk_at(command, at)[0] if int(numkeys) > 0 else None
    if name in _STREAM_READS:  # ... STREAMS key [key ...] id [id ...]
        for _ in range(count - 1):
            value, at = _bulk_at(command, at)
            if value.upper() == b"STREAMS":
                return _bulk_at(command, at)[0]
        return None
    return _bulk_at(command, at)[0]


# Where a command's first key is (ClusterBatcher._key_of_args): none, its first argument, or parse the command.
_NONE, _FIRST, _PARSE = "none", "first", "parse"


def make_batcher(redis: AnyRedis, mode: RedisMode) -> CommandBatcher | ClusterBatcher:
    """The batched connection of `redis`: one pipeline per tick to one server, or one per master of a cluster."""
    if mode == "cluster":
        if not isinstance(redis, RedisCluster):
            raise TypeError(f"REDIS_MODE=cluster needs a cluster client, not {type(redis).__name__}")
        return ClusterBatcher(redis)
    if not isinstance(redis, Redis):
        raise TypeError(f"REDIS_MODE=single needs a single-server client, not {type(redis).__name__}")
    return CommandBatcher(redis)


# What ingest's modules take: either batcher, the same interface.
AnyBatcher: TypeAlias = CommandBatcher | ClusterBatcher
