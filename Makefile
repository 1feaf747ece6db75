# The targets the README and CI run. Each does its own set-up, idempotently.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STACK := bash deploy/local/stack.sh
WITH_ENV := set -a && . .run/stack.env && set +a &&

.PHONY: install stack-up stack-down stack-status demo test test-unit lint bench-e2e clean

install:
	@bash deploy/local/install.sh

stack-up: install
	@$(STACK) up

stack-down:
	@$(STACK) down

stack-status:
	@$(STACK) status

## the main job: live pipeline on the local stack, fed by the simulator
demo: stack-up
	@$(WITH_ENV) $(VENV)/bin/citybrain demo

## the whole suite on the real local stack (lint, unit, integration, e2e)
test: stack-up
	@bash deploy/local/pglite/install.sh
	@$(MAKE) --no-print-directory lint
	@$(WITH_ENV) $(VENV)/bin/pytest -q -p no:cacheprovider

test-unit: install
	@$(VENV)/bin/pytest -q tests/unit

lint: install
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/mypy --no-error-summary citybrain schemas connectors streams storage sim opscenter bench

bench-e2e: stack-up
	@$(WITH_ENV) $(PY) -m bench.e2e

clean: stack-down
	rm -rf .run
