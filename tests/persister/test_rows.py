"""Each row Struct lists its table's columns in the table's order: COPY sends rows as tuples by position."""

from __future__ import annotations

import pytest
from sqlalchemy import Table

from services.common.db import order_events, orders, trades
from services.persister.rows import STATIC_FIELDS, EventRow, OrderRow, Row, TradeRow, column_names
from services.persister.writer import EVENTS, ORDERS, TRADES


@pytest.mark.parametrize(("row", "table"), [(TradeRow, trades), (EventRow, order_events), (OrderRow, orders)])
def test_a_row_struct_has_its_tables_columns_in_order(row: type[Row], table: Table) -> None:
    assert column_names(row) == [c.name for c in table.c]


def test_the_writer_copies_each_struct_into_its_own_table() -> None:
    assert [(t.row, t.table) for t in (TRADES, EVENTS, ORDERS)] == [
        (TradeRow, trades), (EventRow, order_events), (OrderRow, orders)]


def test_the_static_fields_are_order_columns() -> None:
    assert set(STATIC_FIELDS) <= set(column_names(OrderRow))
