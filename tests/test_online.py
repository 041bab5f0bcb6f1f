"""Online-safe migrations on tables that hold rows, on real PostgreSQL: the generated steps run through the real
CLI and the daemon, across tenants, survive a ``kill -9`` in the middle of a VALIDATE or of a concurrent index
build, and roll back to exactly the previous catalog.

Every check reads the live catalog: ``catalog.unfinished`` lists constraints still NOT VALID, INVALID indexes and
helper checks left behind; ``catalog.assert_matches`` compares each schema with the manifests.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from orchestrator import config
from tests import catalog, squawk
from tests.conftest import Result, run_cli, start_cli, wait_for, wait_for_session, write
from tests.harness import res
from tests.test_daemon import Daemon

TENANTS = ("t1", "t2", "t3")
REPO = (
    "apiVersion: orchestrator/v1\nkind: Repo\nmetadata: {name: app}\nspec:\n  url: ${APP_URL}\n"
    f"  tenants: {{static: [{', '.join(TENANTS)}], createSchemas: true}}\n"
    "  timeouts: {lockTimeout: 60s}\n"
)
ORGS = res("org", "orgs", "    - {name: id, type: bigint, primaryKey: true}\n    - {name: name, type: text}\n")
CONTEXT = "  multitenancy: {strategy: context}\n"
BASE = (
    "    - {name: id, type: bigint, primaryKey: true}\n"
    "    - {name: title, type: text}\n"
    "    - {name: n, type: integer}\n"
    "    - {name: org_id, type: bigint}\n"
    "    - {name: created_at, type: timestamptz, defaultSql: now()}\n"
)
EVOLVED = (
    "    - {name: id, type: bigint, primaryKey: true}\n"
    "    - {name: title, type: text, allowNull: false}\n"
    "    - {name: n, type: integer}\n"
    "    - {name: org_id, type: bigint, references: {resource: org, index: true}}\n"
    "    - {name: created_at, type: timestamptz, defaultSql: now()}\n"
)
EVOLUTION = (
    "  identities:\n    - {name: title, keys: [title]}\n"
    "  indexes:\n    - {fields: [created_at]}\n"
    '  checkConstraints:\n    - {name: n_positive, check: "n >= 0"}\n'
)


@dataclass
class Project:
    root: Path
    url: str

    def cli(self, *args: str) -> Result:
        return run_cli(*args, cwd=self.root, env={"APP_URL": self.url}, timeout=180)

    def ok(self, *args: str) -> Result:
        result = self.cli(*args)
        assert result.code == 0, f"{args}: {result.out}{result.err}"
        return result

    def tables(self, *resources: str) -> None:
        for old in (self.root / "config").glob("r*.yaml"):
            old.unlink()
        write(self.root / "config/repo.yaml", REPO)
        for i, text in enumerate(resources):
            write(self.root / f"config/r{i}.yaml", text)

    def generate(self) -> list[dict[str, Any]]:
        migrations: list[dict[str, Any]] = json.loads(self.ok("generate-migrations", "--json").out)["migrations"]
        return migrations

    def execute(self, text: str) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(text.encode())

    def schemas(self, *names: str) -> dict[str, dict[str, catalog.CatalogTable]]:
        with psycopg.connect(self.url) as conn:
            return {name: catalog.read_schema(conn, name) for name in names}

    def unfinished(self, *names: str) -> list[str]:
        with psycopg.connect(self.url) as conn:
            return catalog.unfinished(conn, list(names))

    def matches_manifests(self) -> None:
        cfg = config.load(self.root / "config", base=self.root)
        with psycopg.connect(self.url) as conn:
            catalog.assert_matches(conn, [t for t in cfg.tables if not t.is_tenant], "public")
            for tenant in TENANTS:
                catalog.assert_matches(conn, [t for t in cfg.tables if t.is_tenant], tenant)


def steps(migrations: list[dict[str, Any]], scope: str) -> list[str]:
    """The step suffixes of one scope's generated files: '' for the main one, then _concurrently, _validate..."""
    return [Path(m["path"]).stem[15:].removeprefix("migrate_resources") for m in migrations if m["scope"] == scope]


