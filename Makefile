# The two commands: `make train` (a CPU training run on the embedded counting set) and `make test`.
# Both create .venv on first use and install the package with its extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install data train test test-slow test-all lint bench clean-logs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,sweep,peers,tables,real]"
	touch $(STAMP)

install: $(STAMP)

data: install
	$(BIN)/tailsweep-generate counting --if-missing

train: data
	$(BIN)/tailsweep-train $(ARGS)

test: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks

bench: install
	$(BIN)/python benchmarks/run_all.py

clean-logs:
	rm -rf logs/train logs/eval logs/debug
