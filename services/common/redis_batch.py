"""Coalesces the Redis commands of concurrent requests into pipelines, one per event-loop tick.

An awaited redis-py command costs ~120 µs of Python CPU, a command inside a shared pipeline ~13 µs
(FACTS.md). Requests call `execute()` / `evalsha()` as if they had Redis to themselves; the batcher
queues the command, and a callback scheduled with `call_soon` (it runs after every task that was
ready in this tick) sends everything queued so far as one non-transactional pipeline. Each caller's
future gets its own command's reply, or its own error.

At most `max_in_flight` pipelines are outstanding: under load, commands pile up while earlier
pipelines are on the wire, so batches grow with the load instead of the number of round trips.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError
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
        """Queue one command (e.g. "HGET", key, field); the future resolves to its parsed reply."""
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
        """Run one command within the next pipeline and return its reply (errors are raised)."""
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
        pipe = self._redis.pipeline(transaction=False)
        for command in batch:
            pipe.pipeline_execute_command(*command.args)  # type: ignore[no-untyped-call]
        self.pipelines_sent += 1
        self.commands_sent += len(batch)
        replies = await pipe.execute(raise_on_error=False)
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


def _fail(batch: list[_Command], exc: Exception) -> None:
    for command in batch:
        if not command.future.done():
            command.future.set_exception(exc)
