# Two commands: `make run` (the demo gateway) and `make test` (the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,redis,speed]'
	touch $(STAMP)

## run: the gateway on 127.0.0.1:8081 in front of the bundled echo upstream on 127.0.0.1:8080
run: $(STAMP)
	@port=$${DEMO_UPSTREAM_PORT:-8080}; ready=$$(mktemp -u); \
	$(BIN)/python -m gateway.demo --port $$port --ready-file $$ready & \
	echo_pid=$$!; trap 'kill $$echo_pid 2>/dev/null; rm -f $$ready' EXIT INT TERM; \
	while [ ! -e $$ready ]; do \
		kill -0 $$echo_pid 2>/dev/null || { echo "make run: the demo upstream could not listen on 127.0.0.1:$$port; free the port or set DEMO_UPSTREAM_PORT" >&2; exit 1; }; \
		sleep 0.1; \
	done; \
	$(BIN)/gateway serve --config config.example.yaml

## test: lint, type-check and run every test (Redis tests need REDIS_URL or 127.0.0.1:6379)
test: $(STAMP)
	$(BIN)/ruff check gateway tests bench
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench
	$(BIN)/mypy

## bench: the benchmark (not part of the tests): wrk from Debian when missing, matplotlib
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	command -v wrk >/dev/null || { apt-get update && apt-get install -y wrk; }
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