def fill_tenants(project: Project, rows: int = 200) -> None:
    project.execute("INSERT INTO orgs (id, name) VALUES (1, 'acme')")
    for tenant in TENANTS:
        statement = sql.SQL(
            "INSERT INTO {} (id, title, n, org_id) SELECT g, 'task ' || g, g, 1 FROM generate_series(1, {}) g"
        )
        project.execute(statement.format(sql.Identifier(tenant, "tasks"), rows).as_string(None))


def test_the_evolution_of_a_tenant_table_across_tenants_and_back(tmp_path: Path, database_url: str) -> None:
    project = Project(tmp_path, database_url)
    project.tables(ORGS, res("task", "tasks", BASE, CONTEXT))
    project.generate()
    project.ok("migrate")
    project.ok("migrate", "--tenants")
    fill_tenants(project)
    before = project.schemas(*TENANTS)

    project.tables(ORGS, res("task", "tasks", EVOLVED, CONTEXT + EVOLUTION))
    generated = project.generate()
    assert steps(generated, "global") == []
    assert steps(generated, "tenant") == ["", "_concurrently", "_concurrently", "_concurrently", "_validate"]
    project.ok("migrate")
    rollout = project.ok("migrate", "--tenants", "--json")
    tenants = {t["tenant"]: t for r in json.loads(rollout.out)["repos"] for t in r["tenants"]}
    assert {name: (t["status"], len(t["applied"])) for name, t in tenants.items()} == {
        name: ("migrated", 5) for name in TENANTS
    }
    assert project.unfinished(*TENANTS) == []
    project.matches_manifests()
    after = project.schemas(*TENANTS)
    assert all(c.not_null for c in after["t1"]["tasks"].columns if c.name == "title")
    assert project.cli("generate-migrations", "--check").code == 0

    project.ok("rollback", "--tenants", "--step", "5")
    assert project.schemas(*TENANTS) == before
    project.ok("migrate", "--tenants")  # and forward again: every step resumable from nothing
    assert project.schemas(*TENANTS) == after and project.unfinished(*TENANTS) == []


def test_the_daemon_applies_the_online_steps_to_every_tenant(tmp_path: Path, database_url: str) -> None:
    project = Project(tmp_path, database_url)
    project.tables(ORGS, res("task", "tasks", BASE, CONTEXT))
    daemon = Daemon(tmp_path, database_url, tmp_path / "config")
    try:

        def tenants_current(count: int) -> bool:
            code, status = daemon.get("/status")
            if code != 200 or not status.get("repos"):
                return False
            repo = status["repos"][0]
            written = sorted((tmp_path / "priv/app/tenant_migrations").glob("*.sql"))
            return (
                len(written) == count
                and repo["latest_tenant_version"] == int(written[-1].name[:14])
                and repo["tenants_current"] == len(TENANTS)
                and repo["tenants_behind"] == 0
            )

        wait_for(
            lambda: tenants_current(1), "the daemon to create the tenant tables", process=daemon.proc, ignore=(OSError,)
        )
        fill_tenants(project)
        project.tables(ORGS, res("task", "tasks", EVOLVED, CONTEXT + EVOLUTION))
        wait_for(lambda: tenants_current(6), "the daemon to roll the evolution out", timeout=120, process=daemon.proc)
        assert project.unfinished("public", *TENANTS) == []
        project.matches_manifests()
    finally:
        code, log = daemon.stop()
    assert code == 0, log


# -- kill -9 in the middle -------------------------------------------------------------------------------------

GATE = (
    "CREATE FUNCTION public.gate(v integer) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$ "
    "BEGIN PERFORM pg_advisory_lock_shared(4242); PERFORM pg_advisory_unlock_shared(4242); RETURN v >= 0; END $$"
)
"""A check / index expression that waits, row by row, while the test holds advisory lock 4242: a VALIDATE or an
index build that is stopped in the middle of its scan, deterministically (no timing, no sleep)."""
USERS = (
    "    - {name: id, type: bigint, primaryKey: true}\n"
    "    - {name: email, type: text%s}\n"
    "    - {name: n, type: integer}\n"
)


