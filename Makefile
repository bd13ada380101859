# The two commands that matter: `make up` runs the whole platform locally, `make test` runs
# lint, types and every test. Both install what they need into .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PY_DIRS := shared/src $(wildcard services/*/src) tests $(wildcard services/*/tests) scripts $(wildcard bench/*.py bench/*/*.py)

.DEFAULT_GOAL := help
.PHONY: help install up down status infra-up infra-down infra-status test lint types unit docs docs-check bench bench-ingest bench-profile bench-loyalty bench-notify constraints clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-13s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(STAMP) ## Create .venv with every package (editable) and the pinned tools

$(STAMP): requirements-dev.txt constraints.txt shared/pyproject.toml services/*/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11 or newer is needed (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "python -m venv failed; on Debian or Ubuntu: apt-get install python3-venv"; exit 1; }
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -r requirements-dev.txt
	@touch $@

up: infra-up ## Start the infrastructure and the four services, wait until ready, print URLs
	$(BIN)/python scripts/localplatform.py up

down: ## Stop the services and the infrastructure
	@if [ -x $(BIN)/python ]; then $(BIN)/python scripts/localplatform.py down; fi
	@$(PYTHON) scripts/localinfra.py down

status: ## Show what is running and whether it is ready
	@$(PYTHON) scripts/localinfra.py status
	@$(PYTHON) scripts/localplatform.py status

infra-up: install ## Start (or reuse) PostgreSQL on :5433 and the Tansu broker on :9092, create databases and topics
	$(BIN)/python scripts/localinfra.py up

infra-down: ## Stop PostgreSQL and the broker started by infra-up
	$(PYTHON) scripts/localinfra.py down

infra-status: ## Show whether the local infrastructure runs
	@$(PYTHON) scripts/localinfra.py status

test: lint types ## Lint, type-check, then run every test (brings up the infrastructure it needs)
	$(BIN)/python -m pytest

unit: install ## Only the tests that need no broker or database
	$(BIN)/python -m pytest -m "not infra"

lint: install ## ruff check and ruff format --check
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)

types: install ## mypy --strict on every package, the tests and the scripts
	$(BIN)/mypy $(PY_DIRS)

docs: install ## Regenerate docs/ (JSON Schema, AsyncAPI) and the README tables from the code
	$(BIN)/crm-admin docs

docs-check: install ## Fail when the generated docs are stale
	$(BIN)/crm-admin docs --check

bench: infra-up ## The platform benchmark (four services); prints figures, writes bench/RESULTS.md
	$(BIN)/python bench/run.py

bench-ingest: infra-up ## Ingest's batch endpoints against a plain producer; writes bench/RESULTS.md
	$(BIN)/python bench/ingest

bench-profile: infra-up ## Profile's touchpoints/s and 2xx-to-snapshot latency; writes bench/RESULTS.md
	$(BIN)/python bench/profile

bench-loyalty: infra-up ## Loyalty's ledger touchpoints/s and the RFM recompute of 1M; writes bench/RESULTS.md
	$(BIN)/python bench/loyalty

bench-notify: infra-up ## Notify's trigger evaluations/s and emails/s to a local SMTP server; writes bench/RESULTS.md
	$(BIN)/python bench/notify

constraints: install ## Re-pin constraints.txt from the current .venv
	@{ head -n 2 constraints.txt; $(BIN)/pip freeze --exclude-editable --disable-pip-version-check; } > constraints.new && mv constraints.new constraints.txt

clean: ## Stop everything, delete the local database cluster, .state and .venv
	@if [ -x $(BIN)/python ]; then $(BIN)/python scripts/localplatform.py down; fi
	$(PYTHON) scripts/localinfra.py clean
	rm -rf $(VENV)
