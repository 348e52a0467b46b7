# imgpipe developer entry points. `make up` brings up the local stack; `make test` runs every test.
# Everything downloaded or built goes under .cache/ (ignored by git).

SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.8
TOOLS_DIR := .cache/tools
UV := $(TOOLS_DIR)/bin/uv
VENV := .venv
IMGPIPE := $(VENV)/bin/imgpipe
PYTEST := $(VENV)/bin/pytest
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))

.PHONY: help setup up demo down status doctor test bench test-unit test-integration chart-check lint format openapi proto proto-check proto-breaking clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(UV):
	python3 -m venv $(TOOLS_DIR)
	$(TOOLS_DIR)/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen
	touch $@

setup: $(VENV)/.synced  ## install Python deps from the lock, then Kafka, Postgres and MinIO
	$(IMGPIPE) stack install

# The local pipeline may call this machine (the demo's webhook receiver, local image hosts);
# `make up ALLOW_LOOPBACK=0` keeps production's SSRF guard, ALLOW_NETWORKS=10.0.0.0/8,... adds CIDRs.
ALLOW_LOOPBACK ?= 1
ALLOW_NETWORKS ?=

up: setup  ## start Kafka, Postgres, MinIO and every imgpipe service, then run the demo
	$(IMGPIPE) stack up > /dev/null
	source <($(IMGPIPE) stack env) && $(IMGPIPE) doctor
	$(IMGPIPE) pipeline up $(if $(filter 1,$(ALLOW_LOOPBACK)),--allow-loopback) $(if $(ALLOW_NETWORKS),--allow-networks $(ALLOW_NETWORKS))
	$(IMGPIPE) demo

demo:  ## submit sample photos to the running pipeline (HTTP and submit topic) and show the results
	$(IMGPIPE) demo

down:  ## stop everything `make up` started
	$(IMGPIPE) pipeline down
	$(IMGPIPE) stack down

status: ## show what is running
	$(IMGPIPE) stack status
	$(IMGPIPE) pipeline status

doctor:  ## version, endpoint and health of each dependency
	source <($(IMGPIPE) stack env) && $(IMGPIPE) doctor

test: setup lint chart-check  ## lint, the chart checks, then every other test (unit and integration, on a private test stack)
	$(PYTEST) -m "not chart"

# `make bench ONLY=remote-model` (or a comma-separated list of local-cpu, remote-model, null, callbacks,
# ingest) runs those parts alone and keeps the other parts' records in docs/bench/results.json.
ONLY ?=
bench: setup  ## every benchmark in one run (about 70 min; ONLY=part,... for some): writes docs/bench/ and the tables in docs/benchmarks.md
	$(VENV)/bin/python -m bench.suite $(if $(ONLY),--only $(ONLY))

test-unit: $(VENV)/.synced  ## fast tests only
	$(PYTEST) -m unit

test-integration: setup  ## tests against the real local stack
	$(PYTEST) -m integration

# Pinned helm, kubeconform, schemas and checkov under .cache/chart-tools (cold: a few minutes, mostly
# building helm; then instant), then the chart/skaffold/Dockerfile tests (docs/deploy.md, "Validation").
chart-check: $(VENV)/.synced  ## helm lint/template, Kubernetes schemas, checkov, skaffold schema, chart-code contracts
	$(VENV)/bin/python -m imgpipe.deploytools.toolchain
	$(PYTEST) -m chart

lint: $(VENV)/.synced  ## ruff, mypy and generated-code staleness
	$(VENV)/bin/ruff check services tests bench
	$(VENV)/bin/ruff format --check services tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m imgpipe.contracts.codegen --check

format: $(VENV)/.synced
	$(VENV)/bin/ruff format services tests bench
	$(VENV)/bin/ruff check --fix services tests bench

openapi: $(VENV)/.synced  ## rewrite schemas/openapi.json from the API's routes (tests fail when it is stale)
	$(IMGPIPE) openapi

proto: $(VENV)/.synced  ## regenerate Python code from proto/
	$(VENV)/bin/python -m imgpipe.contracts.codegen

proto-check: $(VENV)/.synced  ## fail when generated code is stale
	$(VENV)/bin/python -m imgpipe.contracts.codegen --check

proto-breaking: $(VENV)/.synced  ## fail on wire-breaking proto changes against main
	$(VENV)/bin/buf breaking --against '.git#branch=main'

clean: down  ## stop the stack and delete .cache/ (downloads, builds, data)
	rm -rf .cache $(VENV)
