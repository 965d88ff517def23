# Thin targets; anything longer than a line lives in scripts/.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
N ?= 2

.PHONY: install run start stop test lint migrate bench scale-workers settle fixtures clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## the project and its tools into .venv

run: install  ## the whole engine in the foreground (Ctrl-C stops it)
	bash scripts/run.sh foreground

start: install  ## the whole engine in the background, logs in run/engine.log
	bash scripts/run.sh background

stop:  ## stop an engine started with `make start`
	bash scripts/run.sh stop

scale-workers: install  ## N persister workers in the group: make scale-workers N=4
	bash scripts/run.sh scale $(N)

migrate: install  ## create the database if missing and migrate it to the newest schema
	$(PY) -m services.common.db

lint: install
	$(VENV)/bin/ruff check services tests scripts fixtures
	$(VENV)/bin/mypy

test: lint  ## lint, then every test against real Redis and PostgreSQL
	$(VENV)/bin/pytest -q

settle: install  ## end-of-day settlement of a UTC date: make settle DATE=2026-11-24 (default yesterday)
	$(PY) -m services.analytics.settlement $(if $(DATE),--date $(DATE))

bench: install
	$(PY) -m pip install --quiet -e '.[bench]'
	bash scripts/bench.sh

fixtures:  ## 100k realistic limit orders, then a burst of market orders (JSONL) for load-test/replay.js
	python3 fixtures/gen_orders.py --seed 1 --out fixtures/orders.jsonl

clean:
	rm -rf $(VENV) run .pytest_cache .mypy_cache .ruff_cache .hypothesis
