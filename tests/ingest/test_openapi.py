"""GET /openapi.json describes every route the ingest serves, with schemas that resolve."""

from __future__ import annotations

import re
from typing import Any

import pytest
from starlette.routing import Route

from services.ingest import fast_orders
from services.ingest.validation import DECIMAL_TEXT_PATTERN
from tests.ingest.conftest import KEY_A, Engine, EngineFactory, limit_order


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if "$ref" in node else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


async def test_openapi_covers_every_route(engine: Engine) -> None:
    answer = await engine.client.get("/openapi.json")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    document = answer.json()
    assert document["openapi"].startswith("3.")
    served = {(route.path, method.lower()) for route in engine.app.routes if isinstance(route, Route)
              for method in (route.methods or ()) if method != "HEAD" and route.path != "/openapi.json"}
    served.add((fast_orders.PATH, "post"))  # answered before the app's router (fast_orders.py)
    served.add((fast_orders.BATCH_PATH, "post"))
    described = {(path, method) for path, item in document["paths"].items() for method in item}
    assert served == described
    components = document["components"]["schemas"]
    for ref in _refs(document):
        assert re.fullmatch(r"#/components/schemas/\w+", ref) and ref.rsplit("/", 1)[1] in components, ref
    limit, market = components["LimitOrderRequest"], components["MarketOrderRequest"]
    assert set(limit["required"]) == {"client_id", "instrument", "side", "type", "quantity", "price"}
    assert set(market["required"]) == {"client_id", "instrument", "side", "type", "quantity"}
    assert limit["additionalProperties"] is False and market["properties"]["price"] == {
        "type": "null", "description": "a market order has no price"}
    # The instruments of the configuration (the test's two), the loosest bounds over both in the schema.
    assert limit["properties"]["instrument"]["enum"] == ["BTC-USD", "ETH-USD"]
    number, text = limit["properties"]["price"]["anyOf"]
    assert number == {"type": "number", "exclusiveMinimum": 0, "maximum": 10000000.0, "multipleOf": 0.01}
    assert text["pattern"] == DECIMAL_TEXT_PATTERN
    assert limit["properties"]["quantity"]["anyOf"][0]["multipleOf"] == 1e-8
    assert "ETH-USD: a multiple of 0.05, at most 1000000" in limit["properties"]["price"]["description"]


async def test_every_secured_operation_names_the_bearer_scheme_and_its_401(engine: Engine) -> None:
    document = (await engine.client.get("/openapi.json")).json()
    public = {"/orderbook", "/trades", "/analytics/{instrument}/ticker", "/analytics/{instrument}/candles",
              "/healthz", "/readyz", "/metrics"}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            secured = "security" in operation
            assert secured == (path not in public), (path, method)
            assert ("401" in operation["responses"]) == secured, (path, method)
            for parameter in operation.get("parameters", []):
                assert parameter["schema"].get("type") or parameter["schema"].get("enum"), (path, parameter)
    links = document["paths"]["/orders"]["post"]["responses"]["201"]["links"]
    operation_ids = {op["operationId"] for item in document["paths"].values() for op in item.values()}
    assert {link["operationId"] for link in links.values()} <= operation_ids
    assert {link["operationId"] for link in links.values()} == {"getOrder", "cancelOrder", "deleteOrder", "amendOrder"}


@pytest.mark.parametrize("price", ["1_000.00", " 50000.00", "+50000.00", "0", "0.00", "\uff150000", ".5", "NaN"])
async def test_decimal_strings_follow_the_published_pattern(engine: Engine, price: str) -> None:
    answer = await engine.post(limit_order(price=price))
    assert answer.status_code == 422 and answer.json()["details"][0]["field"] == "price", answer.text
    assert not re.match(DECIMAL_TEXT_PATTERN, price)


@pytest.mark.parametrize("price", ["50000.00", "5e4", "5.00000E+4", 50000, 50000.0, 5e4])
async def test_decimal_numbers_and_strings_of_the_pattern_are_read_exactly(engine: Engine, price: object) -> None:
    answer = await engine.post(limit_order(price=price))
    assert answer.status_code == 201 and answer.json()["price"] == "50000.00", answer.text


@pytest.mark.parametrize("query", ["start=", "interval=", "start=2020-W01-1", "end=20200101T0000",
                                   "start=2026-01-01t00:00", "as_of="])
async def test_time_and_interval_parameters_follow_the_published_patterns(engine: Engine, query: str) -> None:
    path = "/clients/client-A/positions" if query.startswith("as_of") else "/analytics/BTC-USD/candles"
    answer = await engine.client.get(f"{path}?{query}", headers=KEY_A)
    assert answer.status_code == 422, answer.text


