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
	$(PY) -m compileall -q orchestrator  # an editable install is not byte-compiled (pip compiles the image's)
	touch $(STAMP)

# The daemon on the example manifests: generates their migrations, applies the global ones to every repo, seeds
# the example organizations (config/app/seeds.sql: acme, globex, initech, so there are tenants from the first
# second), then serves: every tenant gets its schema and migrations, status on http://127.0.0.1:8080/. With no
# database URL configured the embedded PostgreSQL (pgserver) is used; generated files and the database live
# under .orchestrator/run, so the working tree stays clean. Ctrl-C stops it; the embedded server keeps running
# for the next command (make clean stops it).
RUN_ROOT ?= .orchestrator/run
SEEDS    ?= $(CONFIG)/app/seeds.sql
LISTEN   ?= 127.0.0.1:8080
run: install
	$(BIN)/orchestrator validate --config $(CONFIG)
	@mkdir -p $(RUN_ROOT)
	$(BIN)/orchestrator generate-migrations --config $(CONFIG) --root $(RUN_ROOT)
	$(BIN)/orchestrator migrate --config $(CONFIG) --root $(RUN_ROOT)
	$(if $(wildcard $(SEEDS)),$(PY) -m orchestrator.seed --config $(CONFIG) --root $(RUN_ROOT) --repo app $(SEEDS))
	@echo "serving on http://$(LISTEN)/  (try: curl $(LISTEN)/status, curl $(LISTEN)/readyz)"
	$(BIN)/orchestrator serve --config $(CONFIG) --root $(RUN_ROOT) --interval 5s --listen $(LISTEN)

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
	$(PY) bench/stall_bench.py
	$(PY) bench/drift_bench.py

lint: install
	$(BIN)/ruff check orchestrator tests bench
	$(BIN)/ruff format --check orchestrator tests bench
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff format orchestrator tests bench
	$(BIN)/ruff check --fix orchestrator tests bench

# Re-pin after changing dependencies in pyproject.toml (review the diff): prints the image's set
# (deploy/requirements.lock, no pgserver), then the development set with the embedded extra (requirements.lock).
lock:
	rm -rf /tmp/orchestrator-lock && python3 -m venv /tmp/orchestrator-lock
	/tmp/orchestrator-lock/bin/pip install --quiet -e .
	@echo "# ---- deploy/requirements.lock"
	/tmp/orchestrator-lock/bin/pip freeze --exclude-editable
	/tmp/orchestrator-lock/bin/pip install --quiet -e '.[embedded]'
	@echo "# ---- requirements.lock"
	/tmp/orchestrator-lock/bin/pip freeze --exclude-editable

# Stops the embedded PostgreSQL servers whose data lies under .orchestrator/ before deleting it (a deleted data
# directory does not stop its postmaster; pg_ctl comes with pgserver in .venv). Never fails: no .venv, no server.
clean:
	-@if [ -x $(PY) ]; then $(PY) -m orchestrator.embedded stop .orchestrator; fi
	rm -rf $(VENV) .orchestrator .pytest_cache .mypy_cache .ruff_cache
