"""POST /orders bodies: decoded once with a typed msgspec decoder, then checked against the instrument."""

from __future__ import annotations

import hashlib
import re
from decimal import Decimal
from typing import Annotated, TypeVar

import msgspec

from services.common.instruments import Instrument, Instruments
from services.common.money import NotAMultiple, plain, to_units
from services.common.wire import OrderType, SelfTradePrevention, Side, TimeInForce
from services.ingest.errors import MAX_ORDER_NOTIONAL, ApiError, ErrorDetail, bad_request, invalid

ID_PATTERN = "^[A-Za-z0-9._:-]{1,64}$"
# A price or quantity sent as a string (the OpenAPI document publishes this pattern): digits with an optional
# fraction and exponent, not all zero. No sign, spaces, underscores or non-ASCII digits, which Decimal() would
# take; sent as a JSON number, any number JSON allows is read exactly.
DECIMAL_TEXT_PATTERN = ("^([0-9]{0,40}[1-9][0-9]{0,40}([.][0-9]{1,40})?|[0-9]{1,40}[.][0-9]{0,40}[1-9][0-9]{0,40})"
                        "([eE][-+]?[0-9]{1,4})?$")
_DECIMAL_TEXT = re.compile(DECIMAL_TEXT_PATTERN)
ID_TEXT = re.compile(ID_PATTERN)
KEY_TEXT_PATTERN = "^[A-Za-z0-9._:-]{1,128}$"
KEY_PATTERN = re.compile(KEY_TEXT_PATTERN)
IDEMPOTENCY_HEADER = "idempotency-key"

T = TypeVar("T")
ClientId = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
IdempotencyKey = Annotated[str, msgspec.Meta(pattern=KEY_TEXT_PATTERN)]
Symbol = Annotated[str, msgspec.Meta(max_length=64)]


class OrderRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The POST /orders body as sent. Price and quantity stay raw JSON here and are read exactly by
    validate_order (exact_decimal): a JSON number, or a string of DECIMAL_TEXT_PATTERN."""

    client_id: ClientId
    instrument: Symbol
    side: Side
    type: OrderType
    quantity: msgspec.Raw
    price: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    time_in_force: TimeInForce | None = None
    post_only: bool = False
    client_order_id: ClientId | None = None
    idempotency_key: IdempotencyKey | None = None
    self_trade_prevention: SelfTradePrevention = "none"


class ValidOrder(msgspec.Struct, frozen=True):
    """An order that passed every check, in integer ticks and lots."""

    instrument: Instrument
    client_id: str
    client_order_id: str  # "" when none
    side: Side
    type: OrderType
    time_in_force: TimeInForce
    post_only: bool
    price_ticks: int  # 0 for market orders
    quantity_lots: int
    idempotency_key: str | None
    self_trade_prevention: SelfTradePrevention = "none"

    def fingerprint(self) -> str:
        """What "the same body" means for idempotency: the validated values, without the key."""
        values = [
            self.client_id, self.instrument.symbol, self.side, self.type, self.time_in_force,
            "1" if self.post_only else "0", str(self.price_ticks), str(self.quantity_lots),
            self.client_order_id,
        ]
        # Only a mode other than the default joins: a retry of an order keyed before the field existed (24 h
        # records) still finds its own fingerprint.
        if self.self_trade_prevention != "none":
            values.append(self.self_trade_prevention)
        return hashlib.sha256("|".join(values).encode()).hexdigest()


_decoder = msgspec.json.Decoder(OrderRequest)
_FIELD_AT = re.compile(r"- at `\$\.([A-Za-z0-9_]+)")
_FIELD_NAMED = re.compile(r"field `([^`]*)`")


def decode_order(body: bytes) -> OrderRequest:
    """Decode a body: ApiError 400 when it is not a JSON object, 422 when a field is bad."""
    return decode_object(_decoder, body)


def decode_object(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    """Decode a body that must be a JSON object of `decoder`'s Struct: ApiError 400 when it is not a JSON
    object, 422 naming the field when a field is bad."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if message.startswith("Expected `object`") and " - at " not in message:
            raise bad_request("the body must be a JSON object") from None
        # msgspec validates while it parses: make sure the rest is JSON before blaming a field.
        check_json(body)
        raise invalid([ErrorDetail(_field_of(message), message)]) from None
    except msgspec.DecodeError:
        raise bad_request("the body is not valid JSON") from None
    except RecursionError:
        # A raw value (price, quantity, a batch's order) is skipped recursively: 8,000 nested arrays fit in 16 KiB.
        raise bad_request("the body nests too deeply") from None


def check_json(body: bytes) -> object:
    """The body decoded without a schema; ApiError 400 when it is not JSON or nests too deeply."""
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise bad_request("the body is not valid JSON") from None
    except RecursionError:
        # A schema-less decode recurses once per level: 8,000 nested arrays fit in a 16 KiB body.
        raise bad_request("the body nests too deeply") from None


def _field_of(message: str) -> str:
    at = _FIELD_AT.search(message)
    if at:
        return at.group(1)
    named = _FIELD_NAMED.search(message)
    return named.group(1) if named else "body"


def resolve_idempotency_key(request: OrderRequest, header: str | None) -> str | None:
    """The body's idempotency_key or the Idempotency-Key header (422 when bad, or both differ)."""
    if header is not None and not KEY_PATTERN.match(header):
        raise invalid([ErrorDetail("Idempotency-Key", "must be 1-128 characters of [A-Za-z0-9._:-]")])
    if header is not None and request.idempotency_key is not None and header != request.idempotency_key:
        raise invalid([ErrorDetail("idempotency_key", "differs from the Idempotency-Key header")])
    return request.idempotency_key if request.idempotency_key is not None else header


