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

.PHONY: help setup up demo down status doctor test bench test-unit test-integration chart-check image image-check lint format openapi proto proto-check proto-breaking clean

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

# The production image, built with podman (as root: `--runtime runc`, since crun fails on this host's
# hybrid cgroups). The Dockerfile's default base is the pinned public python:3.11.14-slim-bookworm;
# this machine reaches no container registry, so BASE_IMAGE defaults to a local Debian bookworm base
# that tools/image-base.sh makes with debootstrap (cold about 2 min, cached under .cache/image-base/).
# A real build: `make image BASE_IMAGE=python:3.11.14-slim-bookworm` (or docker build / skaffold,
# which leave the build argument at its default). See docs/deploy.md, "The image".
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
IMAGE ?= localhost/imgpipe:$(VERSION)
LOCAL_BASE_IMAGE := localhost/imgpipe-base:bookworm-py3.11
BASE_IMAGE ?= $(LOCAL_BASE_IMAGE)
# The CA bundle pip and uv trust during the build (this machine's egress proxy has its own CA): mounted
# read-only over the base's own bundle for the RUN steps only, so no layer keeps it (nor a mount
# point). BUILD_CA_BUNDLE= builds without it.
BUILD_CA_BUNDLE ?= $(SSL_CERT_FILE)
IMAGE_CA_BUNDLE := /etc/ssl/certs/ca-certificates.crt
BUILD_CA_ARGS := $(if $(BUILD_CA_BUNDLE),--volume $(abspath $(BUILD_CA_BUNDLE)):$(IMAGE_CA_BUNDLE):ro \
	--build-arg SSL_CERT_FILE=$(IMAGE_CA_BUNDLE) --build-arg PIP_CERT=$(IMAGE_CA_BUNDLE))
PODMAN_RUN := podman run --rm --no-healthcheck --runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024

image:  ## build the production image with podman (BASE_IMAGE=python:3.11.14-slim-bookworm: the public base)
	$(if $(filter $(LOCAL_BASE_IMAGE),$(BASE_IMAGE)),tools/image-base.sh $(BASE_IMAGE))
	podman build --format docker --runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
		--build-arg BASE_IMAGE=$(BASE_IMAGE) $(BUILD_CA_ARGS) -t $(IMAGE) -f Dockerfile .
	@podman image inspect --format 'built {{index .RepoTags 0}}: {{.Size}} bytes' $(IMAGE)

# What the chart relies on, checked in the built image: a numeric non-root user on a read-only root
# filesystem, `imgpipe` as entrypoint, no dev or bench dependency installed.
image-check:  ## run the built image read-only as its user: --version, --help, the uid, no dev/bench packages
	$(PODMAN_RUN) --read-only --user 10001:10001 $(IMAGE) --version
	$(PODMAN_RUN) --read-only --user 10001:10001 $(IMAGE) --help > /dev/null
	test "$$($(PODMAN_RUN) --read-only --entrypoint id $(IMAGE) -u)" = 10001
	$(PODMAN_RUN) --read-only --entrypoint python $(IMAGE) -c 'import imgpipe.cli, cv2, faust, confluent_kafka'
	for module in pytest ruff mypy schemathesis celery redis matplotlib psutil; do \
		if $(PODMAN_RUN) --read-only --entrypoint python $(IMAGE) -c "import $$module" 2> /dev/null; then \
			echo "image-check: $$module is installed in $(IMAGE)"; exit 1; fi; \
	done
	@echo "image-check: $(IMAGE) is fine"

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
