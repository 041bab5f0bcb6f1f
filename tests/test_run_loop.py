"""The one run loop (``orchestrator.migrations.loop``) as users meet it, on real PostgreSQL: how failures are
reported, what a retry re-runs, events in ``--json`` mode, ``repair --tenants`` under each tenant's lock, and
connection strings resolved without side effects."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from orchestrator import config, db
from orchestrator.migrations import locking
from tests.conftest import Result, run_cli, wait_for, write

REPO = """apiVersion: orchestrator/v1
kind: Repo
metadata: {{name: app}}
spec:
  url: ${{APP_URL}}
  {tenants}
  timeouts: {{lockTimeout: 1s, lockWait: {lock_wait}}}
  retry: {{attempts: 5, initialDelay: 50ms, maxDelay: 200ms}}
"""


def project(root: Path, *, tenants: str = "", lock_wait: str = "5s") -> None:
    write(root / "config/repo.yaml", REPO.format(tenants=tenants, lock_wait=lock_wait))


def migration(
    root: Path, version: int, up: str, down: str = "SELECT 1;", *, tenant: bool = False, flag: str = ""
) -> Path:
    folder = "tenant_migrations" if tenant else "migrations"
    return write(
        root / "priv/app" / folder / f"{version}_m{version % 100}.sql",
        f"-- migrate:up{flag}\n{up}\n-- migrate:down{flag}\n{down}\n",
    )


def cli(root: Path, url: str, *args: str) -> Result:
    return run_cli(*args, cwd=root, env={"APP_URL": url})


def test_a_permanent_error_is_reported_once_with_its_file_and_line_not_as_gave_up(
    tmp_path: Path, database_url: str
) -> None:
    project(tmp_path)
    migration(tmp_path, 20260101000001, "CREATE TABLE ok (id int);\nSELEC 1;")
    result = cli(tmp_path, database_url, "migrate")
    assert result.code == 1
    assert "gave up" not in result.err and "retrying" not in result.out
    assert "20260101000001_m1.sql:3: 42601" in result.err  # the line of the bad statement in the file
    as_json = cli(tmp_path, database_url, "migrate", "--json")
    failed = [json.loads(line) for line in as_json.err.splitlines() if '"target.failed"' in line]
    assert len(failed) == 1 and failed[0]["attempts"] == 1 and failed[0]["sqlstate"] == "42601"
    assert failed[0]["line"] == 3 and failed[0]["file"].endswith("20260101000001_m1.sql")
    assert failed[0]["level"] == "error" and failed[0]["repo"] == "app"
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('public.ok')").fetchone() == (None,)  # nothing kept


def test_a_permanent_database_error_outside_a_migration_is_not_retried(tmp_path: Path, database_url: str) -> None:
    """A role that may not create the bookkeeping table: 42501 is permanent, so one attempt, said as itself."""
    role = f"orch_limited_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
    try:
        project(tmp_path)
        migration(tmp_path, 20260101000001, "CREATE TABLE ok (id int);")
        result = cli(tmp_path, psycopg.conninfo.make_conninfo(database_url, user=role), "migrate")
        assert result.code == 1
        assert "gave up" not in result.err and "retrying" not in result.out
        assert "42501" in result.err and "permission denied" in result.err
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(sql.Identifier(role), sql.Identifier(role)))


def test_json_mode_logs_every_event_with_repo_and_version_bound(tmp_path: Path, database_url: str) -> None:
    project(tmp_path)
    migration(tmp_path, 20260101000001, "CREATE TABLE a (id int);", "DROP TABLE a;")
    migration(tmp_path, 20260101000002, "CREATE TABLE b (id int);", "DROP TABLE b;")
    result = cli(tmp_path, database_url, "migrate", "--json")
    assert result.code == 0
    assert json.loads(result.out)["repos"][0]["applied"] == ["20260101000001_m1.sql", "20260101000002_m2.sql"]
    done = [json.loads(line) for line in result.err.splitlines() if '"migration.done"' in line]
    assert [(e["repo"], e["version"], e["direction"]) for e in done] == [
        ("app", 20260101000001, "up"),
        ("app", 20260101000002, "up"),
    ]
    dry = cli(tmp_path, database_url, "rollback", "--dry-run", "--json")
    planned = [json.loads(line) for line in dry.err.splitlines() if '"migration.planned"' in line]
    assert planned and planned[0]["sql"] == ["DROP TABLE b;"]  # the dry run's SQL, through the same path


def test_an_invalid_concurrent_index_in_another_schema_is_dropped_before_the_retry(
    tmp_path: Path, database_url: str
) -> None:
    """A failed CREATE UNIQUE INDEX CONCURRENTLY on analytics.t leaves an INVALID index in analytics (not in
    the current schema); the next run must drop it there and build it again, not fail with 42P07."""
    project(tmp_path)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE SCHEMA analytics; CREATE TABLE analytics.t (a int); INSERT INTO analytics.t VALUES (1), (1)"
        )
    migration(
        tmp_path,
        20260101000001,
        "CREATE UNIQUE INDEX CONCURRENTLY t_a ON analytics.t (a);",
        "DROP INDEX CONCURRENTLY analytics.t_a;",
        flag=" transaction:false",
    )
    first = cli(tmp_path, database_url, "migrate")
    assert first.code == 1 and "23505" in first.err
    with psycopg.connect(database_url, autocommit=True) as conn:
        valid = (
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.oid = 'analytics.t_a'::regclass"
        )
        assert conn.execute(valid).fetchone() == (False,)  # what the failed build left behind
        conn.execute("DELETE FROM analytics.t WHERE ctid <> (SELECT min(ctid) FROM analytics.t)")
    second = cli(tmp_path, database_url, "migrate")
    assert second.code == 0, second.err
    with psycopg.connect(database_url) as conn:
        assert conn.execute(valid).fetchone() == (True,)
    back = cli(tmp_path, database_url, "rollback")
    assert back.code == 0, back.err
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('analytics.t_a')").fetchone() == (None,)


def test_repair_tenants_takes_each_tenants_lock(tmp_path: Path, database_url: str) -> None:
    project(tmp_path, tenants="tenants: {static: [t1, t2], createSchemas: true}", lock_wait="300ms")
    path = migration(tmp_path, 20260101000001, "CREATE TABLE x (id int);", "DROP TABLE x;", tenant=True)
    assert cli(tmp_path, database_url, "migrate", "--tenants").code == 0
    path.write_text(path.read_text() + "-- reviewed\n")
    key = locking.key(db.database_name(database_url), "t2")
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))  # another runner is working on t2
        blocked = cli(tmp_path, database_url, "repair", "--tenants", "--json")
    assert blocked.code == 1 and "t2" in blocked.err and "lock" in blocked.err
    status = json.loads(cli(tmp_path, database_url, "status", "--tenants", "--json").out)["repos"][0]["tenants"]
    assert {t["tenant"]: t["edited"] for t in status} == {"t1": [], "t2": [20260101000001]}  # t1 done, t2 not
    fixed = cli(tmp_path, database_url, "repair", "--tenants", "--json")
    assert fixed.code == 0 and json.loads(fixed.out)["repaired"] == ["t2:20260101000001"]
    assert cli(tmp_path, database_url, "migrate", "--tenants").code == 0


def test_resolving_a_connection_string_connects_to_nothing_and_creates_nothing(
    tmp_path: Path, server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    project(tmp_path)
    missing = psycopg.conninfo.make_conninfo(server_url, dbname="orch_never_created")
    monkeypatch.setenv("APP_URL", missing)
    repo = config.load(tmp_path / "config").repos[0]
    assert db.conninfo(repo, tmp_path) == missing
    with psycopg.connect(server_url) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = 'orch_never_created'").fetchone() is None


@pytest.mark.parametrize("table", ["orchestrator.state_files", "orchestrator.migrations"])
def test_bookkeeping_tables_created_by_a_concurrent_process_are_tolerated(database_url: str, table: str) -> None:
    """Two replicas starting at once both run CREATE TABLE IF NOT EXISTS: the second waits on the first's
    uncommitted catalog rows and then collides with them (23505), or, when the first commits between the
    second's two catalog checks, fails with 42710 'type "state_files" already exists' (seen once with three
    generate-migrations under --state database; both now tolerated, one list for every bookkeeping table).
    The waiting case is made deterministic by holding the first creator's transaction open."""
    from orchestrator import state_db
    from orchestrator.migrations import recorder

    ensure = state_db._ensure if table.endswith("state_files") else recorder.ensure_shared
    with psycopg.connect(database_url, autocommit=True) as first, psycopg.connect(database_url) as second:
        second.autocommit = True
        pid = second.info.backend_pid
        errors: list[BaseException] = []

        def run() -> None:
            try:
                ensure(second)
            except BaseException as error:  # reported by the assertion below
                errors.append(error)

        first.execute("CREATE SCHEMA IF NOT EXISTS orchestrator")
        with first.transaction():
            ensure(first)  # the whole set, uncommitted
            thread = threading.Thread(target=run)
            thread.start()
            wait_for(
                lambda: first.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'", (pid,)
                ).fetchone(),
                "the second creator waiting on the first's uncommitted table",
            )
        thread.join(timeout=60)
        assert not thread.is_alive() and errors == []
        row = second.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
        assert row == (True,)