def _killed_in_the_middle(project: Project, statement: str) -> None:
    """Run ``migrate`` while the gate is closed, wait until ``statement`` waits at the gate, kill -9 the
    runner, and wait until the server has ended that session (it notices the client is gone)."""
    with psycopg.connect(project.url, autocommit=True) as gatekeeper:
        gatekeeper.execute("SELECT pg_advisory_lock(4242)")
        runner = start_cli("migrate", cwd=project.root, env={"APP_URL": project.url})
        try:
            where = "wait_event_type = 'Lock' AND query ILIKE %s"
            session = wait_for_session(project.url, where, f"{statement} at the gate", (f"%{statement}%",), runner)
        finally:
            runner.send_signal(signal.SIGKILL)
            runner.communicate()
        wait_for(
            lambda: not _backend_alive(project.url, int(session["pid"])),
            "the server to end the killed runner's session",
        )


def _backend_alive(url: str, pid: int) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        return bool(conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone())


def users_with_rows(root: Path, url: str, *, rows: int = 500, gate: bool = False) -> Project:
    """A project whose ``users`` table exists (generated, migrated) and holds ``rows`` rows."""
    project = Project(root, url)
    if gate:
        project.execute(GATE)
    project.tables(res("user", "users", USERS % ""))
    project.generate()
    project.ok("migrate")
    project.execute(
        sql.SQL("INSERT INTO users SELECT g, 'u' || g || '@x', g FROM generate_series(1, {}) g")
        .format(rows)
        .as_string(None)
    )
    return project


def _applied(project: Project) -> list[str]:
    with psycopg.connect(project.url) as conn:
        return [str(r[0]) for r in conn.execute("SELECT version FROM public.schema_migrations ORDER BY 1")]


def test_kill_9_during_validate_then_the_next_run_completes(tmp_path: Path, database_url: str) -> None:
    project = users_with_rows(tmp_path, database_url, gate=True)

    checks = '  checkConstraints:\n    - {name: n_gated, check: "gate(n)"}\n'
    project.tables(res("user", "users", USERS % ", allowNull: false", checks))
    generated = project.generate()
    assert steps(generated, "global") == ["", "_validate"]
    applied = _applied(project)

    _killed_in_the_middle(project, 'VALIDATE CONSTRAINT "n_gated"')
    # the main step committed; the validation of the helper check committed on its own; the gated one did not
    assert len(_applied(project)) == len(applied) + 1
    assert project.unfinished("public") == [
        "constraint public.users.n_gated NOT VALID",
        "helper check public.users.users_email_nn_helper",
    ]
    result = project.ok("migrate")
    assert "resuming" in result.out and "at statement 2 of 4" in result.out
    assert project.unfinished("public") == []
    project.matches_manifests()
    assert project.cli("generate-migrations", "--check").code == 0


def test_kill_9_during_a_concurrent_index_build_then_the_next_run_completes(tmp_path: Path, database_url: str) -> None:
    project = users_with_rows(tmp_path, database_url, gate=True)

    project.tables(res("user", "users", USERS % "", '  indexes:\n    - {fields: ["gate(n)"], name: users_gated}\n'))
    assert steps(project.generate(), "global") == ["_concurrently"]
    _killed_in_the_middle(project, "CREATE INDEX CONCURRENTLY")
    assert project.unfinished("public") == ["index public.users_gated INVALID"]

    project.ok("migrate")  # drops the INVALID leftover, builds it again
    assert project.unfinished("public") == []
    project.matches_manifests()


def test_an_identity_a_new_foreign_key_points_at_is_built_before_it(tmp_path: Path, database_url: str) -> None:
    project = Project(tmp_path, database_url)
    accounts = "    - {name: id, type: bigint, primaryKey: true}\n    - {name: code, type: text}\n"
    project.tables(res("account", "accounts", accounts))
    project.generate()
    project.ok("migrate")
    project.execute("INSERT INTO accounts SELECT g, 'c' || g FROM generate_series(1, 100) g")
    before = project.schemas("public")

    identity = "  identities:\n    - {name: code, keys: [code]}\n"
    ref = "    - {name: code, type: text, references: {resource: account, column: code}}\n"
    project.tables(
        res("account", "accounts", accounts, identity),
        res("payment", "payments", "    - {name: id, type: bigint, primaryKey: true}\n" + ref),
    )
    generated = project.generate()
    # the new table first, the unique index CONCURRENTLY, then the foreign key that needs it (NOT VALID: squawk
    # would flag a validated one in a file that did not create its table), validated last
    assert steps(generated, "global") == ["", "_concurrently", "_after_indexes", "_validate"]
    for migration in generated:
        path = tmp_path / migration["path"]
        assert squawk.blocking(squawk.lint(path)) == [], squawk.describe(path, squawk.lint(path))
    project.ok("migrate")
    assert project.unfinished("public") == []
    project.matches_manifests()
    project.ok("rollback", "--step", str(len(generated)))
    assert project.schemas("public") == before


