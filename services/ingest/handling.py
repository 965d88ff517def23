"""What every handler shares: bounded body reads, path id checks, the guard turning failures into JSON."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive

from services.common.redis_batch import BatcherClosed
from services.ingest.errors import (
    ApiError,
    ErrorBody,
    bad_request,
    json_response,
    not_found,
    too_large,
    unavailable,
)
from services.ingest.validation import ID_TEXT

logger = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]


def _check_declared_length(headers: Headers, limit: int) -> None:
    declared = headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise bad_request("Content-Length is not a number") from None
        if size > limit:
            raise too_large(limit)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) anything over `limit` bytes without reading further."""
    _check_declared_length(request.headers, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_asgi_body(headers: Headers, receive: Receive, limit: int) -> bytes:
    """read_body for a raw ASGI request: the same 413 rules, straight from `receive`."""
    _check_declared_length(headers, limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def order_id_of(request: Request) -> str:
    """The {order_id} path parameter; 404 for anything that cannot be an order id."""
    return checked_order_id(str(request.path_params.get("order_id", "")))


def checked_order_id(order_id: str) -> str:
    """`order_id` if it can be an order id; ApiError 404 otherwise."""
    if not ID_TEXT.match(order_id):
        raise not_found(f"no order {order_id[:80]!r}")
    return order_id


def redis_unavailable(exc: Exception) -> ApiError:
    logger.warning("Redis unavailable: %r", exc)
    return unavailable("the order store (Redis) is unavailable, retry shortly")


def guarded(handler: Handler) -> Handler:
    """Answer ApiError with its JSON error, Redis failures with 503, and anything else with a JSON 500."""

    @functools.wraps(handler)
    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as err:
            return err.response()
        except (RedisError, OSError, BatcherClosed) as exc:
            return redis_unavailable(exc).response()
        except Exception:
            logger.exception("unexpected error in %s %s", request.method, request.url.path)
            return json_response(ErrorBody("internal", "unexpected error"), 500)

    return run
