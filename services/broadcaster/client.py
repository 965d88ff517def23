"""One connected client's outbound side: a bounded queue of encoded messages and the task that sends them."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from services.broadcaster.metrics import BroadcasterMetrics

if TYPE_CHECKING:
    from services.broadcaster.stall import Progress

SendText = Callable[[str], Awaitable[None]]


class Client:
    """Messages are pushed synchronously by the hub and sent by run(); a client over its bound is dropped.

    push() never waits, so a slow client costs the others nothing but a list append. When several
    messages are waiting, they leave as one frame holding a JSON array (FACTS.md: ~7x the throughput
    of one message per frame).
    """

    def __init__(self, send_text: SendText, bound: int, max_batch: int, metrics: BroadcasterMetrics) -> None:
        self._send_text = send_text
        self.base_bound = bound
        self.bound = bound  # above base_bound while a replay is on its way (see push_replay)
        self._max_batch = max_batch
        self._metrics = metrics
        self._queue: deque[str] = deque()
        self._wakeup = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._finishing = False
        self.drop_reason: str | None = None
        self.messages_sent = 0
        self.sending = False  # a frame handed to the socket has not been taken yet
        # The stall watchdog's view of the connection and its last look (see stall.py).
        self.progress: Progress | None = None
        self.stall_mark = -1
        self.stall_since = 0.0

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

    def push_replay(self, payloads: Iterable[str]) -> None:
        """Queue a replay whole: the bound grows by its length and shrinks back as it is sent."""
        if self.drop_reason is not None:
            return
        before = len(self._queue)
        self._queue.extend(payloads)
        self.bound += len(self._queue) - before
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

    def finish(self) -> None:
        """Send what is queued, then end the sender (the session then closes the connection)."""
        self._finishing = True
        self._wakeup.set()

    def start(self) -> asyncio.Task[None]:
        self._sender = asyncio.create_task(self._run(), name="ws-sender")
        return self._sender

    async def _run(self) -> None:
        queue, max_batch, base = self._queue, self._max_batch, self.base_bound
        while not self._finishing or queue:
            await self._wakeup.wait()
            self._wakeup.clear()
            while queue:
                n = min(len(queue), max_batch)
                if n == 1:
                    frame = queue.popleft()
                else:
                    frame = "[" + ",".join([queue.popleft() for _ in range(n)]) + "]"
                self.sending = True
                await self._send_text(frame)
                self.sending = False
                self.messages_sent += n
                if self.bound > base:
                    self.bound = max(base, self.bound - n)
                self._metrics.messages_sent.inc(n)
                self._metrics.frames_sent.inc()
