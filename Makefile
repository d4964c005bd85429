# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: install system-deps demo test lint bench

$(BIN)/celery: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/celery

system-deps:
	.ci/system-deps

demo: install
	$(BIN)/celery -A host demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy .

test: lint system-deps
	$(BIN)/pytest

bench: install
	$(BIN)/python bench/throughput.py
