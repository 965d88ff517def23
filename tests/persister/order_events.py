"""Order events as match.lua writes them, for tests that need a given history without the matcher producing it."""

from __future__ import annotations

from decimal import Decimal

T0 = 1_767_225_600_000
ORDER_FIELDS = ("client_order_id", "side", "type", "time_in_force", "post_only", "price", "quantity", "created_at",
                "self_trade_prevention")


class Book:
    """The events match.lua would write for a few orders of one instrument, numbered from 1."""

    def __init__(self, symbol: str = "BTC-USD") -> None:
        self.symbol = symbol
        self.seq = 0
        self.orders: dict[str, dict[str, str]] = {}
        self.events: list[dict[str, str]] = []

    def _emit(self, kind: str, order_id: str, with_order: bool, **changes: str) -> dict[str, str]:
        self.seq += 1
        o = self.orders[order_id]
        o.update(changes)
        fields = {"event": kind, "seq": str(self.seq), "instrument": self.symbol, "order_id": order_id,
                  "client_id": o["client_id"], "status": o["status"], "filled_quantity": o["filled"],
                  "remaining_quantity": str(Decimal(o["quantity"]) - Decimal(o["filled"])),
                  "filled_quote": o["quote"], "reason": o["reason"], "ts": str(T0 + self.seq),
                  "command_id": f"{T0}-{self.seq}"}
        if with_order:
            fields.update({k: o[k] for k in ORDER_FIELDS})
        self.events.append(fields)
        return fields

    def accept(self, order_id: str, side: str, price: str, quantity: str, stp: str = "none",
               client: str = "mm-1") -> None:
        self.orders[order_id] = {
            "client_id": client, "client_order_id": f"c-{order_id}", "side": side, "type": "limit",
            "time_in_force": "GTC", "post_only": "0", "price": price, "quantity": quantity, "created_at": str(T0),
            "self_trade_prevention": stp, "status": "open", "filled": "0", "quote": "0", "reason": ""}
        self._emit("accepted", order_id, True)

    def amend(self, order_id: str, requeued: str, reason: str = "", **changes: str) -> None:
        """An amend ("" reason) or an STP decrement (self_trade_prevented): the reason is the event's only."""
        self._with_reason("amended", order_id, True, reason, **changes)["requeued"] = requeued

    def amend_rejected(self, order_id: str, reason: str) -> None:
        self._with_reason("amend_rejected", order_id, False, reason)

    def _with_reason(self, kind: str, order_id: str, with_order: bool, reason: str,
                     **changes: str) -> dict[str, str]:
        saved = self.orders[order_id]["reason"]
        fields = self._emit(kind, order_id, with_order, reason=reason, **changes)
        self.orders[order_id]["reason"] = saved
        return fields

    def fill(self, order_id: str, filled: str, quote: str) -> None:
        o = self.orders[order_id]
        status = "filled" if Decimal(filled) == Decimal(o["quantity"]) else "partially_filled"
        self._emit(status, order_id, False, filled=filled, quote=quote, status=status)

    def cancel(self, order_id: str, reason: str) -> None:
        self._emit("cancelled", order_id, False, status="cancelled", reason=reason)

    def unknown_amend(self, order_id: str, client: str) -> None:
        """The amend_rejected of an order the matcher does not know."""
        self.seq += 1
        self.events.append({"event": "amend_rejected", "seq": str(self.seq), "instrument": self.symbol,
                            "order_id": order_id, "client_id": client, "status": "rejected",
                            "filled_quantity": "0", "remaining_quantity": "0", "filled_quote": "0",
                            "reason": "unknown_order", "ts": str(T0 + self.seq), "command_id": f"{T0}-{self.seq}"})
