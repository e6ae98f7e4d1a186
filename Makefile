# Two commands on a fresh machine:  `make up` starts trainq, `make test` runs the tests.
# torch is installed first and pinned, so that nothing pulls a different build of it afterwards;
# set TORCH_PIP_ARGS (for example --index-url https://download.pytorch.org/whl/cpu) to choose its build.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
TORCH_PIP_ARGS ?=

.PHONY: up test bench install

install: $(VENV)/.installed

ASSETS := trainq/service/assets

$(VENV)/.installed: pyproject.toml Makefile $(ASSETS)/package-lock.json
	cd $(ASSETS) && npm ci --no-audit --no-fund --loglevel=error   # the dashboard's chart library, from npm
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

up: install
	$(BIN)/trainq up

test: install
	$(BIN)/lint-imports --no-cache   # imports run one way (pyproject.toml, [tool.importlinter])
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/run_all.py
