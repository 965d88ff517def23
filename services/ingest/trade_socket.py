"""The order-entry socket `ws://…:3000/trade` (CONTRACT.md "Order entry over WebSocket").

Authentication: a Bearer key on the handshake (`?cancel_on_disconnect=true` on the URL), or a first message
`{"op": "auth", "api_key", "cancel_on_disconnect"}`; either is answered `{"type": "authenticated", ...}`.
Under AUTH_MODE=off the socket starts authenticated as admin (an auth message may still switch
cancel-on-disconnect on). Requests `{"id", "op", ...}` each get one `{"type": "reply", "id", "status", "body"}`
whose status and body are the HTTP endpoint's (trade_ops.py). Requests run concurrently, at most
TRADE_MAX_IN_FLIGHT per socket: past that the socket is not read until one is answered, so a client sending
faster than it is answered is slowed down by TCP rather than queued in memory. Replies may come out of order.

Cancel-on-disconnect (trade_session.py): the socket's session is armed before `authenticated` is sent; on close
the places still in flight are awaited first, so every order placed through the socket is in its session's set
before the deadline is set to now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Literal

import msgspec
from redis.exceptions import RedisError
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from services.common.auth import ADMIN, Principal
from services.common.redis_batch import BatcherClosed
from services.ingest.context import IngestContext
from services.ingest.errors import ApiError, ErrorBody, ErrorDetail, invalid, unauthorized
from services.ingest.handling import redis_unavailable
from services.ingest.trade_ops import OPS, Fields

logger = logging.getLogger(__name__)

PATH = "/trade"
FRAME_MAX_BYTES = 1_048_576  # larger frames close the socket with 1009 (uvicorn's ws_max_size: app.py)
ID_MAX_CHARS = 64
CLOSE_TOO_BIG = 1009
CLOSE_POLICY = 1008  # the key was revoked
CLOSE_TRY_AGAIN = 1013  # cancel-on-disconnect could not be armed
# Places still in flight when the socket closes are awaited this long before its session's deadline is set to
# now (one accept.lua call: milliseconds unless Redis is failing).
PLACES_GRACE_S = 0.5
_PLACING = frozenset({"place", "place_batch"})


class AuthRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    op: Literal["auth"]
    api_key: str
    cancel_on_disconnect: bool = False
    id: str | None = None  # taken, not needed: the answer is `authenticated` (or an error), never a reply


class Authenticated(msgspec.Struct, frozen=True, tag="authenticated", tag_field="type"):
    role: str
    client_id: str | None
    cancel_on_disconnect: bool


class ErrorFrame(msgspec.Struct, frozen=True, tag="error", tag_field="type"):
    message: str


_decode_fields = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_decode_auth = msgspec.json.Decoder(AuthRequest).decode
_decode_str = msgspec.json.Decoder(str).decode
_encode = msgspec.json.Encoder().encode
_OPS_TEXT = ", ".join(["auth", *OPS])
_STATUS_TEXT = {status: str(status) for status in range(100, 600)}


class TradeSocket:
    """One order-entry connection: its principal, its cancel-on-disconnect session, its requests in flight."""

    def __init__(self, ctx: IngestContext, websocket: WebSocket, hold: Callable[[TradeSocket], None]) -> None:
        self.ctx = ctx
        self.ws = websocket
        self._hold = hold  # called once authenticated: the endpoint then closes the socket if its key is revoked
        self.principal: Principal | None = None
        self.key_id = ""
        self.by_message = False  # authenticated by an auth message (or on the handshake): no second one
        self.session = ""  # the cancel-on-disconnect session, "" none
        self._slots = asyncio.Semaphore(ctx.settings.trade_max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._placing: set[asyncio.Task[None]] = set()
        self._send_lock = asyncio.Lock()
        self._closed = False
        self._revoking: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Serve the connection until it closes, then end its cancel-on-disconnect session, if any."""
        authorization = self.ws.headers.get("authorization")
        cod = self.ws.query_params.get("cancel_on_disconnect", "false").lower() == "true"
        principal: Principal | None = ADMIN if self.ctx.key_table is None else None
        if authorization is not None and self.ctx.key_table is not None:
            principal = self.ctx.key_table.authenticate(authorization)
            if principal is None:
                err = unauthorized()
                await self.ws.send_denial_response(err.response())
                return
        await self.ws.accept()
        try:
            if principal is not None:
                if not await self._authenticate(principal, cod):
                    await self.ws.close(CLOSE_TRY_AGAIN)
                    return
                self.by_message = authorization is not None
            await self._serve()
        finally:
            await self._end()

    async def _serve(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data: bytes | None = message.get("bytes")
            if data is None:
                data = str(message.get("text", "")).encode()
            if len(data) > FRAME_MAX_BYTES:  # uvicorn refuses them first; this holds under any server
                await self._close(CLOSE_TOO_BIG)
                return
            await self._frame(data)

    async def _frame(self, data: bytes) -> None:
        try:
            fields = _decode_fields(data)
        except msgspec.DecodeError:
            await self._send_error("a frame must be a JSON object")
            return
        op = _text(fields.get("op"))
        if op == "auth":
            await self._auth(data)
            return
        request_id = _text(fields.get("id"))
        if request_id is None or not 1 <= len(request_id) <= ID_MAX_CHARS:
            await self._send_error(f'a request needs an "id": a string of 1 to {ID_MAX_CHARS} characters')
            return
        if self.principal is None:
            self.ctx.metrics.trade_requests.labels(op if op in OPS else "unknown", "401").inc()
            await self._reply(request_id, *_error(unauthorized()))
            return
        await self._slots.acquire()  # at TRADE_MAX_IN_FLIGHT: stop reading until a request is answered
        task = asyncio.create_task(self._request(request_id, op, fields, self.principal))
        self._tasks.add(task)
        if op in _PLACING:
            self._placing.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._placing.discard(task)
        self._slots.release()

    async def _request(self, request_id: str, op: str | None, fields: Fields, principal: Principal) -> None:
        handler = OPS.get(op or "")
        try:
            if handler is None:
                raise invalid([ErrorDetail("op", f"must be one of {_OPS_TEXT}, not {op!r}")])
            status, body = await handler(self.ctx, principal, fields, self.session)
        except ApiError as err:
            status, body = _error(err)
        except (RedisError, OSError, BatcherClosed) as exc:
            status, body = _error(redis_unavailable(exc))
        except Exception:
            # What guarded() answers over HTTP: a bug, not bad input.
            logger.exception("unexpected error in order-entry request %r (op %r)", request_id, op)
            status, body = 500, _encode(ErrorBody("internal", "unexpected error"))
        self.ctx.metrics.trade_requests.labels(op if handler is not None else "unknown", _STATUS_TEXT[status]).inc()
        await self._reply(request_id, status, body)

    async def _auth(self, data: bytes) -> None:
        if self.by_message:
            await self._send_error("already authenticated")
            return
        try:
            request = _decode_auth(data)
        except msgspec.DecodeError as exc:
            await self._send_error(f"auth: {exc}")
            return
        if self.ctx.key_table is None:
            principal: Principal | None = ADMIN
        else:
            principal = self.ctx.key_table.authenticate(f"Bearer {request.api_key}")
        if principal is None:
            await self._send_error("auth: unknown API key")
            return
        if await self._authenticate(principal, request.cancel_on_disconnect):
            self.by_message = True

    async def _authenticate(self, principal: Principal, cod: bool) -> bool:
        """Take `principal`, arm cancel-on-disconnect if asked (and not armed yet), answer `authenticated`;
        False (and an error frame) when the session cannot be armed."""
        if cod and not self.session:
            try:
                self.session = await self.ctx.trade_sessions.open()
                self.ctx.metrics.cod_sessions.inc()
            except (RedisError, OSError, BatcherClosed) as exc:
                logger.warning("cannot arm cancel-on-disconnect: %r", exc)
                await self._send_error("cancel_on_disconnect cannot be armed now (the order store, Redis, is "
                                       "unavailable): retry shortly")
                return False
        self.principal = principal
        self.key_id = principal.key_id
        self._hold(self)
        await self._send(_encode(Authenticated(principal.role, principal.client_id, bool(self.session))))
        return True

    async def _reply(self, request_id: str, status: int, body: bytes) -> None:
        await self._send(b'{"type":"reply","id":%b,"status":%d,"body":%b}' % (_encode(request_id), status, body))

    async def _send_error(self, message: str) -> None:
        await self._send(_encode(ErrorFrame(message)))

    async def _send(self, frame: bytes) -> None:
        if self._closed:
            return
        async with self._send_lock:
            try:
                await self.ws.send({"type": "websocket.send", "text": frame.decode()})
            except (WebSocketDisconnect, RuntimeError, OSError):
                # The client left: what is still in flight finishes without anyone to tell.
                self._closed = True

    def revoke(self) -> None:
        """The socket's key was revoked: close it (1008). A request still arriving gets 401; those in flight
        finish unanswered."""
        self.principal = None
        self._revoking = asyncio.create_task(self._close(CLOSE_POLICY))

    async def _close(self, code: int) -> None:
        async with self._send_lock:
            if not self._closed:
                self._closed = True
                with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                    await self.ws.close(code)

    async def _end(self) -> None:
        self._closed = True
        if self.session:
            if self._placing:
                await asyncio.wait(list(self._placing), timeout=PLACES_GRACE_S)
            await self.ctx.trade_sessions.close(self.session)
            self.ctx.metrics.cod_sessions.dec()
        if self._tasks:
            await asyncio.wait(list(self._tasks))


def _error(err: ApiError) -> tuple[int, bytes]:
    """The status and body of the HTTP answer `err` stands for."""
    return err.status, _encode(ErrorBody(err.code, err.message, err.details))


def _text(raw: msgspec.Raw | None) -> str | None:
    if raw is None:
        return None
    try:
        return _decode_str(raw)
    except msgspec.DecodeError:
        return None


class TradeEndpoint:
    """The ASGI endpoint of PATH; closes (1008) the sockets of a key revoked while they are open."""

    def __init__(self, ctx: IngestContext) -> None:
        self.ctx = ctx
        self._by_key: dict[str, set[TradeSocket]] = {}
        if ctx.key_file is not None:
            ctx.key_file.on_revoke(self._revoked)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        socket = TradeSocket(self.ctx, WebSocket(scope, receive, send), self._hold)
        sockets = self.ctx.metrics.trade_sockets
        sockets.inc()
        try:
            await socket.run()
        finally:
            sockets.dec()
            held = self._by_key.get(socket.key_id)
            if held is not None:
                held.discard(socket)
                if not held:
                    del self._by_key[socket.key_id]

    def _hold(self, socket: TradeSocket) -> None:
        if socket.key_id:
            self._by_key.setdefault(socket.key_id, set()).add(socket)

    def _revoked(self, key_ids: frozenset[str]) -> None:
        for key_id in key_ids:
            for socket in self._by_key.pop(key_id, set()):
                socket.revoke()
