"""One WebSocket connection: its client messages (auth, subscribe, unsubscribe) and its lifetime.

The connection runs two tasks: the receiver (client messages, snapshots, replays) and the client's
sender. Whichever ends first ends the connection: a handler that only awaited its sender would never
notice a client that left (FACTS.md), and one that only awaited receive could not drop a slow client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from typing import Any

import msgspec
from redis.exceptions import RedisError
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from services.broadcaster.catchup import read_snapshot, replay_trades
from services.broadcaster.client import Client
from services.broadcaster.context import BroadcasterContext
from services.broadcaster.entries import MalformedEntry
from services.broadcaster.hub import Feed
from services.broadcaster.protocol import (
    CHANNELS,
    CLIENT_DECODER,
    Auth,
    Authenticated,
    Channel,
    ClientMessage,
    Error,
    Ping,
    Pong,
    ServerMessage,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    encode,
)
from services.broadcaster.stall import Progress
from services.common.auth import Principal

logger = logging.getLogger(__name__)

CLOSE_POLICY_VIOLATION = 1008
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_REASONS = {"slow": "client too slow", "stalled": "client stopped reading"}
KEY_REVOKED = "API key revoked"  # the reason of the 1008 close of a connection whose key was revoked
SERVER_SEND = "broadcaster.server_send"  # scope key: the ASGI server's send (see app.KeepServerSend)
_connection_ids = itertools.count(1)
FeedKey = tuple[str, str]  # (channel, instrument)


class RequestError(ValueError):
    """A client message the session refuses; its text goes back as an `error` message."""


class Session:
    """Serves one accepted WebSocket until the client leaves or is dropped."""

    def __init__(self, ctx: BroadcasterContext, websocket: WebSocket) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.ws = websocket
        self.conn_id = next(_connection_ids)
        self.client = Client(websocket.send_text, ctx.settings.queue_bound, ctx.settings.max_batch, ctx.metrics)
        self.principal: Principal | None = None
        self.feeds: dict[FeedKey, Feed] = {}
        self.orders: set[str] = set()  # instruments of the orders channel
        self._resyncs: dict[Feed, asyncio.Task[None]] = {}
        self._close_code: int | None = None
        self._policy_close: str | None = None  # the reason of a 1008 close once the queue is sent
        self._receiver: asyncio.Task[None] | None = None
        # Arrival times of the last max_messages_per_sec client messages: a sliding one-second window,
        # so no second ever holds more (a token bucket would let twice as many through across a refill).
        self._recent: deque[float] = deque(maxlen=ctx.settings.max_messages_per_sec)

    # Lifetime -----------------------------------------------------------------------------------

    async def run(self) -> None:
        if not self.ctx.admit():
            # Refused before accept: no session, no tasks; the client sees an HTTP 503.
            await self.ws.send_denial_response(JSONResponse(
                {"error": "too_many_connections",
                 "message": f"the broadcaster has its limit of {self.settings.max_connections} connections"},
                status_code=503, headers={"Retry-After": "1"}))
            return
        try:
            await self._run()
        finally:
            self.ctx.release()

    async def _run(self) -> None:
        await self.ws.accept()
        started = time.monotonic()
        peer = f"{self.ws.client.host}:{self.ws.client.port}" if self.ws.client else "?"
        self.ctx.metrics.clients.inc()
        logger.info("client connected", extra={"conn": self.conn_id, "peer": peer})
        self._authenticate_header()
        self.client.progress = Progress(_transport(self.ws))
        sender = self.client.start()
        self.ctx.clients.add(self.client)
        receiver = self._receiver = asyncio.create_task(self._receive_loop(), name="ws-receiver")
        try:
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if self._policy_close is not None:
                # The error goes out first; a client that does not read it meets the stall rule.
                await asyncio.wait({sender})
        finally:
            self.ctx.clients.discard(self.client)
            if self.principal is not None:
                self.ctx.release_key(self.principal.key_id, self.revoke)
            tasks = [receiver, sender, *self._resyncs.values()]
            self._unsubscribe_all()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.client.drop_reason is not None:
                await self._close_dropped()
            elif self._policy_close is not None:
                await self._close(CLOSE_POLICY_VIOLATION, self._policy_close)
            self.ctx.metrics.clients.dec()
            logger.info("client disconnected", extra={
                "conn": self.conn_id, "peer": peer, "code": self._close_code, "dropped": self.client.drop_reason,
                "messages": self.client.messages_sent, "seconds": round(time.monotonic() - started, 3)})

    async def _close_dropped(self) -> None:
        reason = self.client.drop_reason or "slow"
        self.ctx.metrics.dropped.labels(reason).inc()
        logger.warning("client dropped", extra={"conn": self.conn_id, "reason": reason,
                                                "queue_bound": self.client.bound, "stall_s": self.settings.stall_s})
        await self._close(CLOSE_TRY_AGAIN_LATER, CLOSE_REASONS.get(reason, reason))

    async def _close(self, code: int, reason: str) -> None:
        self._close_code = code
        try:
            # uvicorn writes the close frame once the socket drains: a client that catches up reads its
            # backlog and then the close; one that never reads gets its connection aborted.
            await asyncio.wait_for(self.ws.close(code, reason), self.settings.close_timeout_s)
        except (TimeoutError, RuntimeError, OSError, WebSocketDisconnect):
            _abort_transport(self.ws)

    async def _receive_loop(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                self._close_code = message.get("code")
                return
            if not self._within_rate():
                self._over_rate()
                return
            text, data = message.get("text"), message.get("bytes")
            raw = text.encode() if text is not None else (data or b"")
            try:
                await self._handle(raw)
            except RequestError as exc:
                self.ctx.metrics.client_errors.inc()
                self._send(Error(message=str(exc)))

    def _within_rate(self) -> bool:
        recent, now = self._recent, time.monotonic()
        if len(recent) == recent.maxlen and now - recent[0] < 1.0:
            return False
        recent.append(now)
        return True

    def _over_rate(self) -> None:
        logger.warning("client over the message rate", extra={
            "conn": self.conn_id, "limit": self.settings.max_messages_per_sec})
        self._policy_violation("message_rate", "message rate limit",
                               f"more than {self.settings.max_messages_per_sec} messages per second: "
                               "closing the connection")

    def revoke(self) -> None:
        """The key this connection authenticated with was revoked (or changed): close it with 1008."""
        logger.warning("API key revoked, closing the connection", extra={
            "conn": self.conn_id, "key_id": self.principal.key_id if self.principal else None})
        self._policy_violation("key_revoked", KEY_REVOKED, f"{KEY_REVOKED}: closing the connection")
        if self._receiver is not None:
            # Nothing more is read or handled (a subscribe half done stops at its await): the key is gone.
            self._receiver.cancel()

    def _policy_violation(self, metric: str, reason: str, message: str) -> None:
        """An `error`, then close 1008 once it is sent; nothing else is sent or read meanwhile."""
        if self._policy_close is not None:
            return
        self._policy_close = reason
        self.ctx.metrics.dropped.labels(metric).inc()
        self._unsubscribe_all()
        self._send(Error(message=message))
        self.client.finish()

    # Client messages ----------------------------------------------------------------------------

    async def _handle(self, raw: bytes) -> None:
        if len(raw) > self.settings.max_message_bytes:
            raise RequestError(f"message of {len(raw)} bytes is over the limit of "
                               f"{self.settings.max_message_bytes}")
        try:
            message: ClientMessage = CLIENT_DECODER.decode(raw)
        except msgspec.DecodeError as exc:
            raise RequestError(f"invalid message: {exc}") from None
        if isinstance(message, Subscribe):
            await self._subscribe(message)
        elif isinstance(message, Unsubscribe):
            self._unsubscribe(message)
        elif isinstance(message, Auth):
            self._auth(message.api_key)
        elif isinstance(message, Ping):
            self._send(Pong())

    def _authenticate_header(self) -> None:
        key_table = self.ctx.key_table
        if key_table is None:
            self.principal = self.ctx.authenticate("")
            return
        header = self.ws.headers.get("authorization")
        if header:
            self.principal = key_table.authenticate(header)
            if self.principal is None:
                self._send(Error(message="invalid API key in the Authorization header"))
            else:
                self.ctx.hold_key(self.principal.key_id, self.revoke)

    def _auth(self, api_key: str) -> None:
        if self.principal is not None and self.ctx.key_table is not None:
            raise RequestError("this connection is already authenticated")
        principal = self.ctx.authenticate(api_key)
        if principal is None:
            logger.info("bad API key", extra={"conn": self.conn_id})  # never the key itself
            raise RequestError("invalid API key")
        self.principal = principal
        self.ctx.hold_key(principal.key_id, self.revoke)
        self._send(Authenticated(role=principal.role, client_id=principal.client_id))

    def _instruments(self, symbols: list[str] | None) -> list[str]:
        if symbols is None:
            return list(self.ctx.instruments)
        unknown = [s for s in symbols if s not in self.ctx.instruments]
        if unknown:
            raise RequestError(f"unknown instrument {unknown[0]!r}")
        return list(dict.fromkeys(symbols))

    async def _subscribe(self, message: Subscribe) -> None:
        instruments = self._instruments(message.instruments)
        channels: list[Channel] = [c for c in CHANNELS if c in message.channels]
        if "orders" in channels and self.principal is None:
            raise RequestError('the orders channel needs {"op": "auth", "api_key": ...} first')
        if message.since_seq is not None and "trades" not in channels:
            raise RequestError("since_seq applies to the trades channel only")
        new = [(c, i) for i in instruments for c in channels if not self._subscribed(c, i)]
        total = len(self.feeds) + len(self.orders) + len(new)
        if total > self.settings.max_subscriptions:
            raise RequestError(f"{total} subscriptions would be over the limit of "
                               f"{self.settings.max_subscriptions} per connection")
        self._send(Subscribed(channels=channels, instruments=instruments, since_seq=message.since_seq))
        for channel, instrument in new:
            if channel == "orders":
                self.ctx.hub.add_orders(self.client, instrument, self._own_client_id())
                self.orders.add(instrument)
            elif channel == "trades":
                await self._start_trades(instrument, message.since_seq)
            else:
                await self._start_book(instrument)

    def _subscribed(self, channel: str, instrument: str) -> bool:
        return instrument in self.orders if channel == "orders" else (channel, instrument) in self.feeds

    def _own_client_id(self) -> str | None:
        """Whose events the orders channel carries: a trader's own only, everyone's for broker and admin."""
        assert self.principal is not None
        return self.principal.client_id if self.principal.role == "trader" else None

    async def _start_trades(self, instrument: str, since_seq: int | None) -> None:
        feed = Feed(self.client, "trades", instrument, on_gap=None)
        self.feeds["trades", instrument] = feed
        if since_seq is None:
            self.ctx.hub.add_feed(feed)
            return
        # Hold live trades first, then read the stream: nothing falls between the replay and the live
        # feed, and whatever both carry is dropped by seq.
        feed.hold()
        self.ctx.hub.add_feed(feed)
        try:
            replay = await replay_trades(self.ctx.redis, self.ctx.keys[instrument].trades, since_seq,
                                         self.settings.max_replay)
        except (RedisError, OSError, MalformedEntry) as exc:
            self._remove_feed(feed)
            raise RequestError(f"cannot replay the trades of {instrument}: {exc}") from None
        if replay.truncated_before is not None:
            self._send(Error(message=f"trades {since_seq + 1}..{replay.truncated_before - 1} of {instrument} "
                                     f"are not replayed (at most {self.settings.max_replay}, or trimmed from "
                                     f"the stream): GET /trades has them"))
        # Whole, whatever the queue bound: the client asked for it (at most max_replay per instrument).
        self.client.push_replay([encode(trade) for trade in replay.trades])
        feed.resume(replay.top_seq)

    async def _start_book(self, instrument: str) -> None:
        try:
            cached = await self.ctx.snapshots.get(instrument)
        except (RedisError, OSError) as exc:
            raise RequestError(f"cannot read the order book of {instrument}: {exc}") from None
        # From here to add_feed nothing awaits: the deltas after the snapshot, then the live ones, no gap.
        feed = Feed(self.client, "orderbook_deltas", instrument, on_gap=self._on_gap)
        self.feeds["orderbook_deltas", instrument] = feed
        self.client.push(cached.payload)
        feed.last_seq = cached.seq
        for seq, payload in cached.deltas:
            feed.offer(seq, payload)
        self.ctx.hub.add_feed(feed)

    async def _snapshot(self, feed: Feed) -> None:
        """A fresh snapshot for a feed that missed a delta (rare, not client-driven: no cache)."""
        instrument = feed.instrument
        try:
            snapshot = await read_snapshot(self.ctx.redis, self.ctx.instruments[instrument],
                                           self.ctx.keys[instrument], self.settings.snapshot_levels)
        except (RedisError, OSError) as exc:
            self._remove_feed(feed)
            raise RequestError(f"cannot read the order book of {instrument}: {exc}") from None
        self.client.push(encode(snapshot))
        feed.resume(snapshot.seq)

    def _on_gap(self, feed: Feed) -> None:
        if feed not in self._resyncs:
            logger.warning("order book delta missing, sending a new snapshot",
                           extra={"conn": self.conn_id, "instrument": feed.instrument, "last_seq": feed.last_seq})
            self._resyncs[feed] = asyncio.create_task(self._resync(feed), name="ws-resync")

    async def _resync(self, feed: Feed) -> None:
        try:
            await self._snapshot(feed)
        except RequestError as exc:
            self._send(Error(message=str(exc)))
        finally:
            self._resyncs.pop(feed, None)

    def _unsubscribe(self, message: Unsubscribe) -> None:
        instruments = self._instruments(message.instruments)
        channels: list[Channel] = [c for c in CHANNELS if c in message.channels]
        for instrument in instruments:
            for channel in channels:
                self._remove(channel, instrument)
        self._send(Unsubscribed(channels=channels, instruments=instruments))

    def _remove(self, channel: str, instrument: str) -> None:
        if channel == "orders":
            if instrument in self.orders:
                self.orders.discard(instrument)
                self.ctx.hub.remove_orders(self.client, instrument, self._own_client_id())
            return
        feed = self.feeds.get((channel, instrument))
        if feed is not None:
            self._remove_feed(feed)

    def _remove_feed(self, feed: Feed) -> None:
        self.feeds.pop((feed.channel, feed.instrument), None)
        self.ctx.hub.remove_feed(feed)
        task = self._resyncs.pop(feed, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _unsubscribe_all(self) -> None:
        for key in list(self.feeds):
            self._remove(*key)
        for instrument in list(self.orders):
            self._remove("orders", instrument)

    def _send(self, message: ServerMessage) -> None:
        self.client.push(encode(message))


def _transport(websocket: WebSocket) -> Any:
    """uvicorn's transport of this connection, reached through its bound send method (ASGI offers none)."""
    protocol = getattr(websocket.scope.get(SERVER_SEND), "__self__", None)
    return getattr(protocol, "transport", None)


def _abort_transport(websocket: WebSocket) -> None:
    """Best effort: reset the TCP connection of a peer that stopped reading.

    uvicorn's transport.close() waits for the send buffer to drain, which a peer that never reads
    never lets happen; ASGI offers no abort.
    """
    transport = _transport(websocket)
    with contextlib.suppress(Exception):
        if transport is not None:
            transport.abort()
