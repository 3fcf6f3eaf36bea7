# Deliberate developer commands. `make up` runs the gateway on the local vLLM-CPU backend;
# `make test` runs every test (unit + integration against the real backend).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install up test test-unit check bench backend-stop clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP)

## Set up + start the real vLLM-CPU backend (SmolLM2), then run the gateway on :8080.
up: $(STAMP)
	$(BIN)/deliberate up

## Every test: unit, then integration against a real vLLM-CPU server the tests start.
test: $(STAMP)
	$(BIN)/python -m pytest

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

## ruff (lint + format), mypy --strict, import contracts.
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python bench/overhead.py

backend-stop: $(STAMP)
	$(BIN)/deliberate backend stop

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
