"""The persister's Prometheus metrics, in a registry of its own (served by services.common.ops_http)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class PersisterMetrics:
    """Everything the persister reports, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.batch_size = Histogram("persister_batch_size", "Entries per processed batch",
                                    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500), registry=r)
        self.batch_seconds = Histogram("persister_batch_seconds", "Time to decode, write and ack a batch",
                                       buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                                2.5, 5, 10), registry=r)
        self.rows_written = Counter("persister_rows_written", "Rows written per table (idempotent: replays "
                                    "included)", ["table"], registry=r)
        self.dead_letters = Counter("persister_dead_letters", "Entries moved to a dead-letter stream",
                                    registry=r)
        self.reclaimed = Counter("persister_reclaimed", "Entries taken over with XAUTOCLAIM", registry=r)
        self.group_lag = Gauge("stream_group_lag", "Entries not yet delivered to the group",
                               ["stream", "group"], registry=r)
        self.group_pending = Gauge("stream_group_pending", "Entries delivered but not acknowledged",
                                   ["stream", "group"], registry=r)
        self.retention_trimmed = Counter("retention_trimmed_entries", "Stream entries removed by retention",
                                         ["stream"], registry=r)
        self.retention_evicted = Counter("retention_evicted_orders", "Final order records evicted from Redis "
                                         "by retention (PostgreSQL holds them)", registry=r)
        self.db_up = Gauge("persister_database_up", "1 while PostgreSQL accepts writes", registry=r)
        self.db_up.set(1)


class HealthState:
    """What the worker reports about itself."""

    def __init__(self) -> None:
        self.database_up = True
        self.running = False
