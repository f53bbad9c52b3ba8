# llm-gateway — `make help` lists the targets.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?=
HOST ?= 127.0.0.1
PORT ?= 8787

.PHONY: help venv install system-deps run test test-all lint format bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed  ## create the virtualenv and install the package with test extras

install: venv  ## alias of venv

system-deps:  ## install the real servers the tests and benchmarks use (Debian: prometheus, redis, wrk)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  need=""; for p in prometheus redis-server wrk; do dpkg -s $$p >/dev/null 2>&1 || need="$$need $$p"; done; \
	  if [ -n "$$need" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null; fi; \
	else echo "system-deps: not root or no apt-get; skipping (install prometheus, redis-server, wrk yourself)"; fi

run: venv  ## set up and start the gateway on its embedded defaults (chDB audit in ./data)
	$(BIN)/llm-gateway serve --host $(HOST) --port $(PORT) $(if $(CONFIG),--config $(CONFIG),)

test: venv system-deps  ## set up and run the whole default test suite
	$(BIN)/python -m pytest -q

test-all: venv system-deps  ## the default suite plus slow tests (200 MB stream memory bound)
	$(BIN)/python -m pytest -q -m ''

lint: venv  ## ruff lint + format check, mypy
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench
	$(BIN)/mypy

format: venv  ## apply ruff formatting and autofixes
	$(BIN)/ruff check --fix gateway tests bench
	$(BIN)/ruff format gateway tests bench

bench: venv system-deps  ## run the benchmarks in bench/ (direct vs through the gateway)
	$(BIN)/python -m bench.run

clean:  ## remove the venv and local data
	rm -rf $(VENV) data .pytest_cache
