"""A deliberately simple price-time matching model in plain Python, to check match.lua against: new orders,
cancels, amends, cancel-all and self-trade prevention (docs/order-management.md)."""

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
