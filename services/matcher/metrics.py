"""The matcher's Prometheus metrics, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.scripts import BatchResult


class MatcherMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.commands = Counter("matcher_commands_total", "Commands applied", ["instrument"], registry=r)
        self.new_orders = Counter("matcher_new_orders_total", "New orders applied", ["instrument"], registry=r)
        self.cancels = Counter("matcher_cancels_total", "Cancel commands applied", ["instrument"], registry=r)
        self.matched = Counter("orders_matched_total",
                               "Orders that traded (each taker with a fill once, each maker once per fill)",
                               ["instrument"], registry=r)
        self.trades = Counter("trades_total", "Trades executed", ["instrument"], registry=r)
        self.rejected = Counter("orders_rejected_total", "Orders the matcher refused",
                                ["instrument", "reason"], registry=r)
        self.risk = Counter("risk_rejections_total",
                            "Risk limits applied by the matcher: orders rejected (price_band, max_open_orders; an "
                            "amend's price_band too) and market orders cut short (market_protection)",
                            ["instrument", "reason"], registry=r)
        self.batch = Histogram("matcher_batch_commands", "Commands per match.lua call", ["instrument"],
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=r)
        self.call_seconds = Histogram("matcher_call_seconds", "Duration of one match.lua call", ["instrument"],
                                      buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                               0.05, 0.1, 0.25), registry=r)
        self.depth = Gauge("current_orderbook_depth", "Resting orders in the book",
                           ["instrument", "side"], registry=r)
        self.levels = Gauge("orderbook_levels", "Price levels in the book", ["instrument", "side"], registry=r)
        self.heals = Counter(
            "matcher_redis_heals", "Heals of Redis state found older than PostgreSQL (restored backup, lost writes)",
            ["instrument"], registry=r)
        self.heal_missing = Gauge(
            "matcher_heal_missing",
            "What the last heal could tell was lost, held by neither the restored Redis nor PostgreSQL",
            ["instrument", "kind"], registry=r)
        self.leases = Gauge("matcher_leases_held", "1 while this matcher holds the instrument's lease, else 0",
                            ["instrument"], registry=r)
        self.lag = Gauge("stream_group_lag", "Entries the group has not read yet", ["stream", "group"],
                         registry=r)
        self.pending = Gauge("stream_group_pending", "Entries read but not acknowledged", ["stream", "group"],
                             registry=r)

    def record(self, instrument: str, result: BatchResult, seconds: float) -> None:
        if not result.applied:
            return
        self.commands.labels(instrument).inc(result.applied)
        self.new_orders.labels(instrument).inc(result.new_orders)
        self.cancels.labels(instrument).inc(result.cancels)
        self.matched.labels(instrument).inc(result.matched)
        self.trades.labels(instrument).inc(result.trades)
        post_only = result.rejected - result.price_band - result.max_open_orders
        if post_only:
            self.rejected.labels(instrument, "post_only_would_cross").inc(post_only)
        for reason, orders, risk in (("price_band", result.price_band, result.price_band + result.amend_price_band),
                                     ("max_open_orders", result.max_open_orders, result.max_open_orders),
                                     ("market_protection", 0, result.market_protection)):
            if orders:
                self.rejected.labels(instrument, reason).inc(orders)
            if risk:
                self.risk.labels(instrument, reason).inc(risk)
        if result.invalid:
            self.rejected.labels(instrument, "invalid_command").inc(result.invalid)
        self.batch.labels(instrument).observe(result.applied)
        self.call_seconds.labels(instrument).observe(seconds)
