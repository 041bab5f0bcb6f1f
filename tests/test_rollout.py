"""Tenant rollouts on real PostgreSQL: isolation of failures, canaries, maxFailures, retry of failed tenants,
new tenants, concurrent runners, and the bulk no-op."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.conftest import Result, columns, run_cli, write

REPO = """apiVersion: orchestrator/v1
kind: Repo
metadata: {{name: app}}
spec:
  url: ${{APP_URL}}
  tenants: {tenants}
  rollout: {rollout}
  timeouts: {{lockTimeout: 300ms, lockWait: 60s}}
  retry: {{attempts: 3, initialDelay: 50ms, maxDelay: 200ms}}
"""
TASKS = """apiVersion: orchestrator/v1
kind: Resource
metadata: {name: task}
spec:
  repo: app
  table: tasks
  multitenancy: {strategy: context}
  attributes:
    - {name: id, type: bigint, primaryKey: true}
    - {name: title, type: text}
"""


class Fleet:
    def __init__(self, root: Path, url: str) -> None:
        self.root, self.url = root, url

    def configure(self, tenants: str, rollout: str = "{concurrency: 4}") -> None:
        write(self.root / "config/repo.yaml", REPO.format(tenants=tenants, rollout=rollout))
        write(self.root / "config/tasks.yaml", TASKS)

    def cli(self, *args: str) -> Result:
        return run_cli(*args, cwd=self.root, env={"APP_URL": self.url})

    def sql(self, text: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cursor = conn.execute(text.encode())
            return cursor.fetchall() if cursor.description else []

    def migrated(self, tenants: list[str]) -> dict[str, int]:
        found = {}
        for tenant in tenants:
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(tenant, "schema_migrations"))
            with psycopg.connect(self.url) as conn:
                row = conn.execute(query).fetchone() if self.has(tenant) else (0,)
            found[tenant] = int(row[0]) if row else 0
        return found

    def has(self, tenant: str) -> bool:
        with psycopg.connect(self.url) as conn:
            row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{tenant}".schema_migrations',)).fetchone()
        return bool(row and row[0])


@pytest.fixture
def fleet(tmp_path: Path, database_url: str) -> Fleet:
    return Fleet(tmp_path, database_url)


def names(count: int) -> list[str]:
    return [f"t{i:03d}" for i in range(count)]


def static(tenants: list[str]) -> str:
    return "{static: [" + ", ".join(tenants) + "], createSchemas: true}"


def test_one_broken_tenant_of_fifty_is_isolated_then_retried(fleet: Fleet) -> None:
    tenants = names(50)
    fleet.configure(static(tenants))
    assert fleet.cli("generate-migrations").code == 0
    fleet.sql("CREATE SCHEMA t017; CREATE TABLE t017.tasks (conflict int)")  # made by hand: the migration fails there
    result = fleet.cli("migrate", "--tenants")
    assert result.code == 1
    assert "app: 50 tenants: 1 failed, 49 migrated" in result.out
    assert "t017" in result.out and "42P07" in result.out and 'relation "tasks" already exists' in result.out
    counts = fleet.migrated(tenants)
    assert counts.pop("t017") == 0 and set(counts.values()) == {1}
    status = fleet.cli("status", "--tenants")
    assert status.code == 1 and "49 up to date, 1 behind, 1 failed in their last rollout" in status.out
    assert "t017: 0 applied, 1 pending  last error: priv/app/tenant_migrations/" in status.out
    assert ':4: 42P07 relation "tasks" already exists' in status.out
    fleet.sql("DROP TABLE t017.tasks")
    retried = fleet.cli("migrate", "--tenants", "--retry-failed", "--json")
    assert retried.code == 0, retried.err
    report = json.loads(retried.out)["repos"][0]["tenants"]
    assert [(t["tenant"], t["status"]) for t in report if t["status"] == "migrated"] == [("t017", "migrated")]
    assert set(fleet.migrated(tenants).values()) == {1}
    assert fleet.cli("status", "--tenants").code == 0


def test_failing_canary_stops_the_rollout_before_any_other_tenant(fleet: Fleet) -> None:
    tenants = names(10)
    fleet.configure(static(tenants), "{concurrency: 4, canary: [t005]}")
    assert fleet.cli("generate-migrations").code == 0
    fleet.sql("CREATE SCHEMA t005; CREATE TABLE t005.tasks (conflict int)")
    result = fleet.cli("migrate", "--tenants", "--json")
    assert result.code == 1
    statuses = {t["tenant"]: t["status"] for t in json.loads(result.out)["repos"][0]["tenants"]}
    assert statuses.pop("t005") == "failed" and set(statuses.values()) == {"skipped"}
    assert not any(fleet.has(t) for t in tenants if t != "t005")


def test_max_failures_stops_starting_new_tenants(fleet: Fleet) -> None:
    tenants = names(12)
    fleet.configure(static(tenants), "{concurrency: 1, maxFailures: 2}")
    assert fleet.cli("generate-migrations").code == 0
    for broken in ("t001", "t002"):
        fleet.sql(f"CREATE SCHEMA {broken}; CREATE TABLE {broken}.tasks (conflict int)")
    result = fleet.cli("migrate", "--tenants", "--json")
    assert result.code == 1
    statuses = [t["status"] for t in json.loads(result.out)["repos"][0]["tenants"]]
    assert statuses[:3] == ["migrated", "failed", "failed"] and set(statuses[3:]) == {"skipped"}


def test_missing_schema_is_that_tenants_failure_unless_created(fleet: Fleet) -> None:
    fleet.configure("{static: [present, absent]}")
    fleet.sql("CREATE SCHEMA present")
    assert fleet.cli("generate-migrations").code == 0
    result = fleet.cli("migrate", "--tenants")
    assert result.code == 1 and "schema absent does not exist" in result.out
    assert fleet.has("present")
    fleet.configure("{static: [present, absent], createSchemas: true}")
    assert fleet.cli("migrate", "--tenants").code == 0 and fleet.has("absent")


def test_a_new_tenant_in_the_registry_is_the_only_one_touched(fleet: Fleet) -> None:
    fleet.sql("CREATE TABLE registry (name text); INSERT INTO registry SELECT 'org_' || g FROM generate_series(1, 5) g")
    fleet.configure("{query: 'SELECT name FROM registry ORDER BY 1', createSchemas: true}")
    assert fleet.cli("generate-migrations").code == 0
    assert fleet.cli("migrate", "--tenants").code == 0
    fleet.sql("INSERT INTO registry VALUES ('org_new')")
    result = fleet.cli("migrate", "--tenants", "--json")
    assert result.code == 0
    touched = [t["tenant"] for t in json.loads(result.out)["repos"][0]["tenants"] if t["status"] == "migrated"]
    assert touched == ["org_new"]


def test_three_processes_over_a_hundred_tenants(fleet: Fleet) -> None:
    tenants = names(100)
    fleet.configure(static(tenants), "{concurrency: 3}")
    assert fleet.cli("generate-migrations").code == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")} | {"APP_URL": fleet.url}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "migrate", "--tenants", "--json"],
            cwd=fleet.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-500:] for _, err in outputs]
    migrated = [
        t["tenant"] for out, _ in outputs for t in json.loads(out)["repos"][0]["tenants"] if t["status"] == "migrated"
    ]
    assert sorted(migrated) == tenants  # each tenant migrated by exactly one process
    assert set(fleet.migrated(tenants).values()) == {1}


def test_a_locked_tenant_is_retried_and_the_others_finish(fleet: Fleet) -> None:
    tenants = names(6)
    fleet.configure(static(tenants))
    assert fleet.cli("generate-migrations", "--name", "init").code == 0
    assert fleet.cli("migrate", "--tenants").code == 0
    write(fleet.root / "config/tasks.yaml", TASKS + "    - {name: done, type: boolean}\n")
    assert fleet.cli("generate-migrations", "--name", "add_done").code == 0
    with psycopg.connect(fleet.url) as blocker:
        blocker.execute("LOCK TABLE t003.tasks IN ACCESS EXCLUSIVE MODE")
        result = fleet.cli("migrate", "--tenants", "--json")
    assert result.code == 1
    report = {t["tenant"]: t for t in json.loads(result.out)["repos"][0]["tenants"]}
    assert report["t003"]["status"] == "failed" and report["t003"]["attempts"] == 3
    assert "55P03" in report["t003"]["error"]
    assert all(report[t]["status"] == "migrated" for t in tenants if t != "t003")
    assert fleet.cli("migrate", "--tenants", "--retry-failed").code == 0


def test_rollback_and_dry_run_for_tenants(fleet: Fleet) -> None:
    tenants = names(3)
    fleet.configure(static(tenants))
    assert fleet.cli("generate-migrations").code == 0
    dry = fleet.cli("migrate", "--tenants", "--dry-run")
    assert dry.code == 0 and 'SET search_path TO "t000", public;' in dry.out and 'CREATE TABLE "tasks"' in dry.out
    assert not fleet.has("t000")
    assert fleet.cli("migrate", "--tenants").code == 0
    rolled = fleet.cli("rollback", "--tenants", "--except-tenants", "t001")
    assert rolled.code == 0 and "2 rolled back" in rolled.out
    assert fleet.migrated(tenants) == {"t000": 0, "t001": 1, "t002": 0}
    assert fleet.sql("SELECT to_regclass('t000.tasks') IS NULL, to_regclass('t001.tasks') IS NULL") == [(True, False)]


def test_unknown_only_tenant_is_bad_input(fleet: Fleet) -> None:
    fleet.configure(static(names(2)))
    assert fleet.cli("generate-migrations").code == 0
    result = fleet.cli("migrate", "--tenants", "--only-tenants", "t000,nope")
    assert result.code == 2 and "does not list: nope" in result.err


def _counting(original: Any, queries: list[str]) -> Any:
    """Wrap ``db.open_connection`` so every statement sent on the connections it opens is counted."""

    def connect(info: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] = original(info, autocommit=autocommit)
        execute = conn.execute

        def counted(query: Any, params: Any = None, **kwargs: Any) -> Any:
            queries.append(str(query)[:60])
            return execute(query, params, **kwargs)

        conn.execute = counted  # type: ignore[method-assign]
        return conn

    return connect


def test_no_op_costs_the_same_few_queries_for_any_number_of_tenants(fleet: Fleet) -> None:
    from orchestrator import config, db
    from orchestrator.migrations import rollout, runner

    counts = []
    for count in (20, 60):
        tenants = names(count)
        fleet.configure(static(tenants))
        if count == 20:
            assert fleet.cli("generate-migrations").code == 0
        assert fleet.cli("migrate", "--tenants").code == 0
        cfg = config.load(fleet.root / "config", base=fleet.root)
        repo = cfg.repos[0]
        run = runner.Runner(cfg, fleet.root)
        queries: list[str] = []
        original = db.open_connection
        db.open_connection = _counting(original, queries)
        try:
            os.environ["APP_URL"] = fleet.url
            results = run.tenant_rollout(repo).run(rollout.Options())
        finally:
            db.open_connection = original
            os.environ.pop("APP_URL")
        assert {r.status for r in results} == {"up to date"} and len(results) == count
        counts.append(len(queries))
    assert counts[0] == counts[1] and counts[0] <= 12, counts


# -- regressions found in review ------------------------------------------------------------------------------


def test_the_first_failing_canary_stops_the_other_canaries(fleet: Fleet) -> None:
    fleet.configure(static(names(4)), "{concurrency: 2, canary: [t000, t001]}")
    assert fleet.cli("generate-migrations").code == 0
    fleet.sql("CREATE SCHEMA t000; CREATE TABLE t000.tasks (conflict int)")
    result = fleet.cli("migrate", "--tenants", "--json")
    statuses = {t["tenant"]: t["status"] for t in json.loads(result.out)["repos"][0]["tenants"]}
    assert statuses == {"t000": "failed", "t001": "skipped", "t002": "skipped", "t003": "skipped"}
    assert not fleet.has("t001")


def test_edited_tenant_migration_is_shown_and_repaired(fleet: Fleet) -> None:
    fleet.configure(static(names(2)))
    assert fleet.cli("generate-migrations").code == 0
    assert fleet.cli("migrate", "--tenants").code == 0
    path = next((fleet.root / "priv/app/tenant_migrations").glob("*.sql"))
    path.write_text(path.read_text() + "\n-- a reviewed comment\n")
    blocked = fleet.cli("migrate", "--tenants")
    assert blocked.code == 1 and "repair" in blocked.out
    status = fleet.cli("status", "--tenants")
    assert status.code == 1 and "2 failed in their last rollout, 2 with edited migrations" in status.out
    assert fleet.cli("repair", "--tenants").code == 0
    assert fleet.cli("migrate", "--tenants").code == 0
    assert fleet.cli("status", "--tenants").code == 0


def test_tenant_flags_without_tenants_are_refused(fleet: Fleet) -> None:
    fleet.configure(static(names(1)))
    assert fleet.cli("rollback", "--only-tenants", "t000").code == 2
    assert fleet.cli("migrate", "--except-tenants", "t000").code == 2


def test_an_unparsable_url_is_a_located_error_without_the_password(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, "postgresql://app:Pa55%zzWord@127.0.0.1/app")
    fleet.configure(static(names(1)))
    for command in (("migrate",), ("status", "--tenants"), ("migrate", "--tenants")):
        result = fleet.cli(*command)
        assert result.code == 2 and "spec.url: the database URL cannot be parsed" in result.err
        assert "Pa55" not in result.out + result.err


def test_a_canary_left_out_of_a_run_holds_every_other_tenant_at_its_version(fleet: Fleet) -> None:
    """The canary is behind on the second migration and not in this run (--except-tenants, as the daemon
    leaves out a tenant waiting for its retry): no other tenant gets that migration, a new tenant gets the
    first one only, and all of them finish once the canary has it."""
    fleet.configure(static(["t000", "t001", "t002"]), "{concurrency: 2, canary: [t000]}")
    assert fleet.cli("generate-migrations").code == 0
    assert fleet.cli("migrate", "--tenants").code == 0
    write(fleet.root / "config/tasks.yaml", TASKS + "    - {name: done, type: boolean}\n")
    assert fleet.cli("generate-migrations", "--name", "add_done").code == 0
    fleet.sql("ALTER TABLE t000.tasks ADD COLUMN done int")  # the canary's copy conflicts: it fails there
    first = fleet.cli("migrate", "--tenants", "--json")
    statuses = {t["tenant"]: t["status"] for t in json.loads(first.out)["repos"][0]["tenants"]}
    assert first.code == 1 and statuses == {"t000": "failed", "t001": "skipped", "t002": "skipped"}
    fleet.configure(static(["t000", "t001", "t002", "t003"]), "{concurrency: 2, canary: [t000]}")
    write(fleet.root / "config/tasks.yaml", TASKS + "    - {name: done, type: boolean}\n")
    held = fleet.cli("migrate", "--tenants", "--except-tenants", "t000", "--json")
    report = {t["tenant"]: t for t in json.loads(held.out)["repos"][0]["tenants"]}
    assert held.code == 1 and {t: r["status"] for t, r in report.items()} == {
        "t001": "held",
        "t002": "held",
        "t003": "held",
    }
    assert all("canary t000" in r["error"] for r in report.values())
    for tenant in ("t001", "t002"):
        assert columns(fleet.url, tenant, "tasks") == ["id", "title"]
    assert columns(fleet.url, "t003", "tasks") == ["id", "title"], "the new tenant gets what the canary has"
    fleet.sql("ALTER TABLE t000.tasks DROP COLUMN done")
    assert fleet.cli("migrate", "--tenants").code == 0
    for tenant in ("t000", "t001", "t002", "t003"):
        assert columns(fleet.url, tenant, "tasks") == ["id", "title", "done"]


def test_a_canary_that_cannot_be_planned_holds_every_other_tenant(fleet: Fleet) -> None:
    """The canary's schema has another tool's ``schema_migrations`` (dbmate's): nothing it would run is known to
    work, so no other tenant is migrated, though the canary never ran and so never failed in the fan-out."""
    fleet.configure(static(["t000", "t001", "t002"]), "{concurrency: 2, canary: [t000]}")
    assert fleet.cli("generate-migrations").code == 0
    fleet.sql("CREATE SCHEMA t000; CREATE TABLE t000.schema_migrations (version varchar(128) PRIMARY KEY)")
    result = fleet.cli("migrate", "--tenants", "--json")
    statuses = {t["tenant"]: t["status"] for t in json.loads(result.out)["repos"][0]["tenants"]}
    assert result.code == 1 and statuses == {"t000": "failed", "t001": "held", "t002": "held"}
    assert columns(fleet.url, "t001", "tasks") == [] and columns(fleet.url, "t002", "tasks") == []
