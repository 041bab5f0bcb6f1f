# Two commands matter: `make run` (the example config on an embedded PostgreSQL) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= config

.PHONY: install run test lint fmt lock clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock requirements-dev.lock
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

# Validate the example manifests and list each repo's tenants. With no database URL configured the
# embedded PostgreSQL (pgserver, data under .orchestrator/) is started on demand.
run: install
	$(BIN)/orchestrator validate --config $(CONFIG)
	$(BIN)/orchestrator tenants --config $(CONFIG)

# The whole suite against real PostgreSQL: $$ORCHESTRATOR_TEST_DATABASE_URL if set, else embedded.
test: install
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check orchestrator tests
	$(BIN)/ruff format --check orchestrator tests
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff format orchestrator tests
	$(BIN)/ruff check --fix orchestrator tests

# Re-pin after changing dependencies in pyproject.toml (review the diff).
lock:
	rm -rf /tmp/orchestrator-lock && python3 -m venv /tmp/orchestrator-lock
	/tmp/orchestrator-lock/bin/pip install --quiet -e .
	/tmp/orchestrator-lock/bin/pip freeze --exclude-editable

clean:
	rm -rf $(VENV) .orchestrator .pytest_cache .mypy_cache .ruff_cache