def validate_order(request: OrderRequest, instruments: Instruments,
                   idempotency_key: str | None) -> ValidOrder:
    """Check a decoded body against its instrument; ApiError 422 listing every bad field."""
    instrument = instruments.get(request.instrument)
    if instrument is None:
        raise invalid([ErrorDetail("instrument", f"unknown instrument {request.instrument!r}")])
    details: list[ErrorDetail] = []
    try:
        price = exact_decimal("price", request.price, details)
        quantity = exact_decimal("quantity", request.quantity, details, nullable=False)
        if details:
            raise invalid(details)
        tif, price_ticks = _check_type(request, price, instrument, details)
        lots = check_quantity(quantity, instrument, details) if quantity is not None else 0
    except ArithmeticError as exc:  # decimal corner cases must never become a 500
        raise invalid([ErrorDetail("body", f"not a usable number: {exc}")]) from None
    if details:
        raise invalid(details)
    if request.type == "limit":
        check_notional(instrument, price_ticks, lots)
    return ValidOrder(
        instrument=instrument, client_id=request.client_id, client_order_id=request.client_order_id or "",
        side=request.side, type=request.type, time_in_force=tif, post_only=request.post_only,
        price_ticks=price_ticks, quantity_lots=lots, idempotency_key=idempotency_key,
        self_trade_prevention=request.self_trade_prevention,
    )


def exact_decimal(field: str, raw: msgspec.Raw | msgspec.UnsetType, details: list[ErrorDetail],
                  nullable: bool = True) -> Decimal | None:
    """A raw JSON value read exactly as a Decimal; None for null or absent (where `nullable`); None after
    adding to details when it is neither a JSON number nor a string of DECIMAL_TEXT_PATTERN."""
    if raw is msgspec.UNSET:
        return None
    text = bytes(raw).decode()
    if text == "null" and nullable:
        return None
    if text.startswith('"'):
        value = msgspec.json.decode(text)
        if isinstance(value, str) and _DECIMAL_TEXT.match(value):
            return Decimal(value)
        details.append(ErrorDetail(field, 'must be a positive decimal string of digits, such as "50000.00" or '
                                          '"1e-8"'))
        return None
    if text[0] == "-" or text[0].isdigit():  # a JSON number: msgspec checked its grammar
        return Decimal(text)
    details.append(ErrorDetail(field, "must be a number or a decimal string"))
    return None


def _check_type(request: OrderRequest, price: Decimal | None, instrument: Instrument,
                details: list[ErrorDetail]) -> tuple[TimeInForce, int]:
    if request.type == "market":
        if price is not None:
            details.append(ErrorDetail("price", "a market order takes no price"))
        if request.time_in_force not in (None, "IOC"):
            details.append(ErrorDetail("time_in_force", "a market order is always IOC"))
        if request.post_only:
            details.append(ErrorDetail("post_only", "post_only is for limit orders only"))
        return "IOC", 0
    tif: TimeInForce = request.time_in_force or "GTC"
    if price is None:
        details.append(ErrorDetail("price", "a limit order needs a price"))
        return tif, 0
    return tif, check_price(price, instrument, details)


def check_price(price: Decimal, instrument: Instrument, details: list[ErrorDetail]) -> int:
    """A limit price in ticks: positive, a multiple of the tick, at most the maximum; else 0 after adding the
    reason to details."""
    return _units("price", price, instrument.tick, instrument.max_price, details)


def check_quantity(quantity: Decimal, instrument: Instrument, details: list[ErrorDetail]) -> int:
    """A quantity in lots: a multiple of the lot from the minimum to the maximum; else 0 after adding the
    reason to details."""
    lots = _units("quantity", quantity, instrument.lot, instrument.max_quantity, details)
    if lots and lots < instrument.min_lots:
        details.append(ErrorDetail("quantity", f"must be at least {plain(instrument.min_quantity)}"))
        return 0
    return lots


def check_notional(instrument: Instrument, price_ticks: int, quantity_lots: int) -> None:
    """ApiError 422 naming `quantity` when a limit order's price x quantity is over the instrument's
    max_order_notional (contract, "Risk controls"): exact, in Python integers of ticks x lots."""
    if instrument.notional_exceeds_cap(price_ticks, quantity_lots):
        cap = plain(instrument.risk.max_order_notional)
        notional = instrument.quote_text(price_ticks * quantity_lots)
        detail = ErrorDetail("quantity", f"price x quantity is {notional} {instrument.quote}, over the "
                                         f"instrument's max_order_notional {cap}")
        raise ApiError(422, "validation_error", f"{detail.field}: {detail.message}", details=[detail],
                       reason=MAX_ORDER_NOTIONAL)


def _units(field: str, value: Decimal, increment: Decimal, maximum: Decimal,
           details: list[ErrorDetail]) -> int:
    """Whole increments in value, or 0 after adding the reason it is unusable to details."""
    if not value.is_finite():
        details.append(ErrorDetail(field, "must be a finite number"))
        return 0
    if value <= 0:
        details.append(ErrorDetail(field, "must be positive"))
        return 0
    # Before any division: 1e999999999 must not turn into a billion-digit integer.
    if value > maximum:
        details.append(ErrorDetail(field, f"must be at most {plain(maximum)}"))
        return 0
    try:
        whole = to_units(value, increment)
    except NotAMultiple:
        details.append(ErrorDetail(field, f"must be a multiple of {plain(increment)}"))
        return 0
    return whole
