# The two commands of the README: `make demo` runs the service, `make test` runs the tests.
# Both create .venv on a fresh machine (torch is pinned to the CPU build 2.13.0).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench-allocator bench-serve clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gpufair demo

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy allocator executor api gpufair

bench-allocator: $(STAMP)
	$(BIN)/gpufair bench allocator

bench-serve: $(STAMP)
	$(BIN)/gpufair bench serve

clean:
	rm -rf $(VENV) var/*.db
