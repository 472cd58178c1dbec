# The two commands a fresh machine needs (both install what they need, uv included):
#   make up     bring the whole system up on embedded NATS and PostgreSQL, run a demo task
#   make test   lint (ruff, import layers), type-check and run the full test suite
# Only python3 (3.11) is assumed. uv comes from PATH, or is installed into .tools/ once.

SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
PYTEST_ARGS ?=

.PHONY: up test lint typecheck sync proto asyncapi

$(CURDIR)/.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install --quiet 'uv>=0.9,<0.14'

sync: $(UV)
	$(UV) sync --frozen

up: sync
	$(UV) run --frozen opspawn up

lint: sync
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen lint-imports --no-cache

typecheck: sync
	$(UV) run --frozen mypy libs services apps tests benchmarks conftest.py

test: lint typecheck
	$(UV) run --frozen pytest $(PYTEST_ARGS)

proto: sync
	$(UV) run --frozen python scripts/generate_proto.py

asyncapi: sync
	$(UV) run --frozen python scripts/generate_asyncapi.py
