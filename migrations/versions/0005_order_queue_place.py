"""orders.queued_seq and orders.self_trade_prevention (issue 15: amend and self-trade prevention).

`queued_seq` is the events-stream seq at which the order took its current place in its level's time queue:
its `accepted` event, or the last `amended` event that re-queued it (a price change or a quantity
increase). Recovery rebuilds a book in this order; a quantity decrease keeps the place, and the seq.
The persister also moves `price` only to the values of an event with a higher `queued_seq`: every price
change re-queues. The backfill gives the resting orders stored before this revision their accepted
event's seq (the place they still hold: nothing could amend them). Other orders keep NULL.

`self_trade_prevention` is the order's mode, carried by its accepted/rejected/amended events like `side`:
NULL only while a later event has landed before them; rows stored before this revision read `none`.

Run it with the persisters stopped (make run and the compose file migrate before starting them).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BACKFILL = """
UPDATE orders AS o SET queued_seq = e.seq
FROM order_events AS e
WHERE e.instrument = o.instrument AND e.order_id = o.order_id AND e.event = 'accepted'
  AND o.status IN ('open', 'partially_filled')
"""


def upgrade() -> None:
    op.add_column("orders", sa.Column("queued_seq", sa.BigInteger))
    # A constant default: PostgreSQL 11+ adds it without rewriting the table.
    op.add_column("orders", sa.Column("self_trade_prevention", sa.Text, server_default=sa.text("'none'")))
    op.execute(BACKFILL)


def downgrade() -> None:
    op.drop_column("orders", "self_trade_prevention")
    op.drop_column("orders", "queued_seq")
