# The two commands a newcomer needs: `make demo` and `make test`.
# Everything installs from the lock: uv.lock for host and its tools (made by `make lock`),
# requirements/uv.txt for uv itself. A fresh machine gets exactly what CI got.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TOOLS   = .tools
UV      = $(TOOLS)/bin/uv
# uv uses the Python it is given, never one it downloads; the environment it fills is $(VENV).
export UV_PYTHON_DOWNLOADS = never
export UV_PROJECT_ENVIRONMENT = $(VENV)

.PHONY: install system-deps demo test lint lock lock-check bench nemesis

$(UV): requirements/uv.txt
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --require-hashes -r requirements/uv.txt
	touch $@

$(BIN)/celery: $(UV) pyproject.toml uv.lock
	$(UV) sync --locked --extra dev --python $(PYTHON) --quiet
	touch $@

install: $(BIN)/celery

# Updates uv.lock to the newest releases that pyproject.toml's ranges allow, then installs it.
lock: $(UV)
	$(UV) lock --upgrade --python $(PYTHON)
	$(UV) sync --locked --extra dev --python $(PYTHON)

# Fails when pyproject.toml and uv.lock disagree (a range changed, the lock not remade).
lock-check: $(UV)
	$(UV) lock --check --python $(PYTHON)

system-deps:
	.ci/system-deps

demo: install
	$(BIN)/celery -A host demo

lint: install lock-check
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

# Faults at random against the whole fleet, every promise checked (docs/operations.md).
MINUTES ?= 10
SEED ?= 1
nemesis: install system-deps
	$(BIN)/python -m tests.nemesis --seed $(SEED) --minutes $(MINUTES)
