"""The migration runner on real PostgreSQL: two repos in two databases, driven through the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from orchestrator import state_db
from tests.conftest import Result, run_cli, sessions, start_cli, wait_for, wait_for_session, with_dbname, write

REPOS = """apiVersion: orchestrator/v1
kind: Repo
metadata: {{name: app}}
spec:
  url: ${{APP_URL}}
  timeouts: {{lockTimeout: {lock_timeout}, lockWait: 30s}}
  retry: {{attempts: {attempts}, initialDelay: 100ms, maxDelay: 300ms}}
---
apiVersion: orchestrator/v1
kind: Repo
metadata: {{name: analytics}}
spec:
  url: ${{ANALYTICS_URL}}
"""


@dataclass
class Env:
    """Two repos in two databases; migrations kept as files or in the database (``state``)."""

    root: Path
    app: str
    analytics: str
    state: str = "files"

    @property
    def vars(self) -> dict[str, str]:
        return {"APP_URL": self.app, "ANALYTICS_URL": self.analytics, "ORCHESTRATOR_STATE": self.state}

    def cli(self, *args: str) -> Result:
        return run_cli(*args, cwd=self.root, env=self.vars)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return start_cli(*args, cwd=self.root, env=self.vars)

    def migration(
        self, version: int, up: str, down: str = "", *, repo: str = "app", name: str = "m", transaction: bool = True
    ) -> Path:
        flag = "" if transaction else " transaction:false"
        path = Path("priv") / repo / "migrations" / f"{version}_{name}.sql"
        self.put(path, f"-- migrate:up{flag}\n{up}\n-- migrate:down{flag}\n{down}\n", repo)
        return path

    def put(self, path: Path, text: str, repo: str = "app") -> None:
        """Write a migration where the runner reads it: a file, or a row of orchestrator.state_files."""
        if self.state == "files":
            write(self.root / path, text)
            return
        with psycopg.connect(self.app if repo == "app" else self.analytics, autocommit=True) as conn:
            state_db._ensure(conn)
            conn.execute(
                "INSERT INTO orchestrator.state_files (path, body) VALUES (%s, %s) ON CONFLICT (path) "
                "DO UPDATE SET body = EXCLUDED.body",
                (path.as_posix(), text),
            )

    def read(self, path: Path) -> str:
        if self.state == "files":
            return (self.root / path).read_text()
        with psycopg.connect(self.app) as conn:
            row = conn.execute("SELECT body FROM orchestrator.state_files WHERE path = %s", (path.as_posix(),))
            return str(row.fetchone()[0])  # type: ignore[index]

    def remove(self, path: Path) -> None:
        if self.state == "files":
            (self.root / path).unlink()
        else:
            with psycopg.connect(self.app, autocommit=True) as conn:
                conn.execute("DELETE FROM orchestrator.state_files WHERE path = %s", (path.as_posix(),))

    def query(self, text: str, url: str | None = None) -> list[tuple[object, ...]]:
        with psycopg.connect(url or self.app) as conn:
            return conn.execute(text.encode()).fetchall()


@pytest.fixture(params=["files", "database"])
def env(request: pytest.FixtureRequest, tmp_path: Path, server_url: str) -> Iterator[Env]:
    """The same runner tests on both state backends."""
    names = [f"orch_run_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    with psycopg.connect(server_url, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    write(tmp_path / "config" / "repos.yaml", REPOS.format(lock_timeout="5s", attempts=5))
    yield Env(tmp_path, with_dbname(server_url, names[0]), with_dbname(server_url, names[1]), request.param)
    with psycopg.connect(server_url, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def versions(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()]


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {str(r[0]) for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def test_migrate_status_rollback_migrate_on_two_repos(env: Env) -> None:
    env.migration(20260101000001, "CREATE TABLE accounts (id bigint PRIMARY KEY);", "DROP TABLE accounts;")
    env.migration(
        20260101000002, "ALTER TABLE accounts ADD COLUMN name text;", "ALTER TABLE accounts DROP COLUMN name;"
    )
    env.migration(20260101000001, "CREATE TABLE events (id bigint);", "DROP TABLE events;", repo="analytics")
    result = env.cli("migrate")
    assert result.code == 0, result.err
    assert "app: applied 20260101000002_m.sql" in result.out and "analytics: applied 20260101000001_m.sql" in result.out
    assert versions(env.app) == [20260101000001, 20260101000002] and versions(env.analytics) == [20260101000001]
    status = env.cli("status")
    assert status.code == 0 and "app: 2 applied, 0 pending" in status.out
    assert env.cli("rollback").code == 0
    assert versions(env.app) == [20260101000001] and versions(env.analytics) == []
    assert "name" not in str(
        env.query("SELECT column_name FROM information_schema.columns WHERE table_name = 'accounts'")
    )
    assert "events" not in tables(env.analytics)
    assert "app: 1 applied, 1 pending" in env.cli("status").out
    assert env.cli("migrate").code == 0
    assert versions(env.app) == [20260101000001, 20260101000002] and "events" in tables(env.analytics)
    rows = env.query(
        "SELECT version, name, checksum IS NOT NULL, duration_ms IS NOT NULL, inserted_at IS NOT NULL "
        "FROM schema_migrations ORDER BY 1"
    )
    assert rows == [(20260101000001, "m", True, True, True), (20260101000002, "m", True, True, True)]


def test_to_step_and_dry_run(env: Env) -> None:
    for i in (1, 2, 3):
        env.migration(20260101000000 + i, f"CREATE TABLE t{i} (id int);", f"DROP TABLE t{i};")
    dry = env.cli("migrate", "--repo", "app", "--dry-run")
    assert dry.code == 0
    assert dry.out.splitlines()[:2] == ["-- app: 20260101000001_m.sql (up)", "CREATE TABLE t1 (id int);"]
    assert "CREATE TABLE t3 (id int);" in dry.out
    assert "t1" not in tables(env.app)
    assert env.cli("migrate", "--repo", "app", "--step", "1").code == 0
    assert versions(env.app) == [20260101000001]
    assert env.cli("migrate", "--repo", "app", "--to", "20260101000002").code == 0
    assert versions(env.app) == [20260101000001, 20260101000002]
    assert env.cli("migrate", "--repo", "app").code == 0
    rollback_dry = env.cli("rollback", "--repo", "app", "--step", "2", "--dry-run")
    assert "DROP TABLE t3;" in rollback_dry.out and "DROP TABLE t2;" in rollback_dry.out
    assert len(versions(env.app)) == 3
    assert env.cli("rollback", "--repo", "app", "--to", "20260101000001").code == 0
    assert versions(env.app) == [20260101000001] and tables(env.app) >= {"t1"} and "t2" not in tables(env.app)
    assert env.cli("rollback", "--repo", "app", "--step", "1").code == 0
    assert versions(env.app) == []


def test_four_processes_apply_each_migration_exactly_once(env: Env) -> None:
    env.migration(20260101000001, "CREATE TABLE runs (version bigint);", "DROP TABLE runs;")
    for i in range(2, 7):
        env.migration(
            20260101000000 + i,
            f"INSERT INTO runs VALUES ({i}); SELECT pg_sleep(0.2);",  # noqa: S608 - a migration file's text
            f"DELETE FROM runs WHERE version = {i};",  # noqa: S608
        )
    procs = [env.popen("migrate", "--repo", "app") for _ in range(4)]
    outcomes = [(*p.communicate(timeout=120), p.returncode) for p in procs]
    assert all(code == 0 for _, _, code in outcomes), outcomes
    assert versions(env.app) == [20260101000000 + i for i in range(1, 7)]
    assert env.query("SELECT version, count(*) FROM runs GROUP BY 1 ORDER BY 1") == [(i, 1) for i in range(2, 7)]
    applied_lines = sum(out.count(": applied ") for out, _, _ in outcomes)
    assert applied_lines == 6


LOCK_WAIT = "wait_event_type = 'Lock' AND strpos(query, 'ALTER TABLE busy') > 0"
"""A runner session waiting for the blocker's lock on busy (a condition for conftest.sessions). A transactional
migration is sent as one query with its settings and record, so its statement is somewhere in the query text."""
IN_SLEEP = "state = 'active' AND xact_start IS NOT NULL AND strpos(query, 'SELECT pg_sleep(4)') > 0"
"""A runner session inside the long statement of a migration."""


def waiting_on(session: dict[str, Any]) -> tuple[object, object]:
    return session["pid"], session["query_start"]


def test_lock_timeout_is_retried_until_the_blocker_lets_go(env: Env) -> None:
    write(env.root / "config" / "repos.yaml", REPOS.format(lock_timeout="200ms", attempts=20))
    env.migration(20260101000001, "CREATE TABLE busy (id int);", "DROP TABLE busy;")
    assert env.cli("migrate", "--repo", "app").code == 0
    env.migration(20260101000002, "ALTER TABLE busy ADD COLUMN note text;", "ALTER TABLE busy DROP COLUMN note;")
    with psycopg.connect(env.app) as blocker:
        blocker.execute("LOCK TABLE busy IN ACCESS EXCLUSIVE MODE")
        proc = env.popen("migrate", "--repo", "app")
        # Let go only once an attempt has timed out (55P03): the runner was seen waiting for the lock, and that
        # wait ended while we still hold the lock, which nothing but its lock_timeout can do.
        waiting = wait_for_session(env.app, LOCK_WAIT, "the runner waiting for the lock on busy", process=proc)
        wait_for(
            lambda: not sessions(env.app, LOCK_WAIT + " AND pid = %s AND query_start = %s", waiting_on(waiting)),
            "the runner's first lock wait to time out",
        )
        blocker.commit()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "55P03" in out and "retrying" in out
    assert versions(env.app) == [20260101000001, 20260101000002]


def test_lock_timeout_gives_up_cleanly_after_the_attempts(env: Env) -> None:
    write(env.root / "config" / "repos.yaml", REPOS.format(lock_timeout="100ms", attempts=3))
    env.migration(20260101000001, "CREATE TABLE busy (id int);", "DROP TABLE busy;")
    assert env.cli("migrate", "--repo", "app").code == 0
    env.migration(20260101000002, "ALTER TABLE busy ADD COLUMN note text;", "ALTER TABLE busy DROP COLUMN note;")
    with psycopg.connect(env.app) as blocker:
        blocker.execute("LOCK TABLE busy IN ACCESS EXCLUSIVE MODE")
        result = env.cli("migrate", "--repo", "app")
    assert result.code == 1
    assert "app: gave up after 3 attempts: 55P03" in result.err
    assert result.out.count("retrying") == 2
    assert versions(env.app) == [20260101000001]
    # this database's advisory locks only: pg_locks shows the whole server, where other tests may hold theirs
    assert env.query(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ) == [(0,)]


def test_failing_statement_leaves_nothing_behind(env: Env) -> None:
    path = env.migration(
        20260101000001,
        "CREATE TABLE first (id int);\n\nINSERT INTO missing VALUES (1);\nCREATE TABLE third (id int);",
        "DROP TABLE first;",
    )
    result = env.cli("migrate", "--repo", "app")
    assert result.code == 1
    assert f"{path}:4: 42P01" in result.err
    assert 'relation "missing" does not exist' in result.err
    assert "statement: INSERT INTO missing VALUES (1)" in result.err
    assert "first" not in tables(env.app) and versions(env.app) == []


def test_kill_9_during_a_long_migration_then_rerun(env: Env) -> None:
    env.migration(
        20260101000001,
        "CREATE TABLE slow (id int);\nSELECT pg_sleep(4);\nINSERT INTO slow VALUES (1);",
        "DROP TABLE slow;",
    )
    proc = env.popen("migrate", "--repo", "app")
    wait_for_session(env.app, IN_SLEEP, "the runner inside the migration's pg_sleep(4)", process=proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = env.cli("migrate", "--repo", "app")
    assert result.code == 0, result.err
    assert versions(env.app) == [20260101000001]
    assert env.query("SELECT count(*) FROM slow") == [(1,)]


def test_kill_9_during_a_non_transactional_migration_resumes(env: Env) -> None:
    env.migration(
        20260101000001,
        "CREATE TABLE part_one (id int);\nSELECT pg_sleep(4);\nCREATE TABLE part_two (id int);",
        "DROP TABLE part_two;\nDROP TABLE part_one;",
        transaction=False,
    )
    proc = env.popen("migrate", "--repo", "app")
    wait_for_session(env.app, IN_SLEEP, "the runner inside the migration's pg_sleep(4)", process=proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert "part_one" in tables(env.app) and versions(env.app) == []
    result = env.cli("migrate", "--repo", "app")
    assert result.code == 0, result.err
    assert "resuming 20260101000001_m.sql at statement 2 of 3" in result.out
    assert {"part_one", "part_two"} <= tables(env.app) and versions(env.app) == [20260101000001]
    assert env.query("SELECT count(*) FROM orchestrator.progress") == [(0,)]


def test_invalid_concurrent_index_is_dropped_before_the_retry(env: Env) -> None:
    env.migration(20260101000001, "CREATE TABLE dup (v int);\nINSERT INTO dup VALUES (1), (1);", "DROP TABLE dup;")
    env.migration(
        20260101000002,
        "CREATE UNIQUE INDEX CONCURRENTLY dup_v_index ON dup (v);",
        "DROP INDEX CONCURRENTLY dup_v_index;",
        transaction=False,
    )
    failed = env.cli("migrate", "--repo", "app")
    assert failed.code == 1 and "23505" in failed.err
    assert env.query("SELECT indisvalid FROM pg_index WHERE indexrelid = 'dup_v_index'::regclass") == [(False,)]
    with psycopg.connect(env.app, autocommit=True) as conn:
        conn.execute("DELETE FROM dup WHERE ctid = (SELECT max(ctid) FROM dup)")
    result = env.cli("migrate", "--repo", "app")
    assert result.code == 0, result.err
    assert env.query("SELECT indisvalid FROM pg_index WHERE indexrelid = 'dup_v_index'::regclass") == [(True,)]
    assert env.cli("rollback", "--repo", "app").code == 0
    assert env.query("SELECT to_regclass('dup_v_index') IS NULL") == [(True,)]


def test_rollback_works_after_the_file_is_gone(env: Env) -> None:
    path = env.migration(20260101000001, "CREATE TABLE gone (id int);", "DROP TABLE gone;")
    assert env.cli("migrate", "--repo", "app").code == 0
    env.remove(path)
    status = env.cli("status", "--repo", "app")
    assert "file missing" in status.out
    result = env.cli("rollback", "--repo", "app")
    assert result.code == 0, result.err
    assert "gone" not in tables(env.app) and versions(env.app) == []


def test_edited_file_blocks_migrate_until_repaired(env: Env) -> None:
    path = env.migration(20260101000001, "CREATE TABLE e (id int);", "DROP TABLE e;")
    assert env.cli("migrate", "--repo", "app").code == 0
    env.put(path, env.read(path).replace("DROP TABLE e;", "DROP TABLE IF EXISTS e;"))
    env.migration(20260101000002, "CREATE TABLE f (id int);", "DROP TABLE f;")
    status = env.cli("status", "--repo", "app")
    assert status.code == 1 and "edited       20260101000001_m" in status.out
    blocked = env.cli("migrate", "--repo", "app")
    assert blocked.code == 1 and "20260101000001_m.sql" in blocked.err and "repair" in blocked.err
    assert "f" not in tables(env.app)
    assert env.cli("repair", "--repo", "app").code == 0
    assert env.cli("migrate", "--repo", "app").code == 0 and "f" in tables(env.app)
    assert env.cli("rollback", "--repo", "app", "--step", "2").code == 0  # the stored text is the new one
    assert versions(env.app) == []


def test_an_ecto_table_is_adopted(env: Env) -> None:
    with psycopg.connect(env.app, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_migrations (version bigint PRIMARY KEY, inserted_at timestamp(0))")
        conn.execute("INSERT INTO schema_migrations VALUES (20200101000000, now())")
    env.migration(20200101000000, "CREATE TABLE old (id int);", "DROP TABLE old;")
    env.migration(20260101000001, "CREATE TABLE new (id int);", "DROP TABLE new;")
    result = env.cli("migrate", "--repo", "app")
    assert result.code == 0, result.err
    assert "old" not in tables(env.app) and "new" in tables(env.app)
    assert versions(env.app) == [20200101000000, 20260101000001]


def test_older_pending_migration_applied_unless_strict(env: Env) -> None:
    env.migration(20260101000002, "CREATE TABLE later (id int);", "DROP TABLE later;")
    assert env.cli("migrate", "--repo", "app").code == 0
    env.migration(20260101000001, "CREATE TABLE earlier (id int);", "DROP TABLE earlier;")
    strict = env.cli("migrate", "--repo", "app", "--strict-version-order")
    assert strict.code == 1 and "older than the newest applied version 20260101000002" in strict.err
    assert env.cli("migrate", "--repo", "app").code == 0
    assert versions(env.app) == [20260101000001, 20260101000002]


def test_create_and_drop(env: Env, server_url: str) -> None:
    name = f"orch_create_{uuid.uuid4().hex[:8]}"
    url = with_dbname(server_url, name)
    env_vars = {"APP_URL": url, "ANALYTICS_URL": env.analytics}
    assert run_cli("create", "--repo", "app", cwd=env.root, env=env_vars).out == "app: created\n"
    assert run_cli("create", "--repo", "app", cwd=env.root, env=env_vars).out == "app: already exists\n"
    refused = run_cli("drop", "--repo", "app", cwd=env.root, env=env_vars)
    assert refused.code == 2 and "--force" in refused.err
    assert run_cli("drop", "--repo", "app", "--force", cwd=env.root, env=env_vars).out == "app: dropped\n"
    with psycopg.connect(server_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)).fetchone() == (0,)


def test_database_state_generates_once_across_processes(tmp_path: Path, database_url: str) -> None:
    """Two replicas generating at once under --state database: one migration, no files, then migrate."""
    from tests.harness import res

    env = {"APP_URL": database_url, "ORCHESTRATOR_STATE": "database"}
    write(
        tmp_path / "config/repo.yaml",
        "apiVersion: orchestrator/v1\nkind: Repo\nmetadata: {name: app}\nspec:\n  url: ${APP_URL}\n",
    )
    write(tmp_path / "config/things.yaml", res("thing", "things", "    - {name: id, type: bigint, primaryKey: true}\n"))
    base = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")} | env
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "generate-migrations"],
            cwd=tmp_path,
            env=base,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert sum("wrote priv/app/migrations/" in out for out, _ in outputs) == 1
    assert sum(out.startswith("No changes detected") for out, _ in outputs) == 2
    assert not (tmp_path / "priv").exists()
    with psycopg.connect(database_url) as conn:
        paths = [str(r[0]) for r in conn.execute("SELECT path FROM orchestrator.state_files ORDER BY 1")]
    assert len([p for p in paths if p.startswith("priv/app/migrations/")]) == 1
    assert any(p.startswith("priv/resource_snapshots/app/things/") for p in paths)
    assert run_cli("migrate", cwd=tmp_path, env=env).code == 0
    assert "things" in tables(database_url)
    assert run_cli("generate-migrations", "--check", cwd=tmp_path, env=env).code == 0
