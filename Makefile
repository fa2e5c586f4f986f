# The bundle's commands. Every target creates the environments it needs itself.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CLUSTER ?= local
BUILD ?= build
EXECUTOR ?=
PORT ?=
# Clusters served from this machine need the CPU backends and the local models.
MACHINE_CLUSTERS := local local-slurm

export PATH := $(CURDIR)/$(BIN):$(PATH)
.DEFAULT_GOAL := help

# The installer, backend environments, test services and deployment live in their own
# fragments; a fragment adds what `make test` needs to TEST_PREREQS.
TEST_PREREQS :=
include mk/installer.mk
include $(filter-out mk/installer.mk,$(wildcard mk/*.mk))

.PHONY: help venv check render lint typecheck test test-fast clean deploy stop status

help:
	@echo "make deploy [CLUSTER=name]   deploy the catalog (default: the local cluster, this machine)"
	@echo "make test                    lint, type-check and run every test tier"
	@echo "make test-fast               the tests that start no server, engine or scheduler"
	@echo "make check                   validate the whole catalog and every rendered config"
	@echo "make render [CLUSTER=name]   write one endpoint directory per enabled endpoint"

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml functions/pyproject.toml | $(UV)
	test -x $(BIN)/python || $(INSTALL_ENV) create $(VENV)
	$(INSTALL_ENV) install $(VENV) -- -e '.[dev]' -e functions
	touch $@

check: venv
	$(BIN)/bundle check

render: venv
	$(BIN)/bundle render --cluster $(CLUSTER) --out $(BUILD)/endpoints

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy $(wildcard inference_bundle functions/node_runtime tests inference_auth_token.py)

test-fast: lint typecheck
	$(BIN)/pytest -m 'not slow'

# The environments, models and packages build side by side with lint and types (about three
# minutes less from a fresh clone); the tests start once all of them are there.
test:
	$(MAKE) --no-print-directory -j3 lint typecheck $(TEST_PREREQS)
	$(BIN)/pytest

# What the deployment needs builds side by side too: the environments, then the models.
deploy:
	$(MAKE) --no-print-directory -j3 venv $(if $(filter $(MACHINE_CLUSTERS),$(CLUSTER)),local-models) \
		$(if $(filter local-slurm,$(CLUSTER)),slurm-start)
	$(BIN)/bundle deploy --cluster $(CLUSTER) $(if $(EXECUTOR),--executor $(EXECUTOR)) \
		$(if $(PORT),--port $(PORT)) $(if $(DRY_RUN),--dry-run)

stop: venv
	$(BIN)/bundle stop

status: venv
	$(BIN)/bundle status --cluster $(CLUSTER)

clean:
	rm -rf $(BUILD)
