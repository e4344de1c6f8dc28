# The two commands of the README: `make demo` runs the main job, `make test` runs the tests.
# Each creates the virtual environment .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/alphamill demo

test: $(STAMP)
	$(BIN)/ruff check alphamill tests benchmarks examples
	$(BIN)/python -m pytest -n 2 -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check alphamill tests benchmarks examples

clean:
	rm -rf $(VENV) .alphamill .pytest_cache
