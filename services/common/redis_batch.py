"""Coalesces the Redis commands of concurrent requests into pipelines, one per event-loop tick.

An awaited redis-py command costs ~120 µs of Python CPU, a command inside a shared pipeline ~13 µs
(FACTS.md). Requests call `execute()` / `evalsha()` as if they had Redis to themselves; the batcher
queues the command, and a callback scheduled with `call_soon` (it runs after every task that was
ready in this tick) sends everything queued so far as one non-transactional pipeline. Each caller's
future gets its own command's reply, or its own error. Replies are raw RESP values (bytes, ints,
lists, None): redis-py's per-command response callbacks are not applied.

Nothing is ever resent after a connection error (a command may have run already): the callers of
that pipeline get the error.

At most `max_in_flight` pipelines are outstanding: under load, commands pile up while earlier
pipelines are on the wire, so batches grow with the load instead of the number of round trips.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import DataError, NoScriptError, ResponseError
from redis.typing import EncodableT

from services.common.lua import LuaScript

logger = logging.getLogger(__name__)


class _Command:
    __slots__ = ("args", "future", "script")

    def __init__(self, args: tuple[EncodableT, ...], future: asyncio.Future[Any], script: LuaScript | None):
        self.args = args
        self.future = future
        self.script = script


class BatcherClosed(RuntimeError):
    """A command was submitted after close()."""


class CommandBatcher:
    """Sends the commands submitted during one event-loop tick as one pipeline."""

    def __init__(self, redis: Redis, *, max_batch: int = 1000, max_in_flight: int = 4) -> None:
        self._redis = redis
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._pending: list[_Command] = []
        self._scheduled = False
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.pipelines_sent = 0
        self.commands_sent = 0

    def submit(self, *args: EncodableT, script: LuaScript | None = None) -> asyncio.Future[Any]:
        """Queue one command (e.g. "HGET", key, field); the future resolves to its raw reply."""
        if self._closed:
            raise BatcherClosed("the command batcher is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append(_Command(args, future, script))
        if not self._scheduled and self._in_flight < self._max_in_flight:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    async def execute(self, *args: EncodableT) -> Any:
        """Run one command within the next pipeline; its raw reply (bytes, int, list; errors raised)."""
        return await self.submit(*args)

    def submit_script(
        self, script: LuaScript, keys: Sequence[str], args: Sequence[EncodableT]
    ) -> asyncio.Future[Any]:
        """Queue an EVALSHA of `script`; on NOSCRIPT the script is loaded and the call retried."""
        return self.submit("EVALSHA", script.sha, len(keys), *keys, *args, script=script)

    async def evalsha(self, script: LuaScript, keys: Sequence[str], args: Sequence[EncodableT]) -> Any:
        """Run `script` within the next pipeline and return its reply."""
        return await self.submit_script(script, keys, args)

    async def close(self) -> None:
        """Send what is queued, wait for every outstanding pipeline, refuse new commands."""
        self._closed = True
        while self._pending or self._tasks:
            if self._pending and not self._scheduled:
                self._flush()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            else:
                await asyncio.sleep(0)

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending and self._in_flight < self._max_in_flight:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Command]) -> None:
        try:
            retry = await self._run(batch)
            if retry:
                for script in {id(c.script): c.script for c in retry if c.script is not None}.values():
                    await script.load(self._redis)
                # A second NOSCRIPT (a SCRIPT FLUSH in between) reaches the caller as an error.
                await self._run(retry, allow_retry=False)
        except asyncio.CancelledError:
            _fail(batch, BatcherClosed("the command batcher was stopped"))
            raise
        except Exception as exc:  # handed to every caller still waiting
            _fail(batch, exc)
        finally:
            self._in_flight -= 1
            if self._pending and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    async def _run(self, batch: list[_Command], allow_retry: bool = True) -> list[_Command]:
        """Send one pipeline; settle the futures; return the commands to retry after NOSCRIPT."""
        # A raw connection and our own RESP packing: redis-py's Pipeline spends ~30 µs packing a
        # 35-argument EVALSHA and more on per-command bookkeeping; this path spends a few.
        packed = b"".join([pack_command(command.args) for command in batch])
        pool = self._redis.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        replies: list[Any] = []
        try:
            await connection.send_packed_command(packed, check_health=False)
            for _ in batch:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            # The replies on the wire no longer match the commands: never reuse this connection.
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)
        self.pipelines_sent += 1
        self.commands_sent += len(batch)
        retry: list[_Command] = []
        for command, reply in zip(batch, replies, strict=True):
            if isinstance(reply, NoScriptError) and command.script is not None and allow_retry:
                # NOSCRIPT means the script did not run at all, so running it again is safe.
                retry.append(command)
            elif command.future.done():
                continue  # the caller gave up (cancelled)
            elif isinstance(reply, Exception):
                command.future.set_exception(reply)
            else:
                command.future.set_result(reply)
        return retry


def pack_command(args: tuple[EncodableT, ...]) -> bytes:
    """One command in RESP: *<n> then $<len> <bytes> per argument."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bool):
            raise DataError(f"refusing to send a bool ({arg!r}) to Redis: convert it explicitly")
        elif isinstance(arg, int):
            data = b"%d" % arg
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            data = bytes(arg)
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _fail(batch: list[_Command], exc: Exception) -> None:
    for command in batch:
        if not command.future.done():
            command.future.set_exception(exc)
