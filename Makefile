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

# The suite as two pytest sessions at once, both of which must pass: the tests marked
# `background` (long, and waiting most of the time) beside the rest, whose log is printed
# after its own. The suite waits far more than it computes; `pytest` alone runs it all in one.
test: lint system-deps
	@$(BIN)/pytest -p no:cacheprovider -m 'background and not known_gap' \
		> .pytest-background.log 2>&1 & background=$$!; \
	$(BIN)/pytest -m 'not background and not known_gap' tests/unit tests/integration tests/e2e; \
	main=$$?; wait $$background; rest=$$?; \
	echo "--- the background session (tests marked background), exit $$rest:"; \
	cat .pytest-background.log; \
	exit $$(( main != 0 || rest != 0 ))

bench: install
	$(BIN)/python bench/throughput.py
