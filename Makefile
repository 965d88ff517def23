# Thin targets; anything longer than a line lives in scripts/.
VENV ?= .venv
PY := $(VENV)/bin/python
RUNTIME := $(PY) -m services.runtime
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
N ?= 2

.PHONY: install install-dev run start stop test test-slow lint migrate bench scale-workers settle fixtures clean clean-data \
	redis-cli psql

$(RUN_STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $(RUN_STAMP)

$(DEV_STAMP): $(RUN_STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(DEV_STAMP)

install: $(RUN_STAMP)  ## the engine and its server binaries into .venv (what `make run` needs)

install-dev: $(DEV_STAMP)  ## plus the test tools

run: install  ## the whole engine in the foreground (Ctrl-C stops it)
	bash scripts/run.sh foreground

start: install  ## the whole engine in the background, logs in run/logs/ (circus's own in run/engine.log)
	bash scripts/run.sh background

stop:  ## stop an engine started with `make start`
	bash scripts/run.sh stop

scale-workers: install  ## N persister workers in the group: make scale-workers N=4
	bash scripts/run.sh scale $(N)

migrate: install  ## create the database if missing and migrate it (starts the engine's PostgreSQL if it is stopped)
	$(RUNTIME) with-postgres $(PY) -m services.common.db

redis-cli: install  ## the shipped valkey-cli on the engine's Redis: make redis-cli ARGS="XLEN 'trades:{BTC-USD}'"
	$(RUNTIME) cli redis $(ARGS)

psql: install  ## the shipped psql on the engine's database: make psql ARGS="-c 'select count(*) from trades'"
	$(RUNTIME) cli psql $(ARGS)

lint: install-dev
	$(VENV)/bin/ruff check services tests scripts fixtures
	$(VENV)/bin/mypy

test: lint  ## lint, then every test against real Redis and PostgreSQL but the slow ones (< 10 min)
	$(VENV)/bin/pytest -q -m "not slow"

test-slow: install-dev  ## the slow tests: faults, failover, Redis Cluster, the browser (CI runs them after make test)
	$(VENV)/bin/pytest -q -m slow

settle: install  ## end-of-day settlement of a UTC date: make settle DATE=2026-11-24 (default yesterday)
	$(RUNTIME) with-postgres $(PY) -m services.analytics.settlement $(if $(DATE),--date $(DATE))

bench: install-dev
	$(PY) -m pip install --quiet -e '.[bench]'
	bash scripts/bench.sh

fixtures:  ## 100k realistic limit orders, then a burst of market orders (JSONL) for load-test/replay.js
	python3 fixtures/gen_orders.py --seed 1 --out fixtures/orders.jsonl

clean:  ## the venv and caches; run/data (the engine's own Redis and PostgreSQL data) stays
	rm -rf $(VENV) run/*.log run/logs run/bench-* .pytest_cache .mypy_cache .ruff_cache .hypothesis

clean-data:  ## delete the engine's own Redis and PostgreSQL data (every order and trade); the engine must be stopped
	bash scripts/run.sh clean-data
