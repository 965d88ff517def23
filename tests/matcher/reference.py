"""A deliberately simple price-time matching model in plain Python, to check match.lua against: new orders,
cancels, amends, cancel-all and self-trade prevention (docs/order-management.md), and the risk limits (issue 16):
the price band around the last trade price, market protection and the per-client open-order cap."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RefOrder:
    order_id: str
    side: str
    type: str
    tif: str
    post_only: bool
    price: int  # ticks; 0 for market
    qty: int  # lots
    arrival: int = 0
    filled: int = 0
    status: str = "open"
    reason: str = ""
    client: str = "client-1"
    stp: str = "none"


@dataclass
class RefBook:
    orders: dict[str, RefOrder] = field(default_factory=dict)
    resting: list[RefOrder] = field(default_factory=list)
    trades: list[tuple[int, int, str, str]] = field(default_factory=list)  # price, lots, buy id, sell id
    arrivals: int = 0
    # Risk limits, 0 = off: percentages in hundredths of a percent (Instrument.risk's *_bp), the cap in orders.
    band_bp: int = 0
    protection_bp: int = 0
    max_open: int = 0

    @property
    def reference(self) -> int | None:
        """The price band's reference: the last trade's price."""
        return self.trades[-1][0] if self.trades else None

    def _outside_band(self, price: int) -> bool:
        reference = self.reference
        if not self.band_bp or reference is None:
            return False
        return abs(price - reference) * 100 * 100 > self.band_bp * reference

    def open_orders(self, client: str) -> int:
        return sum(o.client == client for o in self.resting)

    def open_counts(self) -> dict[str, int]:
        """Resting orders per client (clients with none left out)."""
        counts: dict[str, int] = {}
        for o in self.resting:
            counts[o.client] = counts.get(o.client, 0) + 1
        return counts

    def _opposite(self, order: RefOrder) -> list[RefOrder]:
        """Resting makers the order could meet, best price first, then earliest."""
        makers = [o for o in self.resting if o.side != order.side]
        if order.side == "buy":
            return sorted(makers, key=lambda o: (o.price, o.arrival))
        return sorted(makers, key=lambda o: (-o.price, o.arrival))

    @staticmethod
    def _crosses(order: RefOrder, price: int) -> bool:
        if order.type == "market":
            return True
        return price <= order.price if order.side == "buy" else price >= order.price

    def new(self, order: RefOrder) -> None:
        self.orders[order.order_id] = order
        if order.type == "limit" and self._outside_band(order.price):
            order.status, order.reason = "rejected", "price_band"
            return
        if order.type == "limit" and order.tif == "GTC" and self.max_open and \
                self.open_orders(order.client) >= self.max_open:
            order.status, order.reason = "rejected", "max_open_orders"
            return
        makers = [m for m in self._opposite(order) if self._crosses(order, m.price)]
        if order.post_only and makers:
            order.status, order.reason = "rejected", "post_only_would_cross"
            return
        if order.type == "market" and self.protection_bp and makers:
            # No further than protection_bp from the best opposite price at arrival.
            best = makers[0].price
            makers = [m for m in makers if abs(m.price - best) * 100 * 100 <= self.protection_bp * best]
        if order.tif == "FOK" and not self._fok_fillable(order, makers):
            order.status, order.reason = "cancelled", "fok_not_fillable"
            return
        self._take(order, makers)

    def _fok_fillable(self, order: RefOrder, makers: list[RefOrder]) -> bool:
        needed = order.qty
        for maker in makers:
            left = maker.qty - maker.filled
            if order.stp == "none" or maker.client != order.client:
                needed -= left
                if needed <= 0:
                    return True
            elif order.stp in ("cancel_taker", "cancel_both"):
                return False
            elif order.stp == "decrement":
                if left >= needed:
                    return False
                needed -= left
        return False

    def _cancel_maker(self, maker: RefOrder) -> None:
        self.resting.remove(maker)
        maker.status, maker.reason = "cancelled", "self_trade_prevented"

    def _prevent(self, order: RefOrder, maker: RefOrder) -> bool:
        """Self-trade prevention against one own maker; True when the taker stops (and is cancelled)."""
        if order.stp == "cancel_taker":
            return True
        if order.stp == "cancel_maker":
            self._cancel_maker(maker)
            return False
        if order.stp == "cancel_both":
            self._cancel_maker(maker)
            return True
        maker_left, taker_left = maker.qty - maker.filled, order.qty - order.filled
        if maker_left <= taker_left:
            self._cancel_maker(maker)
            if maker_left == taker_left:
                return True
            order.qty -= maker_left
            return False
        maker.qty -= taker_left
        return True

    def _take(self, order: RefOrder, makers: list[RefOrder]) -> None:
        """Trade the order as a taker against `makers` (crossing, best first), then cancel, fill or rest it."""
        stopped = False
        for maker in makers:
            if order.stp != "none" and maker.client == order.client:
                if self._prevent(order, maker):
                    stopped = True
                    break
                continue
            lots = min(order.qty - order.filled, maker.qty - maker.filled)
            order.filled += lots
            maker.filled += lots
            buy, sell = (order, maker) if order.side == "buy" else (maker, order)
            self.trades.append((maker.price, lots, buy.order_id, sell.order_id))
            if maker.filled == maker.qty:
                maker.status = "filled"
                self.resting.remove(maker)
            else:
                maker.status = "partially_filled"
            if order.filled == order.qty:
                break
        if stopped:
            order.status, order.reason = "cancelled", "self_trade_prevented"
        elif order.filled == order.qty:
            order.status = "filled"
        elif order.type == "market":
            # Makers still on the other side are beyond its protection (those within it were all taken).
            protected = self.protection_bp and any(m.side != order.side for m in self.resting)
            order.status, order.reason = "cancelled", "market_protection" if protected else "market_remainder"
        elif order.tif != "GTC":
            order.status, order.reason = "cancelled", "ioc_remainder"
        else:
            order.status = "partially_filled" if order.filled else "open"
            self.arrivals += 1
            order.arrival = self.arrivals
            self.resting.append(order)

    def cancel(self, order_id: str) -> None:
        order = self.orders.get(order_id)
        if order is None or order not in self.resting:
            return
        self.resting.remove(order)
        order.status, order.reason = "cancelled", "user"

    def amend(self, order_id: str, price: int | None, qty: int | None) -> tuple[str, str]:
        """(outcome, reason) as match.lua writes them to the outcome key."""
        order = self.orders.get(order_id)
        if order is None:
            return "amend_rejected", "unknown_order"
        if order not in self.resting:
            return "amend_rejected", f"already_{order.status}"
        price = order.price if price is None else price
        qty = order.qty if qty is None else qty
        if qty <= order.filled:
            return "amend_rejected", "quantity_not_above_filled"
        if (price, qty) == (order.price, order.qty):
            return "unchanged", ""
        if price == order.price and qty < order.qty:
            order.qty = qty  # keeps its place
            return "amended", ""
        if price != order.price and self._outside_band(price):
            return "amend_rejected", "price_band"
        if price != order.price and order.post_only:
            if any(self._crosses(RefOrder("", order.side, "limit", "GTC", False, price, 0), m.price)
                   for m in self._opposite(order)):
                return "amend_rejected", "post_only_would_cross"
        self.resting.remove(order)
        order.price, order.qty = price, qty
        makers = [m for m in self._opposite(order) if self._crosses(order, m.price)]
        self._take(order, makers)
        return "amended", ""

    def cancel_all(self, client: str, side: str, reason: str = "user") -> list[str]:
        """The ids cancelled: the client's resting orders (of `side`, "" both)."""
        ids = [o.order_id for o in self.resting if o.client == client and side in ("", o.side)]
        for order_id in ids:
            order = self.orders[order_id]
            self.resting.remove(order)
            order.status, order.reason = "cancelled", reason
        return ids

    def live(self, client: str) -> set[str]:
        """The client's live orders (what its index must hold once every command is applied)."""
        return {o.order_id for o in self.resting if o.client == client}

    def levels(self, side: str) -> list[tuple[int, int]]:
        """(price ticks, lots) per level, best first."""
        totals: dict[int, int] = {}
        for o in self.resting:
            if o.side == side:
                totals[o.price] = totals.get(o.price, 0) + o.qty - o.filled
        return sorted(totals.items(), reverse=(side == "buy"))
