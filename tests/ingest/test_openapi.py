"""GET /openapi.json describes every route the ingest serves, with schemas that resolve."""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.routing import Route

from services.ingest import fast_orders
from tests.ingest.conftest import Engine


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
    described = {(path, method) for path, item in document["paths"].items() for method in item}
    assert served == described
    components = document["components"]["schemas"]
    for ref in _refs(document):
        assert re.fullmatch(r"#/components/schemas/\w+", ref) and ref.rsplit("/", 1)[1] in components, ref
    order = components["OrderRequest"]
    assert set(order["required"]) == {"client_id", "instrument", "side", "type", "quantity"}
    assert json.dumps(order).count("decimal") >= 2  # price and quantity are decimal strings or numbers


async def test_post_orders_answers_declare_the_rate_limit_headers(engine: Engine) -> None:
    responses = (await engine.client.get("/openapi.json")).json()["paths"]["/orders"]["post"]["responses"]
    rate = {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"}
    for status in ("201", "200", "409"):
        assert set(responses[status]["headers"]) == rate, status
    for status in ("429", "503"):
        assert set(responses[status]["headers"]) == rate | {"Retry-After"}, status
    assert "headers" not in responses["422"]
