"""GET /openapi.json: the ingest API described from the very msgspec types, constants and instruments the
handlers check against (openapi_parts.py). Every status an operation can answer is listed with its schema;
tests/ingest/test_schemathesis.py holds the service to it."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from services.analytics.settlement import SettlementReport
from services.common.book import MAX_LEVELS, BookSnapshot
from services.common.instruments import Instruments
from services.common.snapshots import SnapshotInfo
from services.ingest import openapi_management, openapi_risk
from services.ingest.admin import SnapshotsTaken
from services.ingest.analytics_routes import DEFAULT_INTERVAL, INTERVALS, MAX_BUCKETS, CandleView, TickerView
from services.ingest.errors import ErrorBody, raw_json_response
from services.ingest.health import Health, Readiness
from services.ingest.openapi_parts import (
    CLIENT_ID,
    DB_DOWN,
    IDEMPOTENCY_HEADER,
    ORDER_ID,
    RATE_HEADERS,
    REDIS_DOWN,
    REF,
    RETRY_AFTER,
    Schema,
    auth_errors,
    batch_schemas,
    body_errors,
    error,
    instrument_enum,
    int_range,
    json_answer,
    operation,
    order_bodies,
    pairs_as_arrays,
    param,
    ref,
    time_param,
)
from services.ingest.orderbook import DEFAULT_LEVELS
from services.ingest.pg_reads import TradeView
from services.ingest.place_batch import BatchError
from services.ingest.positions_routes import PositionsView
from services.ingest.settlement_routes import SettlementRequest
from services.ingest.trades import DEFAULT_LIMIT, MAX_LIMIT
from services.ingest.validation import OrderRequest
from services.ingest.views import CancelRequested, OrderView

_TYPES: list[Any] = [OrderRequest, OrderView, CancelRequested, ErrorBody, BookSnapshot, TradeView, TickerView,
                     CandleView, PositionsView, SettlementRequest, SettlementReport, SnapshotInfo, SnapshotsTaken,
                     Readiness, Health, BatchError, *openapi_management.TYPES, *openapi_risk.TYPES]
# POST /orders answers 201 and the replayed 200 with an order id: where a client (or schemathesis's
# stateful phase) goes next.
_ORDER_LINKS = {
    name: {"operationId": operation_id, "parameters": {"order_id": "$response.body#/order_id"}}
    for name, operation_id in (("GetOrder", "getOrder"), ("CancelOrder", "cancelOrder"),
                               ("DeleteOrder", "deleteOrder"), ("AmendOrder", "amendOrder"))
}


def _place_order() -> Schema:
    with_rate = {"headers": dict(RATE_HEADERS)}
    answers = {
        "201": json_answer(ref("OrderView"), "accepted: durably on the instrument's orders stream",
                           {**RATE_HEADERS, "Location": {"description": "/orders/{order_id}", "required": True,
                                                         "schema": {"type": "string"}}}, _ORDER_LINKS),
        "200": json_answer(ref("OrderView"), "the first answer again (Idempotent-Replayed: true): the same client "
                                             "sent the same idempotency key with the same body",
                           {**RATE_HEADERS, "Idempotent-Replayed": {"required": True, "schema": {"const": "true"}}},
                           _ORDER_LINKS),
        "409": {**error("`idempotency_conflict`: the key was used with another body; "
                        "`duplicate_client_order_id`: the client already used this client_order_id; "
                        "`instrument_halted`: an admin halted the instrument"), **with_rate},
        **body_errors("16 KiB (MAX_BODY_BYTES)"),
        "422": error("`validation_error`: a field is invalid, missing or unknown, or a limit order's price x "
                     "quantity is over the instrument's max_order_notional (`details` name `quantity`); "
                     "`details` name it"),
        **auth_errors("a trader key acting for another client_id; `client_halted`: an admin halted "
                      "the client"),
        "429": {**error("`rate_limited`: over the client's or the API key's token bucket"),
                "headers": {**RATE_HEADERS, "Retry-After": RETRY_AFTER}},
        "503": {**error("`unavailable`: Redis cannot be reached, or the matcher is more than MAX_MATCHER_LAG "
                        "entries behind"), "headers": {**RATE_HEADERS, "Retry-After": RETRY_AFTER}},
    }
    return operation("placeOrder", "Place an order", answers, secured=True, parameters=[IDEMPOTENCY_HEADER],
                      body=ref("OrderRequest"))


def _place_batch() -> Schema:
    answers = {
        "200": json_answer(ref("BatchResults"), "one result per order, in order: each order stands alone"),
        "400": error("`bad_request`: the body is not JSON, not an object, or nests too deeply"),
        "401": auth_errors("")["401"],
        "413": error("`payload_too_large`: the body is over 1 MiB (BATCH_MAX_BODY_BYTES)"),
        "422": error("`validation_error`: `orders` missing, not an array, empty or over BATCH_MAX_ORDERS, an unknown "
                     "field, or an Idempotency-Key header (keys go in each order); `details` name it"),
    }
    return operation("placeOrders", "Place up to BATCH_MAX_ORDERS orders, each answered as POST /orders would "
                                     "answer it alone", answers, secured=True, body=ref("BatchRequest"))


def _cancel(operation_id: str, summary: str) -> Schema:
    return operation(operation_id, summary, {
        "200": json_answer(ref("OrderView"), "cancelled: the final state"),
        "202": json_answer(ref("CancelRequested"), "the matcher's outcome did not arrive within CANCEL_WAIT_MS"),
        "409": json_answer(ref("OrderView"), "the order was already final (filled, cancelled or rejected)"),
        "404": error("`not_found`: no such order"), **auth_errors("another client's order"), **REDIS_DOWN},
        secured=True, parameters=[ORDER_ID])


def _paths(instruments: Instruments) -> dict[str, Schema]:
    instrument_path = param("instrument", "path", instrument_enum(instruments), "a configured instrument")
    any_instrument = param("instrument", "query", instrument_enum(instruments),
                           "a configured instrument (every instrument when absent)")
    admin = auth_errors("this endpoint needs an admin key")
    return {
        "/orders": {"post": _place_order()},
        "/orders/batch": {"post": _place_batch()},
        "/orders/{order_id}": {
            "get": operation("getOrder", "An order's state", {
                "200": json_answer(ref("OrderView"), "the order"), "404": error("`not_found`: no such order"),
                **auth_errors("another client's order"), **REDIS_DOWN}, secured=True, parameters=[ORDER_ID]),
            "delete": _cancel("deleteOrder", "Cancel an order (as POST /orders/{order_id}/cancel)"),
        },
        "/orders/{order_id}/cancel": {"post": _cancel(
            "cancelOrder", "Cancel an order, waiting up to CANCEL_WAIT_MS for the matcher's outcome")},
        "/orderbook": {"get": operation("getOrderbook", "The aggregated order book, best levels first", {
            "200": json_answer(ref("BookSnapshot"), "the book at `seq` (the WebSocket deltas' sequence)"),
            "422": error("`validation_error`: instrument missing or unknown, or levels out of range"),
            **REDIS_DOWN}, parameters=[
                param("instrument", "query", instrument_enum(instruments), "a configured instrument", required=True),
                param("levels", "query", int_range(1, MAX_LEVELS, DEFAULT_LEVELS), "levels per side")])},
        "/trades": {"get": operation("getTrades", "Recent trades, newest first (PostgreSQL)", {
            "200": json_answer({"type": "array", "items": ref("TradeView")}, "trades"),
            "422": error("`validation_error`: unknown instrument, or limit out of range"), **DB_DOWN},
            parameters=[any_instrument, param("limit", "query", int_range(1, MAX_LIMIT, DEFAULT_LIMIT), "trades")])},
        "/analytics/{instrument}/ticker": {"get": operation("getTicker", "Statistics of the last 24 h", {
            "200": json_answer(ref("TickerView"), "the ticker"),
            "422": error("`validation_error`: unknown instrument"), **DB_DOWN}, parameters=[instrument_path])},
        "/analytics/{instrument}/candles": {"get": operation(
            "getCandles", "OHLCV and VWAP per UTC-aligned bucket, oldest first, empty buckets left out", {
                "200": json_answer({"type": "array", "items": ref("CandleView"), "maxItems": MAX_BUCKETS},
                                   "candles"),
                "422": error(f"`validation_error`: a bad parameter, start not before end, or more than "
                             f"{MAX_BUCKETS} buckets"), **DB_DOWN},
            parameters=[instrument_path,
                        param("interval", "query", {"type": "string", "enum": list(INTERVALS),
                                                    "default": DEFAULT_INTERVAL}, "bucket width"),
                        time_param("start", "first bucket's earliest start (default end - 24 h)"),
                        time_param("end", "exclusive end (default now)")])},
        "/clients/{client_id}/positions": {"get": operation(
            "getPositions", "A client's net positions and volumes from its trades", {
                "200": json_answer(ref("PositionsView"), "positions"),
                "404": error("`not_found`: not a client id"), "422": error("`validation_error`: bad as_of"),
                **auth_errors("another client's positions"), **DB_DOWN},
            secured=True, parameters=[CLIENT_ID, time_param("as_of", "trades up to this time (default now)")])},
        "/admin/settlements": {"post": operation(
            "postSettlement", "End-of-day settlement of a UTC date (admin; idempotent)", {
                "200": json_answer(ref("SettlementReport"), "settled and reconciled"),
                **body_errors("16 KiB (MAX_BODY_BYTES)"), **admin, **DB_DOWN},
            secured=True, body=ref("SettlementRequest"))},
        "/admin/snapshots": {"post": operation("postSnapshots", "Store the order book now (admin)", {
            "201": json_answer(ref("SnapshotsTaken"), "the stored snapshots"),
            "422": error("`validation_error`: unknown instrument"), **admin, **DB_DOWN},
            secured=True, parameters=[any_instrument])},
        "/admin/snapshots/latest": {"get": operation("getLatestSnapshot", "The newest stored snapshot (admin)", {
            "200": json_answer(ref("SnapshotInfo"), "the snapshot"),
            "404": error("`not_found`: no snapshot of the instrument yet"),
            "422": error("`validation_error`: unknown instrument"), **admin, **DB_DOWN},
            secured=True, parameters=[param("instrument", "query", instrument_enum(instruments),
                                            "a configured instrument (default: the first)")])},
        "/healthz": {"get": operation("healthz", "The process is up", {
            "200": json_answer(ref("Health"), "up")})},
        "/readyz": {"get": operation("readyz", "Redis reachable, Lua loaded, consumer groups present", {
            "200": json_answer(ref("Readiness"), "ready"),
            "503": json_answer(ref("Readiness"), "not ready", {"Retry-After": RETRY_AFTER})})},
        "/metrics": {"get": operation("metrics", "Prometheus metrics", {
            "200": {"description": "the Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}}}})},
    }


def _merged(paths: dict[str, Schema], more: dict[str, Schema]) -> dict[str, Schema]:
    """`paths` with `more`'s path items added, and their operations joined to an item both have."""
    return {**paths, **{path: {**paths.get(path, {}), **item} for path, item in more.items()}}


def build_openapi(instruments: Instruments, batch_max_orders: int = 100) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the ingest service for these instruments (and BATCH_MAX_ORDERS)."""
    _, generated = msgspec.json.schema_components(_TYPES, ref_template=REF)
    components: dict[str, Schema] = pairs_as_arrays(generated)
    components.update(order_bodies(components["OrderRequest"], instruments))
    components.update(batch_schemas(batch_max_orders))
    components.update(openapi_management.schemas(components, instruments))
    return {
        "openapi": "3.1.0",
        "info": {"title": "trading-engine ingest", "version": "1",
                 "description": "Orders, order book, trades, analytics and clearing. Decimals are strings in "
                                "answers; errors are {\"error\", \"message\", \"details\"}."},
        "paths": _merged(_merged(_paths(instruments), openapi_management.paths(instruments)),
                         openapi_risk.paths(instruments)),
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "an API key: Authorization: Bearer <key>"}}},
    }


def openapi_endpoint(instruments: Instruments, batch_max_orders: int) -> Any:
    """A handler serving the document, encoded once."""
    body = msgspec.json.encode(build_openapi(instruments, batch_max_orders))

    async def openapi(_: Request) -> Response:
        return raw_json_response(body)

    return openapi