def test_a_failed_validation_starts_over_after_a_rollback(tmp_path: Path, database_url: str) -> None:
    """A half-run _validate leaves progress behind; rolling its change back forgets it, so applying the change
    again validates every constraint (resuming at the failed statement would leave the first NOT VALID)."""
    project = Project(tmp_path, database_url)
    project.tables(res("user", "users", USERS % ""))
    project.generate()
    project.ok("migrate")
    project.execute("INSERT INTO users VALUES (1, 'a@x', 1), (2, 'b@x', -2)")
    checks = '  checkConstraints:\n    - {name: c1, check: "n < 100"}\n    - {name: c2, check: "n > 0"}\n'
    project.tables(res("user", "users", USERS % "", checks))
    assert steps(project.generate(), "global") == ["", "_validate"]
    failed = project.cli("migrate")
    assert failed.code == 1 and "23514" in failed.out + failed.err
    # c1 was validated and committed on its own (progress: 1 of 2), c2 failed
    assert project.unfinished("public") == ["constraint public.users.c2 NOT VALID"]

    project.ok("rollback", "--step", "1")  # the main step: both constraints gone, and the progress with them
    project.execute("UPDATE users SET n = 2 WHERE id = 2")
    result = project.ok("migrate")
    assert "resuming" not in result.out
    assert project.unfinished("public") == []


def test_a_concurrent_build_waits_for_old_transactions_longer_than_lock_timeout(
    tmp_path: Path, database_url: str
) -> None:
    """CREATE INDEX CONCURRENTLY waits for every transaction that writes the table; waiting blocks nobody, so it
    gets lockWait, not the short lockTimeout (which would fail it and rebuild from scratch on each retry)."""
    project = Project(tmp_path, database_url)
    project.tables(res("user", "users", USERS % ""))
    (tmp_path / "config/repo.yaml").write_text(REPO.replace("lockTimeout: 60s", "lockTimeout: 200ms, lockWait: 60s"))
    project.generate()
    project.ok("migrate")
    project.execute("INSERT INTO users SELECT g, 'u' || g || '@x', g FROM generate_series(1, 100) g")
    project.tables(res("user", "users", USERS % "", "  indexes:\n    - {fields: [n]}\n"))
    (tmp_path / "config/repo.yaml").write_text(REPO.replace("lockTimeout: 60s", "lockTimeout: 200ms, lockWait: 60s"))
    project.generate()
    with psycopg.connect(project.url) as writer:
        writer.execute("UPDATE users SET n = n WHERE id = 1")  # an open transaction that wrote the table
        runner = start_cli("migrate", cwd=project.root, env={"APP_URL": project.url})
        where = "wait_event_type = 'Lock' AND query ILIKE %s AND now() - query_start > interval '1 second'"
        wait_for_session(project.url, where, "the build waiting past lockTimeout", ("%CONCURRENTLY%",), runner)
        writer.commit()
    out, err = runner.communicate(timeout=120)
    assert runner.returncode == 0, out + err
    assert project.unfinished("public") == []
    project.matches_manifests()


def test_the_steps_of_a_change_are_withdrawn_together(tmp_path: Path, database_url: str) -> None:
    project = Project(tmp_path, database_url)
    project.tables(res("user", "users", USERS % ""))
    project.generate()
    project.ok("migrate")
    project.tables(res("user", "users", USERS % ", allowNull: false", "  indexes:\n    - {fields: [n]}\n"))
    generated = project.generate()
    assert steps(generated, "global") == ["", "_concurrently", "_validate"]
    later = Path(generated[1]["path"]).name[:14]
    refused = project.cli("withdraw", later)
    assert refused.code == 2 and f"withdraw version {Path(generated[0]['path']).name[:14]}" in refused.err
    project.ok("withdraw")
    assert project.cli("generate-migrations", "--check").code == 1  # the change is to be generated again
    named = project.cli("generate-migrations", "--name", "tidy_validate")
    assert named.code == 2 and "_validate" in named.err
