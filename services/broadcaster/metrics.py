"""The broadcaster's Prometheus metrics, in a registry of its own (one per process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class BroadcasterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.clients = Gauge("websocket_clients", "Connected WebSocket clients", registry=r)
        self.messages_sent = Counter("websocket_messages_sent", "Messages sent to clients (a batch counts each)",
                                     registry=r)
        self.frames_sent = Counter("websocket_frames_sent", "WebSocket frames sent to clients", registry=r)
        self.dropped = Counter("websocket_clients_dropped", "Clients the broadcaster disconnected", ["reason"],
                               registry=r)
        for reason in ("slow", "stalled", "message_rate", "key_revoked"):
            self.dropped.labels(reason)  # shown as 0 before the first drop, so dashboards and alerts see it
        self.refused = Counter("websocket_connections_refused", "Handshakes refused with 503 (connection cap)",
                               registry=r)
        self.snapshot_reads = Counter("broadcaster_snapshot_reads", "Order book snapshots read from Redis",
                                      registry=r)
        self.events_read = Counter("broadcaster_events_read", "Stream entries read", ["stream"], registry=r)
        self.read_errors = Counter("broadcaster_read_errors", "Failed stream reads (Redis unreachable)",
                                   registry=r)
        self.client_errors = Counter("websocket_client_errors", "Client messages answered with an error",
                                     registry=r)
