"""Answers as (status, JSON body): what the order-management operations return, for HTTP and the order-entry
socket alike (its reply carries exactly the HTTP status and body)."""

from __future__ import annotations

from collections.abc import Awaitable

import msgspec
from redis.exceptions import RedisError

from services.common.redis_batch import BatcherClosed
from services.ingest.errors import ApiError, ErrorBody
from services.ingest.handling import redis_unavailable

Answer = tuple[int, bytes]

_encode = msgspec.json.Encoder().encode


def error_answer(err: ApiError) -> Answer:
    return err.status, _encode(ErrorBody(err.code, err.message, err.details))


async def answered(operation: Awaitable[Answer]) -> Answer:
    """The operation's answer, with every refusal (ApiError, Redis unreachable: 503) as its error body."""
    try:
        return await operation
    except ApiError as err:
        return error_answer(err)
    except (RedisError, OSError, BatcherClosed) as exc:
        return error_answer(redis_unavailable(exc))
