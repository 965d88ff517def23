"""GET /clients/{client_id}/positions: exact nets, per-side volumes and VWAPs, as_of, and who may read."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from services.analytics.time_buckets import EPOCH, MINUTE, MS
from services.common.times import iso
from tests.analytics.conftest import base_hour, hand_made, write
from tests.ingest.conftest import ADMIN, BROKER, KEY_A, KEY_B, Engine


def side(quantity: str, quote: str, vwap: str | None) -> dict[str, str | None]:
    return {"quantity": quantity, "quote": quote, "vwap": vwap}


async def test_positions_net_every_asset_over_all_instruments(app: Engine, db: AsyncEngine) -> None:
    await write(db, hand_made(base_hour()))
    a = (await app.client.get("/clients/client-A/positions", headers=KEY_A)).json()
    assert a.pop("as_of").endswith("Z")
    assert a == {
        "client_id": "client-A",
        "net": {"BTC": "-2.55", "ETH": "1.5", "USD": "121017.45"},
        "instruments": {
            "BTC-USD": {"bought": side("0.75", "37502.5", "50003.33"), "sold": side("3.3", "163020", "49400.00"),
                        "trade_count": 5},
            "ETH-USD": {"bought": side("2", "6000.1", "3000.05"), "sold": side("0.5", "1500.05", "3000.10"),
                        "trade_count": 2},
        },
    }
    # client-B traded with itself once: both sides count, the trade once.
    b = (await app.client.get("/clients/client-B/positions", headers=KEY_B)).json()
    assert b["net"] == {"BTC": "-0.5", "ETH": "-1.5", "USD": "29500.053"}
    assert b["instruments"]["BTC-USD"] == {
        "bought": side("0.4", "20030.55", "50076.38"), "sold": side("0.9", "45030.553", "50033.95"), "trade_count": 4}
    c = (await app.client.get("/clients/client-C/positions", headers=BROKER)).json()
    assert c["net"] == {"BTC": "3.05", "USD": "-150517.503"}
    assert c["instruments"] == {"BTC-USD": {
        "bought": side("3.3", "163020.003", "49400.00"), "sold": side("0.25", "12502.5", "50010.00"), "trade_count": 4}}


async def test_positions_as_of(app: Engine, db: AsyncEngine) -> None:
    b0 = base_hour()
    await write(db, hand_made(b0))

    async def net(as_of: str) -> dict[str, str]:
        answer = await app.client.get("/clients/client-A/positions", params={"as_of": as_of}, headers=ADMIN)
        assert answer.status_code == 200, answer.text
        shown = answer.json()["as_of"]
        assert shown == (as_of if not as_of.isdigit() else iso(EPOCH + int(as_of) * MS))
        return dict(answer.json()["net"])

    # A whole hour (aggregates alone), then inside an hour (aggregates plus that hour's trades).
    assert await net(iso(b0 + 60 * MINUTE)) == {"BTC": "-2.25", "ETH": "1.5", "USD": "105987.45"}
    assert await net(iso(b0 + 11 * MINUTE)) == {"BTC": "-1.25", "ETH": "2", "USD": "54497.4"}
    # Before as_of, not at it: the trade at exactly b0 + 11 min is out, one ms later it is in.
    ms = int((b0 + 11 * MINUTE).timestamp() * 1000)
    assert await net(str(ms + 1)) == {"BTC": "-2.25", "ETH": "2", "USD": "104487.4"}
    assert await net(iso(b0 - 30 * 60 * MINUTE)) == {}
    for bad in ("soon", "999999999999999", "0001-01-01T00:00:00+01:00"):  # the last two once gave 500
        answer = await app.client.get("/clients/client-A/positions", params={"as_of": bad}, headers=KEY_A)
        assert answer.status_code == 422 and answer.json()["details"][0]["field"] == "as_of", (bad, answer.text)


async def test_positions_of_a_client_without_trades_are_empty(app: Engine) -> None:
    body = (await app.client.get("/clients/client-A/positions", headers=KEY_A)).json()
    assert (body["client_id"], body["net"], body["instruments"]) == ("client-A", {}, {})


async def test_positions_need_a_key_and_traders_read_only_their_own(app: Engine) -> None:
    assert (await app.client.get("/clients/client-A/positions")).status_code == 401
    assert (await app.client.get("/clients/client-A/positions",
                                 headers={"Authorization": "Bearer nope"})).status_code == 401
    denied = await app.client.get("/clients/client-B/positions", headers=KEY_A)
    assert denied.status_code == 403 and denied.json()["error"] == "forbidden"
    for headers in (KEY_B, BROKER, ADMIN):
        assert (await app.client.get("/clients/client-B/positions", headers=headers)).status_code == 200
