"""What the /clients/{client_id}/... endpoints share: the path's client (authenticated, a client id, one the key
may act for) and the optional `instrument` query parameter."""

from __future__ import annotations

from starlette.requests import Request

from services.common.auth import Principal
from services.ingest.context import IngestContext
from services.ingest.errors import ErrorDetail, forbidden, invalid, not_found
from services.ingest.validation import ID_TEXT


def client_of(ctx: IngestContext, request: Request, what: str) -> tuple[Principal, str]:
    """The caller and the path's client id: 401 without a key, 404 for anything that cannot be a client id,
    403 when a trader key names another client (`what` says what belongs to it)."""
    principal = ctx.authenticate(request)
    client_id = str(request.path_params.get("client_id", ""))
    if not ID_TEXT.match(client_id):
        raise not_found(f"no client {client_id[:80]!r}")
    if not principal.may_act_for(client_id):
        raise forbidden(f"the {what} of {client_id!r} belong to another client")
    return principal, client_id


def instrument_param(ctx: IngestContext, request: Request) -> str | None:
    """The optional `instrument` query parameter: a configured instrument, 422 otherwise."""
    symbol = request.query_params.get("instrument")
    if symbol is not None and symbol not in ctx.instruments:
        raise invalid([ErrorDetail("instrument", f"unknown instrument {symbol[:64]!r}")])
    return symbol
