"""services/common/risk_limits.py through the instruments loader: defaults, exact values, refusals at start."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from services.common.instruments import InstrumentError, load_instruments

BASE = """[[instrument]]
symbol = "BTC-USD"
base = "BTC"
quote = "USD"
tick = "0.01"
lot = "0.00000001"
min_quantity = "0.00000001"
max_quantity = "1000"
max_price = "10000000"
"""


def load(tmp_path: Path, extra: str = "") -> object:
    path = tmp_path / "instruments.toml"
    path.write_text(BASE + extra)
    return load_instruments(path)["BTC-USD"]


def test_the_contracts_defaults_apply_when_the_file_names_no_limit(tmp_path: Path) -> None:
    risk = load(tmp_path).risk  # type: ignore[attr-defined]
    assert (risk.price_band_pct, risk.market_protection_pct) == (Decimal(10), Decimal(5))
    assert (risk.max_open_orders, risk.max_order_notional) == (1000, Decimal(10_000_000))
    assert (risk.price_band_bp, risk.market_protection_bp) == (1000, 500)


def test_decimal_percentages_are_read_exactly_from_toml_numbers_and_strings(tmp_path: Path) -> None:
    risk = load(tmp_path, 'price_band_pct = 2.55\nmarket_protection_pct = "0.1"\n').risk  # type: ignore[attr-defined]
    assert (risk.price_band_pct, risk.price_band_bp) == (Decimal("2.55"), 255)
    assert (risk.market_protection_pct, risk.market_protection_bp) == (Decimal("0.1"), 10)


def test_zero_turns_every_limit_off(tmp_path: Path) -> None:
    instrument = load(tmp_path, "price_band_pct = 0\nmarket_protection_pct = 0\nmax_open_orders = 0\n"
                                "max_order_notional = 0\n")
    risk = instrument.risk  # type: ignore[attr-defined]
    assert (risk.price_band_bp, risk.market_protection_bp, risk.max_open_orders) == (0, 0, 0)
    # 10,000,000.00 x 1000 BTC is over any cap, but there is none.
    assert not instrument.notional_exceeds_cap(1_000_000_000, 100_000_000_000)  # type: ignore[attr-defined]


def test_the_notional_cap_is_exact_at_its_edge(tmp_path: Path) -> None:
    instrument = load(tmp_path, 'max_order_notional = "25000"\n')
    # 50,000.00 x 0.5 = 25,000 exactly: allowed; one lot more is over.
    assert not instrument.notional_exceeds_cap(5_000_000, 50_000_000)  # type: ignore[attr-defined]
    assert instrument.notional_exceeds_cap(5_000_000, 50_000_001)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("line", "named"), [
    ("price_band_pct = -1", "price_band_pct"),
    ("price_band_pct = 1000.01", "price_band_pct"),
    ('price_band_pct = "ten"', "price_band_pct"),
    ("price_band_pct = 1.001", "price_band_pct"),
    ("price_band_pct = true", "price_band_pct"),
    ("market_protection_pct = 100.5", "market_protection_pct"),
    ("max_open_orders = 1.5", "max_open_orders"),
    ("max_open_orders = -1", "max_open_orders"),
    ("max_open_orders = 1000001", "max_open_orders"),
    ('max_order_notional = "nan"', "max_order_notional"),
    ('max_order_notional = "1e40"', "max_order_notional"),
    ("max_orders_open = 5", "max_orders_open"),
])
def test_unknown_or_out_of_range_limits_are_refused_at_start_naming_the_setting(
        tmp_path: Path, line: str, named: str) -> None:
    with pytest.raises(InstrumentError, match=named):
        load(tmp_path, line + "\n")
