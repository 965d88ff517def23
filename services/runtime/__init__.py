"""The engine's own data services: a Redis-compatible server and PostgreSQL, run from pinned wheels.

Where REDIS_URL / DATABASE_URL are unset, `make run` runs these under circus beside the four services,
on 127.0.0.1:6390 / :5440, with their data under run/data/ kept across runs. Redis appends every write
to its AOF and fsyncs it before answering (`appendfsync always`): an order answered 2xx survives kill -9
of any process and a host crash.
"""
