"""One connected client's outbound side: a bounded queue of encoded messages and the task that sends them."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from services.broadcaster.metrics import BroadcasterMetrics

SendText = Callable[[str], Awaitable[None]]


class Client:
    """Messages are pushed synchronously by the hub and sent by run(); a client over its bound is dropped.

    push() never waits, so a slow client costs the others nothing but a list append. When several
    messages are waiting, they leave as one frame holding a JSON array (FACTS.md: ~7x the throughput
    of one message per frame).
    """

    def __init__(self, send_text: SendText, bound: int, max_batch: int, metrics: BroadcasterMetrics) -> None:
        self._send_text = send_text
        self.bound = bound
        self._max_batch = max_batch
        self._metrics = metrics
        self._queue: deque[str] = deque()
        self._wakeup = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self.drop_reason: str | None = None
        self.messages_sent = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def closed(self) -> bool:
        return self.drop_reason is not None

    def push(self, payload: str) -> None:
        """Queue one encoded message; drop the client if that would put it over its bound."""
        if self.drop_reason is not None:
            return
        if len(self._queue) >= self.bound:
            self.drop("slow")
            return
        self._queue.append(payload)
        self._wakeup.set()

    def drop(self, reason: str) -> None:
        """Stop sending at once; the connection then closes with 1013 (see session.py)."""
        if self.drop_reason is not None:
            return
        self.drop_reason = reason
        self._queue.clear()
        # The sender may be parked on a socket the peer does not read: cancelling it leaves no partial
        # frame, since uvicorn writes a frame whole once the transport is writable again.
        if self._sender is not None:
            self._sender.cancel()

    def start(self) -> asyncio.Task[None]:
        self._sender = asyncio.create_task(self._run(), name="ws-sender")
        return self._sender

    async def _run(self) -> None:
        queue, max_batch = self._queue, self._max_batch
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while queue:
                n = min(len(queue), max_batch)
                if n == 1:
                    frame = queue.popleft()
                else:
                    frame = "[" + ",".join([queue.popleft() for _ in range(n)]) + "]"
                await self._send_text(frame)
                self.messages_sent += n
                self._metrics.messages_sent.inc(n)
                self._metrics.frames_sent.inc()
