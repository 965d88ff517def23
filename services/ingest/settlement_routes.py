"""POST /admin/settlements {"date": "YYYY-MM-DD"}: run the end-of-day settlement of a UTC date (admin)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from starlette.requests import Request
from starlette.responses import Response

from services.analytics.settlement import SettlementError, settle
from services.analytics.time_buckets import DATE_PATTERN, parse_date
from services.ingest.context import IngestContext
from services.ingest.errors import ErrorDetail, bad_request, forbidden, invalid, json_response
from services.ingest.handling import read_body
from services.ingest.pg_reads import database_unavailable
from services.ingest.validation import check_json


class SettlementRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    date: Annotated[str, msgspec.Meta(
        pattern=DATE_PATTERN, extra_json_schema={"format": "date"},
        description="a UTC date that is over, from 1970-01-01")]


_decode = msgspec.json.Decoder(SettlementRequest).decode


async def post_settlement(ctx: IngestContext, request: Request) -> Response:
    """Idempotent: running a date again changes nothing unless its trades changed."""
    principal = ctx.authenticate(request)
    if principal.role != "admin":
        raise forbidden("settlement needs an admin key")
    body = await read_body(request, ctx.settings.max_body_bytes)
    raw = check_json(body)
    if not isinstance(raw, dict):
        raise bad_request("the body must be a JSON object")
    try:
        day = parse_date(_decode(body).date)
    except (msgspec.ValidationError, ValueError) as exc:
        raise invalid([ErrorDetail("date", str(exc))]) from None
    try:
        report = await settle(ctx.db, ctx.instruments, day)
    except SettlementError as exc:
        raise invalid([ErrorDetail("date", str(exc))]) from None
    except (SQLAlchemyError, DBAPIError, OSError) as exc:
        raise database_unavailable(exc) from exc
    return json_response(report)
