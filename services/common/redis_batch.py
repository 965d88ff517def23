"""Coalesces the Redis commands of concurrent requests into pipelines, one per event-loop tick.

An awaited redis-py command costs ~120 µs of Python CPU, a command inside a shared pipeline ~13 µs
(FACTS.md). Requests call `execute()` / `evalsha()` as if they had Redis to themselves; the batcher
queues the command, and a callback scheduled with `call_soon` (it runs after every task that was
ready in this tick) writes everything queued so far as one pipeline on one connection of its own.

That connection is a bare asyncio protocol feeding hiredis: replies come back in order, so each is
handed to the oldest waiting future straight from `data_received`, with no task, no per-command
timeout object and no pool checkout per pipeline (redis-py's connection spent more Python time on
those than on the commands). Replies are raw RESP values (bytes, ints, lists, None); error replies
become redis-py's exception classes (ResponseError, NoScriptError, ...).

Nothing is ever resent after a connection error (a command may have run already): the callers of
every command written and not yet answered get the error, and the next command opens a new
connection. A connection that answers nothing for `socket_timeout` seconds is dropped the same way.

The connection is made from the Redis client's own URL settings: TLS for `rediss://` (the ssl_* query
parameters read by redis-py), then AUTH (user and password, or password alone) and SELECT, once per
connection, never per command.

At most `max_in_flight` pipelines are outstanding: under load, commands pile up while earlier
pipelines are on the wire, so batches grow with the load instead of the number of round trips.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import ssl
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from services.common.lua import LuaScript
from services.common.redis_conn import REDIS_SOCKET_TIMEOUT_S

logger = logging.getLogger(__name__)


class BatcherClosed(RuntimeError):
    """A command was submitted after close()."""


class _RespProtocol(asyncio.Protocol):
    """One Redis connection: writes pipelines, settles waiting futures in reply order."""

    def __init__(self, on_answered: Callable[[], None]) -> None:
        # on_answered: a pipeline was answered (or the connection failed), so what waited for a slot may go.
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.pipelines: collections.deque[int] = collections.deque()  # replies still due, per pipeline
        self.last_progress = 0.0
        self.lost = False
        self._on_answered = on_answered

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its interface.
        self.transport = cast(asyncio.Transport, transport)

    def write(self, data: bytes, futures: list[asyncio.Future[Any]]) -> None:
        assert self.transport is not None
        if not self.waiting:
            self.last_progress = asyncio.get_running_loop().time()
        self.waiting.extend(futures)
        self.pipelines.append(len(futures))
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.last_progress = asyncio.get_running_loop().time()
        self.reader.feed(data)
        answered = False
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(RedisConnectionError(f"unreadable reply from Redis: {exc}"))
                return
            if reply is False:
                break
            future = self.waiting.popleft()
            self.pipelines[0] -= 1
            if self.pipelines[0] == 0:
                self.pipelines.popleft()
                answered = True
            if future.done():
                continue  # the caller gave up (cancelled)
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(BaseParser.parse_error(str(reply)))  # type: ignore[no-untyped-call]
            else:
                future.set_result(reply)
        if answered:
            self._on_answered()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to Redis lost: {exc!r}" if exc else "Redis closed the connection"))

    def fail(self, exc: Exception) -> None:
        """Every command written and not answered gets `exc`; the connection is not used again."""
        self.lost = True
        waiting, self.waiting = self.waiting, collections.deque()
        self.pipelines.clear()
        for future in waiting:
            if not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()
        self._on_answered()


class CommandBatcher:
    """Sends the commands submitted during one event-loop tick as one pipeline."""

    def __init__(self, redis: Redis | ClusterNode, *, max_batch: int = 1000, max_in_flight: int = 4) -> None:
        # A cluster node (ClusterBatcher: one batcher per master) has the connection settings a pool has.
        pool = redis.connection_pool if isinstance(redis, Redis) else redis
        kwargs = pool.connection_kwargs
        # rediss://: redis-py's own reading of the URL's ssl_* parameters builds the context, once, so the
        # batcher verifies exactly as the client it was made from. TLS costs the handshake at connect only.
        self._ssl: ssl.SSLContext | None = None
        if issubclass(pool.connection_class, SSLConnection):
            self._ssl = pool.connection_class(**kwargs).ssl_context.get()
        self._path: str | None = kwargs.get("path")
        self._host: str = kwargs.get("host", "localhost")
        self._port: int = int(kwargs.get("port", 6379))
        self._db = int(kwargs.get("db", 0) or 0)
        self._username: str | None = kwargs.get("username")
        self._password: str | None = kwargs.get("password")
        self._timeout_s: float = kwargs.get("socket_timeout") or REDIS_SOCKET_TIMEOUT_S
        self._connect_timeout_s: float = kwargs.get("socket_connect_timeout") or self._timeout_s
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._pending: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._scheduled = False
        self._protocol: _RespProtocol | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed = False
        self.pipelines_sent = 0
        self.commands_sent = 0

    # Callers -------------------------------------------------------------------------------------

    def submit(self, *args: EncodableT) -> asyncio.Future[Any]:
        """Queue one command (e.g. "HGET", key, field); the future resolves to its raw reply."""
        return self.submit_packed(pack_command(args))

    def submit_packed(self, command: bytes) -> asyncio.Future[Any]:
        """Queue one command already in RESP (pack_command); the future resolves to its raw reply."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.enqueue(command, future)
        return future

    def enqueue(self, command: bytes, future: asyncio.Future[Any]) -> None:
        """Queue one command in RESP to settle `future`, a future of the caller's (ClusterBatcher: one that
        follows redirections when its error is set)."""
        if self._closed:
            raise BatcherClosed("the command batcher is closed")
        self._pending.append((command, future))
        if not self._scheduled:
            self._scheduled = True
            future.get_loop().call_soon(self._flush)

    def unanswered(self) -> list[asyncio.Future[Any]]:
        """The futures of every command queued or sent and not answered yet."""
        return [*(self._protocol.waiting if self._protocol else ()), *(f for _, f in self._pending)]

    async def execute(self, *args: EncodableT) -> Any:
        """Run one command within the next pipeline; its raw reply (bytes, int, list; errors raised)."""
        return await self.submit(*args)

    async def evalsha(self, script: LuaScript, keys: Sequence[str], args: Sequence[EncodableT]) -> Any:
        """Run `script` within the next pipeline and return its reply; on NOSCRIPT, load it and retry once."""
        return await self.evalsha_packed(script, len(keys), pack_args((*keys, *args)), len(keys) + len(args))

    async def evalsha_packed(self, script: LuaScript, key_count: int, packed: bytes, count: int) -> Any:
        """evalsha of KEYS then ARGV already packed (pack_args: `count` values, the first `key_count` KEYS)."""
        command = b"*%d\r\n%b$%d\r\n%d\r\n%b" % (count + 3, _evalsha_head(script.sha), len(str(key_count)),
                                                  key_count, packed)
        try:
            return await self.submit_packed(command)
        except NoScriptError:
            # NOSCRIPT means the script did not run at all, so running it again is safe. A second
            # NOSCRIPT (a SCRIPT FLUSH in between) reaches the caller as an error.
            await self.submit("SCRIPT", "LOAD", script.source)
            return await self.submit_packed(command)

    async def close(self) -> None:
        """Send what is queued, wait for every answer, refuse new commands, close the connection."""
        self._closed = True
        while True:
            if self._connecting is not None:
                with contextlib.suppress(Exception):
                    await self._connecting
                continue
            if self._pending and not self._scheduled:
                self._flush()
            unanswered = self.unanswered()
            if not unanswered:
                break
            await asyncio.gather(*unanswered, return_exceptions=True)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None

    # Sending -------------------------------------------------------------------------------------

    def _schedule(self) -> None:
        if not self._scheduled and self._pending:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        protocol = self._protocol
        if protocol is None or protocol.lost:
            if self._connecting is None:
                self._connecting = asyncio.get_running_loop().create_task(self._connect())
            return
        while self._pending and len(protocol.pipelines) < self._max_in_flight:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            futures = [future for _, future in batch]
            try:
                protocol.write(b"".join([packed for packed, _ in batch]), futures)
            except Exception as exc:  # never leave a caller waiting on a pipeline that was not sent
                protocol.fail(RedisConnectionError(f"cannot write to Redis: {exc!r}"))
                return
            self.pipelines_sent += 1
            self.commands_sent += len(batch)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if self._path:
                    _, protocol = await loop.create_unix_connection(
                        lambda: _RespProtocol(self._schedule), self._path)
                else:
                    _, protocol = await loop.create_connection(
                        lambda: _RespProtocol(self._schedule), self._host, self._port, ssl=self._ssl,
                        server_hostname=self._host if self._ssl is not None else None)
                await self._handshake(protocol)
        except Exception as exc:  # every command waiting for this connection gets the error
            error = exc if isinstance(exc, RedisConnectionError) else RedisConnectionError(
                f"cannot connect to Redis at {self._path or f'{self._host}:{self._port}'}: {exc!r}")
            pending, self._pending = self._pending, []
            for _, future in pending:
                if not future.done():
                    future.set_exception(error)
            return
        finally:
            self._connecting = None
        self._protocol = protocol
        self._start_watchdog()
        self._schedule()

    async def _handshake(self, protocol: _RespProtocol) -> None:
        """AUTH and SELECT as the URL asks, before any queued command."""
        setup: list[tuple[EncodableT, ...]] = []
        if self._password is not None:
            setup.append(("AUTH", self._username, self._password) if self._username else ("AUTH", self._password))
        if self._db:
            setup.append(("SELECT", self._db))
        if not setup:
            return
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in setup]
        protocol.write(b"".join(pack_command(args) for args in setup), futures)
        await asyncio.gather(*futures)

    def _start_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._watchdog = asyncio.get_running_loop().call_later(1.0, self._watch)

    def _watch(self) -> None:
        # One timer per second, not one per command: a connection whose oldest waiting command has seen
        # no reply bytes for socket_timeout is dropped, and its callers get a TimeoutError.
        protocol = self._protocol
        if protocol is None:
            self._watchdog = None
            return
        loop = asyncio.get_running_loop()
        if protocol.waiting and not protocol.lost and loop.time() - protocol.last_progress > self._timeout_s:
            logger.error("redis answered nothing for %.1fs: dropping the connection", self._timeout_s)
            protocol.fail(RedisTimeoutError(f"no reply from Redis within {self._timeout_s:g}s"))
        self._watchdog = loop.call_later(1.0, self._watch)


def pack_command(args: Sequence[EncodableT]) -> bytes:
    """One command in RESP: *<n> then $<len> <bytes> per argument."""
    return b"*%d\r\n%b" % (len(args), pack_args(args))


def pack_args(args: Iterable[EncodableT]) -> bytes:
    """Arguments as RESP bulk strings, $<len> <bytes> each, without the *<n> header (pack_command adds it)."""
    parts = []
    for arg in args:
        kind = type(arg)  # exact types first: str, bytes and int are nearly every argument
        if kind is str:
            data = arg.encode()  # type: ignore[union-attr]
        elif kind is bytes:
            data = arg
        elif kind is int:
            data = b"%d" % arg  # type: ignore[str-format]
        elif isinstance(arg, bool):
            raise DataError(f"refusing to send a bool ({arg!r}) to Redis: convert it explicitly")
        elif isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int):
            data = b"%d" % arg
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            data = bytes(arg)
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


@functools.lru_cache(maxsize=64)
def _evalsha_head(sha: str) -> bytes:
    """EVALSHA <sha> in RESP, once per script."""
    return pack_args(("EVALSHA", sha))
