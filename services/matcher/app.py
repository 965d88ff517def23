"""Wiring: settings -> Redis, metrics, the ops endpoint and the Matcher, run until the service stops."""

from __future__ import annotations

import asyncio
import logging

from services.common.durability import report_durability
from services.common.ops_http import ops_server
from services.common.redis_conn import connect
from services.common.runner import cancel_on_stop
from services.matcher.metrics import MatcherMetrics
from services.matcher.settings import MatcherSettings
from services.matcher.worker import Matcher

logger = logging.getLogger(__name__)


async def serve(settings: MatcherSettings, stop: asyncio.Event) -> None:
    """Match every instrument's commands until `stop` is set."""
    redis = connect(settings.redis_url, mode=settings.redis_mode)
    metrics = MatcherMetrics()
    matcher = Matcher(settings, redis, metrics)
    ops = ops_server(metrics.registry, matcher.is_alive, settings.metrics_host, settings.metrics_port,
                     matcher.health)
    # /healthz lists the leases held; it answers "stalled" until the leases were looked at and every held
    # instrument's loop runs (not while its book is rebuilt). A standby holding none answers "ok".
    await ops.start()

    async def work() -> None:
        await report_durability(redis)
        logger.info("matcher started", extra={"event": "start", "consumer": settings.consumer,
                                              "instruments": list(settings.instruments),
                                              "lease_ms": settings.lease_ms,
                                              "metrics": f"http://{settings.metrics_host}:{settings.metrics_port}"})
        await matcher.run()

    try:
        # Cancelling mid-call is safe: a match.lua call already sent completes atomically in Redis,
        # and a rebuild cut short is redone at the next start (its meta hash is written last). The run task
        # releases its leases as it ends, so that a standby takes the instruments over at once.
        # Python 3.11's wait_for inside redis-py can swallow a cancel; the stop flag ends the loops anyway.
        await cancel_on_stop(stop, work(), on_stop=matcher.stop)
    finally:
        await ops.stop()
        await redis.aclose()
    logger.info("matcher stopped", extra={"event": "stop", "consumer": settings.consumer})
