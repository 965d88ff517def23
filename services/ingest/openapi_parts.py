"""The pieces GET /openapi.json is assembled from: parameters, answers and the order body's schemas, each
built from the constant or configuration the handlers check against, so the document cannot drift from them."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from math import gcd
from typing import Any, get_args

from services.analytics.time_buckets import TIME_PATTERN
from services.common.instruments import Instrument, Instruments
from services.common.money import plain
from services.common.wire import TimeInForce
from services.ingest.validation import DECIMAL_TEXT_PATTERN, ID_PATTERN, KEY_TEXT_PATTERN

Schema = dict[str, Any]
REF = "#/components/schemas/{name}"
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]

RETRY_AFTER = {"description": "seconds to wait before trying again", "required": True,
               "schema": {"type": "string", "pattern": "^[0-9]{1,6}$"}}
WWW_AUTHENTICATE = {"description": "`Bearer`", "required": True, "schema": {"type": "string"}}
# The client's token bucket (IETF draft names), on order answers that reached it; absent while it is off.
RATE_HEADERS = {
    "RateLimit-Limit": {"description": "the client bucket's size (RATE_LIMIT_BURST)",
                        "schema": {"type": "string", "pattern": "^[0-9]{1,10}$"}},
    "RateLimit-Remaining": {"description": "whole tokens left after this answer",
                            "schema": {"type": "string", "pattern": "^[0-9]{1,10}$"}},
    "RateLimit-Reset": {"description": "seconds until the bucket is full again",
                        "schema": {"type": "string", "pattern": "^[0-9]{1,10}$"}},
}


def ref(name: str) -> Schema:
    return {"$ref": REF.format(name=name)}


def json_answer(schema: Schema, description: str, headers: dict[str, Any] | None = None,
                links: dict[str, Any] | None = None) -> Schema:
    answer: Schema = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    if links:
        answer["links"] = links
    return answer


def operation(operation_id: str, summary: str, answers: dict[str, Schema], *, secured: bool = False,
               parameters: list[Schema] | None = None, body: Schema | None = None) -> Schema:
    """An operation answering `answers` (status -> answer), with its key, parameters and JSON body if any."""
    described: Schema = {"operationId": operation_id, "summary": summary, "responses": answers}
    if secured:
        described["security"] = BEARER
    if parameters:
        described["parameters"] = parameters
    if body is not None:
        described["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return described


def error(description: str, headers: dict[str, Any] | None = None) -> Schema:
    """An answer carrying the error body {"error", "message", "details"}."""
    return json_answer(ref("ErrorBody"), description, headers)


def unavailable(what: str) -> Schema:
    return error(f"{what} (Retry-After)", {"Retry-After": RETRY_AFTER})


def auth_errors(forbidden: str) -> dict[str, Schema]:
    return {"401": error("`unauthorized`: no API key, or an unknown one", {"WWW-Authenticate": WWW_AUTHENTICATE}),
            "403": error(f"`forbidden`: {forbidden}")}


def body_errors(limit: str) -> dict[str, Schema]:
    return {"400": error("`bad_request`: the body is not JSON, not an object, or nests too deeply"),
            "413": error(f"`payload_too_large`: the body is over {limit}"),
            "422": error("`validation_error`: a field is invalid, missing or unknown; `details` name it")}


REDIS_DOWN = {"503": unavailable("`unavailable`: the order store (Redis) cannot be reached")}
DB_DOWN = {"503": unavailable("`unavailable`: PostgreSQL cannot be reached; or `read_timeout`: the read took "
                              "longer than READ_TIMEOUT_MS")}


def param(name: str, where: str, schema: Schema, description: str, required: bool = False) -> Schema:
    return {"name": name, "in": where, "required": required or where == "path", "description": description,
            "schema": schema}


def int_range(low: int, high: int, default: int) -> Schema:
    return {"type": "integer", "minimum": low, "maximum": high, "default": default}


def instrument_enum(instruments: Instruments) -> Schema:
    return {"type": "string", "enum": list(instruments)}


ORDER_ID = param("order_id", "path", {"type": "string", "pattern": ID_PATTERN},
                 "the engine's order id (`order_id` of POST /orders); anything else is 404")
CLIENT_ID = param("client_id", "path", {"type": "string", "pattern": ID_PATTERN},
                  "a client id; anything else is 404")
IDEMPOTENCY_HEADER = param("Idempotency-Key", "header", {"type": "string", "pattern": KEY_TEXT_PATTERN},
                           "alternative to the body's `idempotency_key` (both: they must agree)")


def time_param(name: str, description: str) -> Schema:
    return param(name, "query", {"type": "string", "pattern": TIME_PATTERN},
                 f"{description}: epoch milliseconds, or an ISO-8601 date or date-time (UTC unless it names an "
                 f"offset), from 1970-01-01 to 9999-12-01")


def _increment(values: list[Decimal]) -> Decimal:
    """The largest decimal that every value is a whole multiple of (the instruments' common tick or lot)."""
    fractions = [Fraction(v) for v in values]
    denominator = 1
    for f in fractions:
        denominator = denominator * f.denominator // gcd(denominator, f.denominator)
    numerator = 0
    for f in fractions:
        numerator = gcd(numerator, f.numerator * (denominator // f.denominator))
    return Decimal(numerator) / Decimal(denominator)


def decimal_schema(field: str, instruments: Instruments, nullable: bool) -> Schema:
    """A price or quantity: a JSON number (read exactly) within every bound JSON Schema can state, or a
    decimal string. The bounds are the loosest over the instruments; the description gives each one's."""
    def increment_of(i: Instrument) -> Decimal:
        return i.tick if field == "price" else i.lot

    def maximum_of(i: Instrument) -> Decimal:
        return i.max_price if field == "price" else i.max_quantity

    listed = list(instruments.values())
    number: Schema = {"type": "number", "exclusiveMinimum": 0,
                      "maximum": float(max(maximum_of(i) for i in listed)),
                      "multipleOf": float(_increment([increment_of(i) for i in listed]))}
    rules = "; ".join(f"{i.symbol}: a multiple of {plain(increment_of(i))}, at most {plain(maximum_of(i))}"
                      + (f", at least {plain(i.min_quantity)}" if field == "quantity" else "") for i in listed)
    options: list[Schema] = [number, {"type": "string", "pattern": DECIMAL_TEXT_PATTERN}]
    if nullable:
        options.append({"type": "null"})
    return {"anyOf": options, "description": f"a JSON number (read exactly, never as a binary float) or a "
                                             f"decimal string; positive. {rules}"}


def pairs_as_arrays(node: Any) -> Any:
    """msgspec's 3.1 schema of a tuple of one type (`prefixItems`, `items: false`) as the equivalent array of
    fixed length: schemathesis (4.32) rewrites `prefixItems` into a 3.0-style `items` list and then refuses
    the document it made."""
    if isinstance(node, list):
        return [pairs_as_arrays(item) for item in node]
    if not isinstance(node, dict):
        return node
    prefix = node.get("prefixItems")
    if isinstance(prefix, list) and prefix and all(item == prefix[0] for item in prefix):
        rest = {k: v for k, v in node.items() if k not in ("prefixItems", "items")}
        return {**rest, "items": pairs_as_arrays(prefix[0])}
    return {key: pairs_as_arrays(value) for key, value in node.items()}


def order_bodies(order: Schema, instruments: Instruments) -> dict[str, Schema]:
    """The order body as two schemas told apart by `type`: msgspec's schema of OrderRequest (patterns of the
    ids and keys, no unknown fields) with the instruments, exact decimals and each type's own rules."""
    common = {**order["properties"], "instrument": instrument_enum(instruments),
              "quantity": decimal_schema("quantity", instruments, False)}
    limit = {**common, "type": {"const": "limit"}, "price": decimal_schema("price", instruments, False),
             "time_in_force": {"anyOf": [{"enum": list(get_args(TimeInForce))}, {"type": "null"}], "default": "GTC"},
             "post_only": {"type": "boolean", "default": False,
                           "description": "rejected (`post_only_would_cross`) instead of crossing"}}
    market = {**common, "type": {"const": "market"},
              "price": {"type": "null", "description": "a market order has no price"},
              "time_in_force": {"anyOf": [{"const": "IOC"}, {"type": "null"}], "default": "IOC"},
              "post_only": {"const": False, "default": False}}
    base = {k: v for k, v in order.items() if k not in ("title", "properties", "required")}
    required = ["client_id", "instrument", "side", "type", "quantity"]
    return {
        "LimitOrderRequest": {**base, "title": "LimitOrderRequest", "properties": limit,
                              "required": [*required, "price"]},
        "MarketOrderRequest": {**base, "title": "MarketOrderRequest", "properties": market, "required": required},
        "OrderRequest": {"title": "OrderRequest", "description": order.get("description", ""),
                         "oneOf": [ref("LimitOrderRequest"), ref("MarketOrderRequest")],
                         "discriminator": {"propertyName": "type", "mapping": {
                             "limit": REF.format(name="LimitOrderRequest"),
                             "market": REF.format(name="MarketOrderRequest")}}},
    }


# Each order's status in a POST /orders/batch result: what POST /orders answers past its request-level checks.
BATCH_ACCEPTED_STATUSES = [201, 200]
BATCH_REFUSED_STATUSES = [400, 403, 409, 413, 422, 429, 503]


def batch_schemas(max_orders: int) -> dict[str, Schema]:
    """POST /orders/batch's body (1..max_orders orders) and its answer: one result per order, in order."""
    # Any item is a valid request: an order that is not an OrderRequest is refused in its own result (400, 413,
    # 422), never the request; the first branch says what an order is (and gives generators valid ones).
    item = {"anyOf": [ref("OrderRequest"), {"description": "anything else: refused in its own result, as POST /orders "
                                                           "would refuse it alone"}]}
    orders = {"type": "array", "minItems": 1, "maxItems": max_orders, "items": item,
              "description": f"1 to {max_orders} orders (BATCH_MAX_ORDERS), each as POST /orders takes it, with its "
                             f"own optional idempotency_key; instruments may differ"}
    results = {"type": "array", "minItems": 1, "maxItems": max_orders,
               "items": {"oneOf": [ref("BatchAccepted"), ref("BatchRefused")]},
               "description": "one per order, in the request's order"}
    return {
        "BatchRequest": {"title": "BatchRequest", "type": "object", "properties": {"orders": orders},
                         "required": ["orders"], "additionalProperties": False},
        "BatchAccepted": {"title": "BatchAccepted", "type": "object", "additionalProperties": False,
                          "description": "201: accepted; 200: an idempotent replay (the first answer again)",
                          "properties": {"status": {"enum": BATCH_ACCEPTED_STATUSES}, "order": ref("OrderView")},
                          "required": ["status", "order"]},
        "BatchRefused": {"title": "BatchRefused", "type": "object", "additionalProperties": False,
                         "description": "the status and error POST /orders would have answered for this order alone "
                                        "(429 and 503 add retry_after_s, Retry-After's seconds)",
                         "properties": {"status": {"enum": BATCH_REFUSED_STATUSES}, "error": ref("BatchError")},
                         "required": ["status", "error"]},
        "BatchResults": {"title": "BatchResults", "type": "object", "additionalProperties": False,
                         "properties": {"results": results}, "required": ["results"]},
    }
