"""Finding an order for a caller: its live record in Redis, else its row in PostgreSQL; 404 and 403."""

from __future__ import annotations

from services.common.auth import Principal
from services.ingest.context import IngestContext
from services.ingest.errors import forbidden, not_found
from services.ingest.orders_store import Found
from services.ingest.pg_reads import stored_order
from services.ingest.views import OrderView


def check_owner(principal: Principal, order_id: str, client_id: str) -> None:
    """ApiError 403 unless `principal` may act for the order's client."""
    if not principal.may_act_for(client_id):
        raise forbidden(f"order {order_id!r} belongs to another client")


async def find_order(ctx: IngestContext, order_id: str, principal: Principal) -> Found | OrderView:
    """The order's live record in Redis, else its row in PostgreSQL (after a rebuild Redis holds only the
    open orders); 404 if neither knows it, 403 if it is another client's."""
    found = await ctx.store.find(order_id)
    if found is not None:
        check_owner(principal, order_id, found.record.client_id)
        return found
    view = await stored_order(ctx.db, ctx.instruments, order_id)
    if view is None:
        raise not_found(f"no order {order_id!r}")
    check_owner(principal, order_id, view.client_id)
    return view
