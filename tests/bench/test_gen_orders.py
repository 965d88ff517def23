"""fixtures/gen_orders.py writes bodies that POST /orders accepts, the same bytes for the same seed."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from services.common.instruments import load_instruments
from services.ingest.validation import decode_order, resolve_idempotency_key, validate_order

REPO_ROOT = Path(__file__).resolve().parents[2]
GEN = REPO_ROOT / "fixtures" / "gen_orders.py"


def generate(*args: str) -> str:
    result = subprocess.run([sys.executable, str(GEN), *args], capture_output=True, text=True, check=True, timeout=60)
    return result.stdout


def test_every_line_is_a_valid_order_body() -> None:
    instruments = load_instruments(REPO_ROOT / "instruments.toml")
    lines = generate("--seed", "3", "--count", "3000", "--market", "200").splitlines()
    assert len(lines) == 3200
    keys = set()
    for line in lines:
        request = decode_order(line.encode())
        order = validate_order(request, instruments, resolve_idempotency_key(request, None))
        keys.add(order.idempotency_key)
        assert order.quantity_lots > 0
    assert len(keys) == 3200  # unique idempotency keys
    kinds = [json.loads(line)["type"] for line in lines]
    assert kinds == ["limit"] * 3000 + ["market"] * 200  # the market burst comes last


def test_book_shape_prices_near_the_mid_on_the_tick() -> None:
    orders = [json.loads(line) for line in generate("--seed", "5", "--count", "5000", "--market", "0").splitlines()]
    prices = [Decimal(o["price"]) for o in orders]
    assert all(p == p.quantize(Decimal("0.01")) for p in prices)
    assert all(Decimal("49850") < p < Decimal("50150") for p in prices)
    near = sum(1 for p in prices if abs(p - Decimal("50000")) <= 2)
    assert near > len(prices) / 3  # more orders near the touch than in the wings
    marketable = sum(1 for o in orders if (o["side"] == "buy") == (Decimal(o["price"]) > Decimal("50000")))
    assert 0.15 < marketable / len(orders) < 0.45
    assert len({o["client_id"] for o in orders}) > 10
    assert {o["side"] for o in orders} == {"buy", "sell"}


def test_same_seed_same_bytes_other_seed_other_orders(tmp_path: Path) -> None:
    out = tmp_path / "orders.jsonl"
    generate("--seed", "11", "--count", "500", "--out", str(out))
    assert out.read_text() == generate("--seed", "11", "--count", "500")
    assert generate("--seed", "12", "--count", "500") != out.read_text()


def test_help_and_options() -> None:
    assert "--seed" in generate("--help")
    lines = generate("--count", "10", "--market", "0", "--mid", "100.00", "--band", "1").splitlines()
    assert all(Decimal("98") <= Decimal(json.loads(line)["price"]) <= Decimal("102") for line in lines)
