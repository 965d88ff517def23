"""The requests of the order-entry socket, each answered by the code of its HTTP endpoint (CONTRACT.md "Order
entry over WebSocket"): `place` = POST /orders, `place_batch` = POST /orders/batch, `cancel` =
POST /orders/{id}/cancel, `amend` = PATCH /orders/{id}, `cancel_all` = POST /orders/cancel-all.

A request arrives as the frame's top-level fields, each still raw JSON; every op takes what its endpoint's
body (or path) would hold and calls that endpoint's Request-independent function. The socket has already
authenticated the principal (401 before that is the socket's answer), so the checks start past 401.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import msgspec
from starlette.responses import Response

from services.common.auth import Principal
from services.ingest.amend import amend, decode_amend
from services.ingest.answers import Answer
from services.ingest.cancel_all import cancel_all, decode_cancel_all
from services.ingest.context import IngestContext
from services.ingest.errors import ErrorDetail, invalid, too_large
from services.ingest.handling import checked_order_id
from services.ingest.order_reads import cancel
from services.ingest.place_batch import place_batch
from services.ingest.place_order import place_order, refusal

Fields = Mapping[str, msgspec.Raw]
Op = Callable[[IngestContext, Principal, Fields, str], Awaitable[Answer]]

# What every request carries besides its op's own fields.
ENVELOPE = frozenset({"id", "op"})

_decode_str = msgspec.json.Decoder(str).decode
_encode = msgspec.json.Encoder().encode


def _answer(response: Response) -> Answer:
    return response.status_code, bytes(response.body)


def _unknown(fields: Fields, allowed: frozenset[str]) -> list[ErrorDetail]:
    return [ErrorDetail(name, "unknown field") for name in fields if name not in allowed]


async def place(ctx: IngestContext, principal: Principal, fields: Fields, session: str) -> Answer:
    """POST /orders with `order` as its body (MAX_BODY_BYTES applies to it as to the HTTP body)."""
    details = _unknown(fields, _PLACE)
    order = fields.get("order")
    if order is None:
        details.insert(0, ErrorDetail("order", "is required: the order, as POST /orders takes it"))
    if details:
        return _answer(refusal(ctx, invalid(details), None))
    assert order is not None
    limit = ctx.settings.max_body_bytes
    if len(order) > limit:
        return _answer(refusal(ctx, too_large(limit), None))
    return _answer(await place_order(ctx, principal, bytes(order), None, session))


async def place_batch_op(ctx: IngestContext, principal: Principal, fields: Fields, session: str) -> Answer:
    """POST /orders/batch with `{"orders": <orders>}` as its body (BATCH_MAX_BODY_BYTES applies to it)."""
    details = _unknown(fields, _PLACE_BATCH)
    if details:
        return _answer(refusal(ctx, invalid(details), None))
    orders = fields.get("orders")
    # Without `orders`, the batch's own check answers (422 naming `orders`), as it does over HTTP.
    body = b"{}" if orders is None else b'{"orders":' + bytes(orders) + b"}"
    limit = ctx.settings.batch_max_body_bytes
    if len(body) > limit:
        return _answer(refusal(ctx, too_large(limit), None))
    return _answer(await place_batch(ctx, principal, body, None, session))


def order_id_field(fields: Fields) -> str:
    """The request's `order_id` (the HTTP path's): 422 when missing or not a string."""
    raw = fields.get("order_id")
    try:
        order_id = None if raw is None else _decode_str(raw)
    except msgspec.DecodeError:
        order_id = None
    if order_id is None:
        raise invalid([ErrorDetail("order_id", "is required: the order's id, a string")])
    return order_id


async def cancel_op(ctx: IngestContext, principal: Principal, fields: Fields, session: str) -> Answer:
    """POST /orders/{order_id}/cancel (an id that cannot be one: 404, as the path answers)."""
    details = _unknown(fields, _WITH_ORDER_ID)
    if details:
        raise invalid(details)
    return _answer(await cancel(ctx, principal, checked_order_id(order_id_field(fields))))


async def amend_op(ctx: IngestContext, principal: Principal, fields: Fields, session: str) -> Answer:
    """PATCH /orders/{order_id} with the other fields (`quantity`, `price`) as its body."""
    order_id = order_id_field(fields)
    request = decode_amend(_body(ctx, fields, _WITH_ORDER_ID))
    # In PATCH's order: the body decoded (400, 422 for an unknown field), then the path's 404, then the values.
    return await amend(ctx, principal, checked_order_id(order_id), request)


async def cancel_all_op(ctx: IngestContext, principal: Principal, fields: Fields, session: str) -> Answer:
    """POST /orders/cancel-all with the other fields (`client_id`, `instrument`, `side`) as its body."""
    return await cancel_all(ctx, principal, decode_cancel_all(_body(ctx, fields, ENVELOPE)))


def _body(ctx: IngestContext, fields: Fields, outside: frozenset[str]) -> bytes:
    """The HTTP body a request's fields stand for (all but `outside`, values as sent), within MAX_BODY_BYTES."""
    body = _encode({name: value for name, value in fields.items() if name not in outside})
    limit = ctx.settings.max_body_bytes
    if len(body) > limit:
        raise too_large(limit)
    return body


_PLACE = ENVELOPE | {"order"}
_PLACE_BATCH = ENVELOPE | {"orders"}
# cancel's fields, and amend's that are not its body (the HTTP path's id)
_WITH_ORDER_ID = ENVELOPE | {"order_id"}

OPS: dict[str, Op] = {
    "place": place,
    "place_batch": place_batch_op,
    "cancel": cancel_op,
    "amend": amend_op,
    "cancel_all": cancel_all_op,
}
