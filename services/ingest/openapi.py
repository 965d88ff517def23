"""GET /openapi.json: the ingest API described from the very msgspec types the handlers use."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from services.common.book import BookSnapshot
from services.common.snapshots import SnapshotInfo
from services.ingest.analytics_routes import CandleView, TickerView
from services.ingest.errors import ErrorBody, raw_json_response
from services.ingest.health import Readiness
from services.ingest.pg_reads import TradeView
from services.ingest.positions_routes import PositionsView
from services.ingest.settlement_routes import SettlementRequest
from services.ingest.validation import OrderRequest
from services.ingest.views import CancelRequested, OrderView

_TYPES: list[Any] = [OrderRequest, OrderView, CancelRequested, ErrorBody, BookSnapshot, list[TradeView],
                     TickerView, list[CandleView], PositionsView, SettlementRequest, SnapshotInfo, Readiness]
_REF = "#/components/schemas/{name}"
_ORDER_ERRORS = {"400": "not JSON, or not an object", "401": "no or bad API key", "403": "acting for another client",
                 "413": "body over the size limit", "422": "a field invalid, missing or unknown (`validation_error`)",
                 "429": "over the client's or the API key's rate limit (Retry-After)",
                 "503": "Redis unreachable or the matcher too far behind (Retry-After)"}
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
# The client's token bucket (IETF draft names), on every order answer that reached it; absent while it is off.
_RATE_HEADERS = {
    "RateLimit-Limit": {"description": "the bucket's size (RATE_LIMIT_BURST)",
                        "schema": {"type": "integer", "minimum": 1}},
    "RateLimit-Remaining": {"description": "whole tokens left after this answer",
                            "schema": {"type": "integer", "minimum": 0}},
    "RateLimit-Reset": {"description": "seconds until the bucket is full again",
                        "schema": {"type": "integer", "minimum": 0}},
}
_RETRY_AFTER = {"description": "seconds to wait", "schema": {"type": "integer", "minimum": 1}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(name=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(codes: dict[str, str]) -> dict[str, Any]:
    return {code: _json(_ref("ErrorBody"), text) for code, text in codes.items()}


def _param(name: str, where: str, description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path", "description": description,
            "schema": {"type": "string"}}


def build_openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the ingest service."""
    schemas, components = msgspec.json.schema_components(_TYPES, ref_template=_REF)
    trades, candles = schemas[5], schemas[7]
    order_id = _param("order_id", "path", "the engine's order id")
    instrument_q = _param("instrument", "query", "instrument symbol, e.g. BTC-USD")
    order_answers: dict[str, Any] = {
        "201": _json(_ref("OrderView"), "accepted: on the instrument's orders stream"),
        "200": _json(_ref("OrderView"), "idempotent replay of the first answer"),
        "409": _json(_ref("ErrorBody"), "`idempotency_conflict`: same key, different body; "
                                        "`duplicate_client_order_id`: client_order_id used"),
        **_errors(_ORDER_ERRORS)}
    for status in ("201", "200", "409", "429", "503"):
        order_answers[status]["headers"] = dict(_RATE_HEADERS)
    order_answers["429"]["headers"]["Retry-After"] = _RETRY_AFTER
    order_answers["503"]["headers"]["Retry-After"] = _RETRY_AFTER
    paths: dict[str, Any] = {
        "/orders": {"post": {
            "summary": "Place an order", "security": BEARER,
            "parameters": [_param("Idempotency-Key", "header", "alternative to the body's idempotency_key")],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("OrderRequest")}}},
            "responses": order_answers}},
        "/orders/{order_id}": {
            "get": {"summary": "An order's state", "security": BEARER, "parameters": [order_id],
                    "responses": {"200": _json(_ref("OrderView"), "the order"),
                                  **_errors({"401": "no or bad key", "403": "another client's order",
                                             "404": "unknown order"})}},
            "delete": {"summary": "Cancel an order (same as POST /orders/{order_id}/cancel)", "security": BEARER,
                       "parameters": [order_id], "responses": {"200": _json(_ref("OrderView"), "cancelled")}}},
        "/orders/{order_id}/cancel": {"post": {
            "summary": "Cancel an order and wait up to CANCEL_WAIT_MS for the outcome", "security": BEARER,
            "parameters": [order_id],
            "responses": {"200": _json(_ref("OrderView"), "cancelled"),
                          "202": _json(_ref("CancelRequested"), "outcome not known within the wait"),
                          "409": _json(_ref("OrderView"), "already final"),
                          **_errors({"403": "another client's order", "404": "unknown order"})}}},
        "/orderbook": {"get": {
            "summary": "Aggregated order book, best levels first",
            "parameters": [instrument_q, _param("levels", "query", "1-1000, default 20")],
            "responses": {"200": _json(_ref("BookSnapshot"), "the book at `seq`"), **_errors({"422": "bad query"})}}},
        "/trades": {"get": {
            "summary": "Recent trades, newest first (PostgreSQL)",
            "parameters": [instrument_q, _param("limit", "query", "1-1000, default 50")],
            "responses": {"200": _json(trades, "trades"), **_errors({"422": "bad query", "503": "no database"})}}},
        "/analytics/{instrument}/ticker": {"get": {
            "summary": "Rolling 24 h statistics", "parameters": [_param("instrument", "path", "symbol")],
            "responses": {"200": _json(_ref("TickerView"), "ticker")}}},
        "/analytics/{instrument}/candles": {"get": {
            "summary": "OHLCV and VWAP per UTC-aligned bucket",
            "parameters": [_param("instrument", "path", "symbol"),
                           _param("interval", "query", "1m, 5m, 15m, 1h or 1d", required=True),
                           _param("start", "query", "ISO-8601 or epoch ms (default end - 24 h)"),
                           _param("end", "query", "ISO-8601 or epoch ms (default now)")],
            "responses": {"200": _json(candles, "candles, oldest first"),
                          **_errors({"422": "bad query or over 1,500 buckets"})}}},
        "/clients/{client_id}/positions": {"get": {
            "summary": "Net positions and volumes of a client", "security": BEARER,
            "parameters": [_param("client_id", "path", "client id"),
                           _param("as_of", "query", "ISO-8601 or epoch ms (default now)")],
            "responses": {"200": _json(_ref("PositionsView"), "positions"),
                          **_errors({"401": "no or bad key", "403": "another client's positions"})}}},
        "/admin/settlements": {"post": {
            "summary": "End-of-day settlement of a UTC date (admin)", "security": BEARER,
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": _ref("SettlementRequest")}}},
            "responses": {"200": {"description": "settled and reconciled"}}}},
        "/admin/snapshots": {"post": {
            "summary": "Store the order book now (admin)", "security": BEARER, "parameters": [instrument_q],
            "responses": {"201": {"description": "the stored snapshots' ids"}}}},
        "/admin/snapshots/latest": {"get": {
            "summary": "The newest stored snapshot (admin)", "security": BEARER, "parameters": [instrument_q],
            "responses": {"200": _json(_ref("SnapshotInfo"), "snapshot")}}},
        "/healthz": {"get": {"summary": "The process is up", "responses": {"200": {"description": "ok"}}}},
        "/readyz": {"get": {"summary": "Redis reachable, Lua loaded, consumer groups present",
                            "responses": {"200": _json(_ref("Readiness"), "ready"),
                                          "503": _json(_ref("Readiness"), "not ready")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "trading-engine ingest", "version": "1",
                 "description": "Orders, order book, trades, analytics and clearing. Decimals are strings."},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def openapi_endpoint() -> Any:
    """A handler serving the document, encoded once."""
    body = msgspec.json.encode(build_openapi())

    async def openapi(_: Request) -> Response:
        return raw_json_response(body)

    return openapi
