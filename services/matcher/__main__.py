"""`python -m services.matcher`: run the matcher until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import uvloop

from services.common.durability import report_durability
from services.common.logs import setup_logging
from services.common.ops_http import OpsServer, ops_app
from services.common.redis_conn import connect
from services.matcher.metrics import MatcherMetrics
from services.matcher.settings import MatcherSettings
from services.matcher.worker import Matcher

logger = logging.getLogger("services.matcher")


async def main(settings: MatcherSettings) -> None:
    redis = connect(settings.redis_url)
    metrics = MatcherMetrics()
    matcher = Matcher(settings, redis, metrics)
    ops = OpsServer(ops_app(metrics.registry, matcher.is_alive), settings.metrics_host, settings.metrics_port)
    # /healthz answers "stalled" until every instrument's loop runs, e.g. while a book is rebuilt.
    await ops.start()

    async def serve() -> None:
        await report_durability(redis)
        await matcher.prepare()
        logger.info("matcher started", extra={"event": "start", "consumer": settings.consumer,
                                              "instruments": list(settings.instruments),
                                              "metrics": f"http://{settings.metrics_host}:{settings.metrics_port}"})
        await matcher.run()

    run = asyncio.create_task(serve())

    def shut_down() -> None:
        matcher.stop()
        run.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Cancelling mid-call is safe: a match.lua call already sent completes atomically in Redis,
        # and a rebuild cut short is redone at the next start (its meta hash is written last).
        # Python 3.11's wait_for inside redis-py can swallow a cancel; the stop flag ends the loops anyway.
        loop.add_signal_handler(sig, shut_down)
    with contextlib.suppress(asyncio.CancelledError):
        await run
    await ops.stop()
    await redis.aclose()
    logger.info("matcher stopped", extra={"event": "stop", "consumer": settings.consumer})


def run() -> None:
    settings = MatcherSettings.from_env()
    setup_logging("matcher", settings.log_level)
    uvloop.run(main(settings))


if __name__ == "__main__":
    run()