async def test_a_405_lists_every_method_of_the_path(engine: Engine) -> None:
    answer = await engine.client.put("/orders/abc", headers=KEY_A)
    assert answer.status_code == 405 and set(answer.headers["allow"].split(", ")) >= {"GET", "DELETE"}


async def test_post_orders_answers_declare_the_rate_limit_headers(engine: Engine) -> None:
    responses = (await engine.client.get("/openapi.json")).json()["paths"]["/orders"]["post"]["responses"]
    rate = {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"}
    assert set(responses["201"]["headers"]) == rate | {"Location"}
    assert set(responses["200"]["headers"]) == rate | {"Idempotent-Replayed"}
    assert set(responses["409"]["headers"]) == rate
    for status in ("429", "503"):
        assert set(responses[status]["headers"]) == rate | {"Retry-After"}, status
    assert "headers" not in responses["422"]


async def test_the_batch_operation_states_its_bounds_and_each_result(make_engine: EngineFactory) -> None:
    engine = await make_engine(batch_max_orders=7)
    document = (await engine.client.get("/openapi.json")).json()
    operation = document["paths"]["/orders/batch"]["post"]
    assert set(operation["responses"]) == {"200", "400", "401", "413", "422"}
    assert operation["security"] == [{"bearer": []}]
    schemas = document["components"]["schemas"]
    orders = schemas["BatchRequest"]["properties"]["orders"]
    assert (orders["minItems"], orders["maxItems"]) == (1, 7)
    # Any element is a valid request (a bad order is refused in its result); an OrderRequest is what works.
    assert orders["items"]["anyOf"][0] == {"$ref": "#/components/schemas/OrderRequest"}
    assert schemas["BatchResults"]["properties"]["results"]["items"]["oneOf"] == [
        {"$ref": "#/components/schemas/BatchAccepted"}, {"$ref": "#/components/schemas/BatchRefused"}]
    assert schemas["BatchRefused"]["properties"]["status"]["enum"] == [400, 403, 409, 413, 422, 429, 503]
    assert set(schemas["BatchError"]["required"]) == {"error", "message"}


async def test_the_order_management_bodies_and_answers(engine: Engine) -> None:
    document = (await engine.client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    amend = schemas["AmendRequest"]
    assert (amend["additionalProperties"], amend["minProperties"], set(amend["properties"])) == (
        False, 1, {"quantity", "price"})
    assert amend["properties"]["price"]["anyOf"][1]["pattern"] == DECIMAL_TEXT_PATTERN
    instrument = schemas["CancelAllRequest"]["properties"]["instrument"]["anyOf"][0]
    assert instrument["enum"] == ["BTC-USD", "ETH-USD"] and schemas["CancelAllRequest"]["required"] == ["client_id"]
    assert schemas["CancelAllAfterRequest"]["properties"]["timeout_ms"]["anyOf"] == [
        {"const": 0}, {"type": "integer", "minimum": 1000, "maximum": 3600000}]
    paths = document["paths"]
    assert set(paths["/orders/{order_id}"]) == {"get", "delete", "patch"}
    answers = {path: {method: set(op["responses"]) for method, op in item.items()} for path, item in paths.items()}
    assert answers["/orders/{order_id}"]["patch"] == {"200", "202", "400", "401", "403", "404", "409", "413", "422",
                                                      "503"}
    assert answers["/orders/cancel-all"]["post"] == {"200", "202", "400", "401", "403", "413", "422", "503"}
    assert answers["/clients/{client_id}/cancel-all-after"]["post"] == {"200", "400", "401", "403", "404", "413",
                                                                         "422", "503"}
    assert answers["/clients/{client_id}/orders"]["get"] == {"200", "401", "403", "404", "422", "503"}
    assert answers["/clients/{client_id}/fills"]["get"] == {"200", "401", "403", "404", "422", "503"}
    # amend_rejected carries the order; instrument_halted (issue 16) is a plain error body.
    assert paths["/orders/{order_id}"]["patch"]["responses"]["409"]["content"]["application/json"]["schema"] == {
        "anyOf": [{"$ref": "#/components/schemas/AmendRejected"}, {"$ref": "#/components/schemas/ErrorBody"}]}


async def test_other_methods_on_orders_cancel_all_are_405(engine: Engine) -> None:
    for method in ("GET", "DELETE", "PATCH", "PUT"):
        answer = await engine.client.request(method, "/orders/cancel-all", headers=KEY_A)
        assert (answer.status_code, answer.headers.get("allow")) == (405, "POST"), method
