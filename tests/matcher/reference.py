"""A deliberately simple price-time matching model in plain Python, to check match.lua against."""

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


@dataclass
class RefBook:
    orders: dict[str, RefOrder] = field(default_factory=dict)
    resting: list[RefOrder] = field(default_factory=list)
    trades: list[tuple[int, int, str, str]] = field(default_factory=list)  # price, lots, buy id, sell id
    arrivals: int = 0

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
        makers = [m for m in self._opposite(order) if self._crosses(order, m.price)]
        if order.post_only and makers:
            order.status, order.reason = "rejected", "post_only_would_cross"
            return
        if order.tif == "FOK" and sum(m.qty - m.filled for m in makers) < order.qty:
            order.status, order.reason = "cancelled", "fok_not_fillable"
            return
        for maker in makers:
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
        if order.filled == order.qty:
            order.status = "filled"
        elif order.type == "market":
            order.status, order.reason = "cancelled", "market_remainder"
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

    def levels(self, side: str) -> list[tuple[int, int]]:
        """(price ticks, lots) per level, best first."""
        totals: dict[int, int] = {}
        for o in self.resting:
            if o.side == side:
                totals[o.price] = totals.get(o.price, 0) + o.qty - o.filled
        return sorted(totals.items(), reverse=(side == "buy"))
