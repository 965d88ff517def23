"""The order-management operations of GET /openapi.json (issue 15): amend, cancel-all, the dead man's switch and
a client's listings; their path items and the schemas msgspec cannot state (exact decimals, the instruments)."""

from __future__ import annotations

from typing import Any

from services.common.instruments import Instruments
from services.ingest.amend import AmendRejected, AmendRequest, AmendRequested
from services.ingest.cancel_all import CancelAllDone, CancelAllPending, CancelAllRequest
from services.ingest.client_fills import DEFAULT_LIMIT as FILLS_LIMIT
from services.ingest.client_fills import FillView
from services.ingest.client_orders import DEFAULT_LIMIT as ORDERS_LIMIT
from services.ingest.dead_man import MAX_TIMEOUT_MS, MIN_TIMEOUT_MS, CancelAllAfterRequest, DeadManSwitch
from services.ingest.openapi_parts import (
    CLIENT_ID,
    DB_DOWN,
    ORDER_ID,
    REDIS_DOWN,
    Schema,
    auth_errors,
    body_errors,
    decimal_schema,
    error,
    instrument_enum,
    int_range,
    json_answer,
    operation,
    param,
    ref,
    time_param,
)
from services.ingest.trades import MAX_LIMIT

TYPES: list[Any] = [AmendRequest, AmendRequested, AmendRejected, CancelAllRequest, CancelAllDone, CancelAllPending,
                    CancelAllAfterRequest, DeadManSwitch, FillView]
BODY_LIMIT = "16 KiB (MAX_BODY_BYTES)"


def schemas(components: dict[str, Schema], instruments: Instruments) -> dict[str, Schema]:
    """The bodies as the handlers check them: msgspec's schemas with exact decimals, the configured instruments,
    and timeout_ms's two ranges."""
    amend = components["AmendRequest"]
    cancel_all = components["CancelAllRequest"]
    after = components["CancelAllAfterRequest"]
    return {
        "AmendRequest": {
            **amend, "minProperties": 1,
            "description": "quantity (the new total, filled included) and/or price; at least one",
            "properties": {"quantity": decimal_schema("quantity", instruments, False),
                           "price": decimal_schema("price", instruments, False)}},
        "CancelAllRequest": {
            **cancel_all,
            "properties": {**cancel_all["properties"],
                           "instrument": {"anyOf": [instrument_enum(instruments), {"type": "null"}], "default": None,
                                          "description": "only this instrument's orders (all when absent)"}}},
        "CancelAllAfterRequest": {
            **after,
            "properties": {"timeout_ms": {
                "anyOf": [{"const": 0}, {"type": "integer", "minimum": MIN_TIMEOUT_MS, "maximum": MAX_TIMEOUT_MS}],
                "description": f"cancel everything this many ms from now unless called again ({MIN_TIMEOUT_MS} to "
                               f"{MAX_TIMEOUT_MS}); 0 disarms"}}},
    }


def paths(instruments: Instruments) -> dict[str, Schema]:
    """The path items of the order-management operations (PATCH joins /orders/{order_id}'s item)."""
    any_instrument = param("instrument", "query", instrument_enum(instruments),
                           "a configured instrument (every instrument when absent)")
    return {
        "/orders/{order_id}": {"patch": operation(
            "amendOrder", "Amend a live order's price and/or total quantity, waiting up to CANCEL_WAIT_MS for the "
                          "matcher's outcome", {
                "200": json_answer(ref("OrderView"), "amended (or nothing to change): the order after the amend"),
                "202": json_answer(ref("AmendRequested"), "the matcher's outcome did not arrive within "
                                                          "CANCEL_WAIT_MS"),
                "409": json_answer({"anyOf": [ref("AmendRejected"), ref("ErrorBody")]},
                                   "`amend_rejected`: the order is final, the new quantity is not above the filled "
                                   "quantity, or a post-only amend would cross; `order` is the order, unchanged. "
                                   "`instrument_halted` (an error body): an admin halted the order's instrument"),
                "404": error("`not_found`: no such order"),
                **body_errors(BODY_LIMIT),
                "422": error("`validation_error`: a field is invalid, missing or unknown, or the order's new price x "
                             "quantity is over the instrument's max_order_notional (`details` name `quantity`)"),
                **auth_errors("another client's order; `client_halted`: an admin halted the order's client"),
                **REDIS_DOWN},
            secured=True, parameters=[ORDER_ID], body=ref("AmendRequest"))},
        "/orders/cancel-all": {"post": operation(
            "cancelAllOrders", "Cancel every resting order of a client (on one instrument and side, if given), "
                               "waiting up to CANCEL_WAIT_MS for every instrument's matcher", {
                "200": json_answer(ref("CancelAllDone"), "applied on every instrument concerned: the orders "
                                                         "cancelled"),
                "202": json_answer(ref("CancelAllPending"), "some instruments had not applied it within "
                                                            "CANCEL_WAIT_MS"),
                **body_errors(BODY_LIMIT), **auth_errors("a trader key naming another client"), **REDIS_DOWN},
            secured=True, body=ref("CancelAllRequest"))},
        "/clients/{client_id}/cancel-all-after": {"post": operation(
            "cancelAllAfter", "The dead man's switch: unless called again within timeout_ms, every resting order "
                              "of the client is cancelled (reason dead_man_switch); 0 disarms", {
                "200": json_answer(ref("DeadManSwitch"), "the switch: armed with its deadline, or disarmed"),
                "404": error("`not_found`: not a client id"),
                **body_errors(BODY_LIMIT), **auth_errors("another client"), **REDIS_DOWN},
            secured=True, parameters=[CLIENT_ID], body=ref("CancelAllAfterRequest"))},
        "/clients/{client_id}/orders": {"get": operation(
            "getClientOrders", "A client's live orders (accepted, open, partially_filled), oldest first", {
                "200": json_answer({"type": "array", "items": ref("OrderView"), "maxItems": MAX_LIMIT}, "orders"),
                "404": error("`not_found`: not a client id"),
                "422": error("`validation_error`: unknown instrument, or limit out of range"),
                **auth_errors("another client's orders"), **REDIS_DOWN},
            secured=True, parameters=[CLIENT_ID, any_instrument,
                                      param("limit", "query", int_range(1, MAX_LIMIT, ORDERS_LIMIT), "orders")])},
        "/clients/{client_id}/fills": {"get": operation(
            "getClientFills", "A client's fills, newest first (PostgreSQL): its order's side of each trade, "
                              "maker or taker; a self-trade is two fills", {
                "200": json_answer({"type": "array", "items": ref("FillView"), "maxItems": MAX_LIMIT}, "fills"),
                "404": error("`not_found`: not a client id"),
                "422": error("`validation_error`: unknown instrument, limit out of range, or a bad end"),
                **auth_errors("another client's fills"), **DB_DOWN},
            secured=True, parameters=[CLIENT_ID, any_instrument,
                                      param("limit", "query", int_range(1, MAX_LIMIT, FILLS_LIMIT), "fills"),
                                      time_param("end", "exclusive: fills executed before it (default: no bound), "
                                                        "to page back in time")])},
    }
