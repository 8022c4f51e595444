# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: demo test lint typecheck unit bench servers clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.core: $(BIN)/python pyproject.toml
	$(PIP) -e .
	touch $@

$(VENV)/.all: $(BIN)/python pyproject.toml
	$(PIP) -e '.[all,dev]'
	touch $@ $(VENV)/.core

$(VENV)/.bench: $(VENV)/.all
	$(PIP) -e '.[all,dev,bench]'
	touch $@

## demo: the main job on the embedded SQLite default
demo: $(VENV)/.core
	$(BIN)/python examples/demo.py

## servers: install what the tests start themselves (beanstalkd, gearmand, memcached)
servers:
	@bash scripts/install-servers.sh

## test: lint, type-check and the whole suite, with every extra and every server
test: $(VENV)/.all servers lint typecheck
	$(BIN)/python -m pytest -p no:cacheprovider --durations=15 $(PYTEST_ARGS)

lint: $(VENV)/.all
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.all
	$(BIN)/mypy

## bench: throughput and latency beside each backend's raw client (not part of test)
bench: $(VENV)/.bench servers
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache lilqueue.db lilqueue.db-wal lilqueue.db-shm
