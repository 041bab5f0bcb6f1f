# Two commands matter: `make run` (the example config on an embedded PostgreSQL) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= config

.PHONY: install run test soak lint fmt bench lock clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock requirements-dev.lock
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

# The daemon on the example manifests: generates their migrations, applies them to every repo and tenant,
# and serves status. With no database URL configured the embedded PostgreSQL (pgserver) is used; generated
# files and the database live under .orchestrator/run, so the working tree stays clean. Ctrl-C stops it.
RUN_ROOT ?= .orchestrator/run
run: install
	$(BIN)/orchestrator validate --config $(CONFIG)
	@mkdir -p $(RUN_ROOT)
	@echo "serving on http://127.0.0.1:8080/  (try: curl localhost:8080/status, curl localhost:8080/readyz)"
	$(BIN)/orchestrator serve --config $(CONFIG) --root $(RUN_ROOT) --interval 5s --listen 127.0.0.1:8080

# The whole suite against real PostgreSQL: $$ORCHESTRATOR_TEST_DATABASE_URL if set, else embedded.
test: install
	$(BIN)/pytest $(PYTEST_ARGS)

# The long version of the fault-injection tests (ORCHESTRATOR_SOAK=1): 20 kill -9s each of the runner and of
# the daemon, six PostgreSQL restarts, denser connection faults, half-open (frozen) connections and reset
# storms over 120-200 tenants, and thousands of fuzz examples. Prints the figures of each run (faults injected,
# connections abandoned, kills, restarts, consistency checks).
soak: install
	ORCHESTRATOR_SOAK=1 $(BIN)/pytest -s --timeout 1800 tests/test_faults.py tests/test_property_manifests.py tests/test_hostile.py $(PYTEST_ARGS)

# Benchmarks (not tests): ratios against a floor measured in the same run.
bench: install
	$(PY) bench/generate_bench.py
	$(PY) bench/tenants_bench.py
	$(PY) bench/daemon_bench.py

lint: install
	$(BIN)/ruff check orchestrator tests bench
	$(BIN)/ruff format --check orchestrator tests bench
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff format orchestrator tests bench
	$(BIN)/ruff check --fix orchestrator tests bench

# Re-pin after changing dependencies in pyproject.toml (review the diff).
lock:
	rm -rf /tmp/orchestrator-lock && python3 -m venv /tmp/orchestrator-lock
	/tmp/orchestrator-lock/bin/pip install --quiet -e .
	/tmp/orchestrator-lock/bin/pip freeze --exclude-editable

clean:
	rm -rf $(VENV) .orchestrator .pytest_cache .mypy_cache .ruff_cache
