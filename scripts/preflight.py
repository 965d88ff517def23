"""Before `make run`: Redis and PostgreSQL must answer; start them with Docker if we can; migrate the database.

Exits non-zero with a message naming exactly what is missing and how to get it.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time

import redis
from sqlalchemy.engine import make_url

from services.common.db import database_url, migrate, with_database
from services.common.env import REPO_ROOT, redis_url


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


async def _postgres_answers(url: str) -> bool:
    import asyncpg

    parsed = make_url(with_database(url, "postgres"))
    try:
        conn = await asyncpg.connect(host=parsed.host, port=parsed.port or 5432, user=parsed.username,
                                     password=parsed.password, database="postgres", timeout=2)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


def postgres_answers(url: str) -> bool:
    return asyncio.run(_postgres_answers(url))


def docker_engine() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    # `docker --version` answers without an engine; `docker info` needs one.
    return subprocess.run([docker, "info"], capture_output=True).returncode == 0


def main() -> int:
    rurl, durl = redis_url(), database_url()
    missing = [name for name, up in (("redis", redis_answers(rurl)), ("postgres", postgres_answers(durl))) if not up]
    if missing and docker_engine():
        print(f"starting {' and '.join(missing)} with docker compose")
        subprocess.run(["docker", "compose", "up", "-d", "--wait", *missing], cwd=REPO_ROOT, check=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (redis_answers(rurl) and postgres_answers(durl)):
            time.sleep(1)
        missing = [n for n, up in (("redis", redis_answers(rurl)), ("postgres", postgres_answers(durl))) if not up]
    if missing:
        hints = {
            "redis": f"Redis 7 does not answer at {rurl}. Start one (Debian: `apt install redis-server`, then "
                     "`redis-server --daemonize yes`), or set REDIS_URL.",
            "postgres": f"PostgreSQL does not answer at {make_url(durl).render_as_string(hide_password=True)}. "
                        "Start one (Debian: `apt install postgresql`, then `pg_ctlcluster 15 main start`), "
                        "or set DATABASE_URL.",
        }
        for name in missing:
            print(f"error: {hints[name]}", file=sys.stderr)
        print("With a Docker engine, `make run` starts both from compose.yaml itself.", file=sys.stderr)
        return 1
    asyncio.run(migrate(durl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
