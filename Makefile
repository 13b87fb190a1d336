# upm — run `make help` for the list of targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: help install protos check-protos docs check-docs lint fmt test test-unit run bench bench-smoke clean

help: ## List every target with what it does.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP) ## Create .venv with every pinned dependency and upm installed in it.

protos: $(STAMP) ## Regenerate gen/python from protos/ (code and .pyi stubs).
	$(BIN)/python scripts/gen_protos.py

check-protos: $(STAMP) ## Fail when gen/python differs from what protos/ generates.
	$(BIN)/python scripts/check_protos.py

docs: $(STAMP) ## Regenerate the README's table of configuration variables.
	$(BIN)/python scripts/settings_table.py

check-docs: $(STAMP) ## Fail when the README's configuration table is stale.
	$(BIN)/python scripts/settings_table.py --check

lint: $(STAMP) ## ruff (format and lint), mypy and buf lint.
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/buf lint protos

fmt: $(STAMP) ## Format the code and apply ruff's safe fixes.
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: $(STAMP) ## Run the whole test suite (lint, contracts, unit, integration, e2e).
	$(MAKE) --no-print-directory lint check-protos check-docs
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: $(STAMP) ## Run the tests that need no PostgreSQL, Redis or browser.
	$(BIN)/pytest -m "not postgres and not redis and not browser" $(PYTEST_ARGS)

run: $(STAMP) ## Start every service on localhost on the embedded default (SQLite, no servers).
	$(BIN)/upm up

bench: $(STAMP) ## Run the benchmarks and write bench/results.json.
	$(BIN)/python -m bench --output bench/results.json

bench-smoke: $(STAMP) ## Run every benchmark on tiny data, to prove they still work.
	$(BIN)/python -m bench --smoke --output $(VENV)/bench-smoke.json

clean: ## Remove the venv, caches and local data.
	rm -rf $(VENV) .upm .pytest_cache .mypy_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
