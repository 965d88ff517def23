"""The ingest service's Prometheus metrics, in a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.ingest.errors import RISK_REASONS

# Fine-grained below 10 ms, where the order path should answer.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0065, 0.008, 0.01,
    0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)


class IngestMetrics:
    """Counters and histograms of POST /orders."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.orders_received = Counter(
            "orders_received_total", "Orders accepted onto their instrument's orders stream",
            ["instrument"], registry=self.registry)
        self.orders_rejected = Counter(
            "orders_rejected_total",
            "Orders answered without being accepted, by reason (each order of a batch; a batch refused whole: once)",
            ["reason"], registry=self.registry)
        self.order_latency = Histogram(
            "order_latency_seconds", "Time from a POST /orders request's start to its answer",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_latency = Histogram(
            "order_batch_latency_seconds", "Time from a POST /orders/batch request's start to its answer",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.idempotent_replays = Counter(
            "idempotent_replays_total", "POST /orders answered with a stored first answer",
            registry=self.registry)
        self.rate_limited = Counter(
            "rate_limited_total", "POST /orders refused by the per-client rate limit", registry=self.registry)
        # Pre-trade risk controls (issue 16): ingest's own refusals, and the halts in force (set from Redis at
        # each scrape, so every ingest process reports the same).
        self.risk_rejections = Counter(
            "risk_rejections_total",
            "Orders and amends refused by ingest's risk controls, by reason (max_order_notional, client_halted, "
            "instrument_halted)", ["reason"], registry=self.registry)
        self.halted_clients = Gauge("halted_clients", "Clients halted by an admin now", registry=self.registry)
        self.halted_instruments = Gauge(
            "halted_instruments", "Instruments halted by an admin now", registry=self.registry)
        self.halt_changes = Counter(
            "halt_changes_total", "Admin halts and lifts answered by this process, by scope (client, instrument) "
            "and action (halt, resume)", ["scope", "action"], registry=self.registry)
        # The order-entry socket (trade_socket.py).
        self.trade_sockets = Gauge(
            "trade_sockets", "Order-entry sockets (/trade) open now", registry=self.registry)
        self.cod_sessions = Gauge(
            "cod_sessions", "Order-entry sockets with cancel_on_disconnect whose deadlines this process refreshes",
            registry=self.registry)
        self.trade_requests = Counter(
            "trade_requests_total", "Order-entry socket requests answered, by op and reply status",
            ["op", "status"], registry=self.registry)

    def refused(self, reason: str) -> None:
        """Count a refusal in risk_rejections_total when it is one of ingest's risk controls'."""
        if reason in RISK_REASONS:
            self.risk_rejections.labels(reason).inc()
