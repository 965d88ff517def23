"""The JSON error shape every ingest answer uses: {"error", "message", "details"}."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec
from starlette.responses import Response


class ErrorDetail(msgspec.Struct, frozen=True):
    field: str
    message: str


class ErrorBody(msgspec.Struct, frozen=True):
    error: str
    message: str
    details: Sequence[ErrorDetail] = ()


_encode = msgspec.json.Encoder().encode

# Ingest's own risk refusals (contract, "Risk controls"): each an ApiError reason, counted in
# risk_rejections_total{reason} besides orders_rejected_total.
MAX_ORDER_NOTIONAL = "max_order_notional"
CLIENT_HALTED = "client_halted"
INSTRUMENT_HALTED = "instrument_halted"
RISK_REASONS = frozenset({MAX_ORDER_NOTIONAL, CLIENT_HALTED, INSTRUMENT_HALTED})


class ApiError(Exception):
    """An answer other than success; `reason` labels orders_rejected_total."""

    def __init__(self, status: int, code: str, message: str, *, details: Sequence[ErrorDetail] = (),
                 headers: Mapping[str, str] | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers
        self.reason = reason or code

    def response(self) -> Response:
        return json_response(ErrorBody(self.code, self.message, self.details), self.status, self.headers)


def json_response(body: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """Encode `body` with msgspec (Structs, dicts, lists) into a JSON response."""
    return raw_json_response(_encode(body), status, headers)


def raw_json_response(content: bytes, status: int = 200,
                      headers: Mapping[str, str] | None = None) -> Response:
    return Response(content, status_code=status, headers=headers, media_type="application/json")


RawHeaders = list[tuple[bytes, bytes]]
_JSON_CONTENT_TYPE = (b"content-type", b"application/json")


class RawJsonResponse(Response):
    """raw_json_response with its headers given as lowercase (name, value) bytes: the header list Response
    would build from a dict, in the same order, without the dict or encoding each header (the order path)."""

    media_type = "application/json"

    def __init__(self, content: bytes, status_code: int, raw_headers: RawHeaders) -> None:
        self.status_code = status_code
        self.background = None
        self.body = content
        raw_headers.append((b"content-length", b"%d" % len(content)))
        raw_headers.append(_JSON_CONTENT_TYPE)
        self.raw_headers = raw_headers


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the body is over {limit} bytes", reason="too_large")


def unauthorized() -> ApiError:
    return ApiError(401, "unauthorized", "a valid API key is needed: Authorization: Bearer <key>",
                    headers={"WWW-Authenticate": "Bearer"}, reason="auth")


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message, reason="forbidden")


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message, reason="bad_request")


def invalid(details: Sequence[ErrorDetail]) -> ApiError:
    first = details[0]
    return ApiError(422, "validation_error", f"{first.field}: {first.message}", details=details,
                    reason="validation")


def unavailable(message: str, retry_after_s: int = 1, reason: str = "unavailable",
                headers: dict[str, str] | None = None) -> ApiError:
    """503 with Retry-After (plus `headers`)."""
    return ApiError(503, "unavailable", message, headers={**(headers or {}), "Retry-After": str(retry_after_s)},
                    reason=reason)


def client_halted(client_id: str, headers: Mapping[str, str] | None = None) -> ApiError:
    """403: an admin halted the client (POST /admin/clients/{client_id}/halt)."""
    return ApiError(403, "client_halted", f"client {client_id!r} is halted: new orders and amends are refused, "
                    f"cancels are allowed", headers=headers, reason=CLIENT_HALTED)


def instrument_halted(symbol: str, headers: Mapping[str, str] | None = None) -> ApiError:
    """409: an admin halted the instrument (POST /admin/instruments/{symbol}/halt)."""
    return ApiError(409, "instrument_halted", f"instrument {symbol!r} is halted: new orders and amends are "
                    f"refused, cancels are allowed", headers=headers, reason=INSTRUMENT_HALTED)


def read_timeout(timeout_ms: int, retry_after_s: int = 1) -> ApiError:
    """503 with Retry-After: a public PostgreSQL read did not answer within READ_TIMEOUT_MS."""
    return ApiError(503, "read_timeout",
                    f"the read did not complete within {timeout_ms} ms (READ_TIMEOUT_MS); retry shortly, "
                    f"or ask for less (a shorter range or fewer candles)",
                    headers={"Retry-After": str(retry_after_s)}, reason="read_timeout")
