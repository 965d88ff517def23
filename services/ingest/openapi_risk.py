"""The risk-control operations of GET /openapi.json (issue 16): the admin kill switches' path items and bodies."""

from __future__ import annotations

from typing import Any

from services.common.instruments import Instruments
from services.ingest.halts import ClientHalted, ClientHaltPending, ClientHaltRequest, ClientResumed, InstrumentHalt
from services.ingest.openapi_parts import (
    CLIENT_ID,
    Schema,
    auth_errors,
    body_errors,
    error,
    instrument_enum,
    json_answer,
    operation,
    param,
    ref,
    unavailable,
)

TYPES: list[Any] = [ClientHaltRequest, ClientHalted, ClientHaltPending, ClientResumed, InstrumentHalt]
ADMIN_ONLY = "this endpoint needs an admin key"
# PostgreSQL is written first, then Redis: either one down is a 503 (nothing changed in Redis without PostgreSQL).
STORES_DOWN = {"503": unavailable("`unavailable`: PostgreSQL or Redis cannot be reached; retry (repeats are "
                                  "harmless)")}
CLIENT_404 = {"404": error("`not_found`: not a client id")}


def paths(instruments: Instruments) -> dict[str, Schema]:
    """The halts' path items."""
    symbol = param("symbol", "path", instrument_enum(instruments), "a configured instrument", required=True)
    halt = operation(
        "haltClient", "Halt a client (admin): its new orders and amends get 403 client_halted on every instrument; "
                      "with cancel_open its resting and accepted orders are cancelled (reason halted)", {
            "200": json_answer(ref("ClientHalted"), "halted; `cancelled`: the orders cancel_open cancelled"),
            "202": json_answer(ref("ClientHaltPending"), "halted, but some instruments had not applied cancel_open "
                                                         "within CANCEL_WAIT_MS"),
            **body_errors("16 KiB (MAX_BODY_BYTES)"), **auth_errors(ADMIN_ONLY), **CLIENT_404, **STORES_DOWN},
        secured=True, parameters=[CLIENT_ID], body=ref("ClientHaltRequest"))
    halt["requestBody"]["required"] = False  # no body: {"cancel_open": false}
    return {
        "/admin/clients/{client_id}/halt": {
            "post": halt,
            "delete": operation("resumeClient", "Lift a client's halt (admin; harmless when not halted)", {
                "200": json_answer(ref("ClientResumed"), "not halted"),
                **auth_errors(ADMIN_ONLY), **CLIENT_404, **STORES_DOWN}, secured=True, parameters=[CLIENT_ID]),
        },
        "/admin/instruments/{symbol}/halt": {
            "post": operation("haltInstrument", "Halt an instrument (admin): its new orders and amends get 409 "
                                                "instrument_halted; cancels are allowed", {
                "200": json_answer(ref("InstrumentHalt"), "halted"),
                **auth_errors(ADMIN_ONLY), "404": error("`not_found`: unknown instrument"), **STORES_DOWN},
                secured=True, parameters=[symbol]),
            "delete": operation("resumeInstrument", "Lift an instrument's halt (admin; harmless when not halted)", {
                "200": json_answer(ref("InstrumentHalt"), "not halted"),
                **auth_errors(ADMIN_ONLY), "404": error("`not_found`: unknown instrument"), **STORES_DOWN},
                secured=True, parameters=[symbol]),
        },
    }
