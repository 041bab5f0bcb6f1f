"""``withdraw`` on real PostgreSQL, under both state backends: a generated migration applied nowhere is taken back
(files or state rows, and its snapshots), so the fixed manifest is generated again as the same change."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from orchestrator.generator import snapshots
from tests import conftest
from tests.conftest import Result, run_cli, write
from tests.harness import res

REPO = (
    "apiVersion: orchestrator/v1\nkind: Repo\nmetadata: {name: app}\nspec:\n  url: ${APP_URL}\n"
    "  tenants: {static: [t1, t2], createSchemas: true}\n"
)
ID = "    - {name: id, type: bigint, primaryKey: true}\n"
CONTEXT = "  multitenancy: {strategy: context}\n"


@dataclass
class Project:
    """A repo with a global table (things) and a tenant table (tasks), its state kept as ``state`` says."""

    root: Path
    url: str
    state: str

    def cli(self, *args: str) -> Result:
        return run_cli(*args, cwd=self.root, env={"APP_URL": self.url, "ORCHESTRATOR_STATE": self.state})

    def ok(self, *args: str) -> Result:
        result = self.cli(*args)
        assert result.code == 0, f"{args}: {result.out}{result.err}"
        return result

    def tables(self, things: str = "", tasks: str = "", repo: str = "") -> None:
        write(self.root / "config/repo.yaml", REPO + repo)
        write(self.root / "config/things.yaml", res("thing", "things", ID + things))
        write(self.root / "config/tasks.yaml", res("task", "tasks", ID + tasks, CONTEXT))

    def stored(self) -> dict[str, str]:
        """Every generated file: path relative to the root -> text (files under priv/, or state rows)."""
        if self.state == "files":
            base = self.root / "priv"
            return {p.relative_to(self.root).as_posix(): p.read_text() for p in base.rglob("*") if p.is_file()}
        with psycopg.connect(self.url) as conn:
            return {str(p): str(b) for p, b in conn.execute("SELECT path, body FROM orchestrator.state_files")}

    def query(self, text: str, *params: object) -> list[tuple[object, ...]]:
        with psycopg.connect(self.url) as conn:
            cursor = conn.execute(text.encode(), params or None)
            return cursor.fetchall() if cursor.description else []

    def start(self) -> dict[str, str]:
        """Generate, migrate and roll out the first version; return what is stored."""
        self.tables()
        self.ok("generate-migrations", "--name", "init")
        self.ok("migrate")
        self.ok("migrate", "--tenants")
        return self.stored()


@pytest.fixture(params=["files", "database"])
def project(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> Iterator[Project]:
    yield Project(tmp_path, database_url, request.param)


def new_files(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(set(after) - set(before))


def test_withdraw_a_migration_that_fails_everywhere(project: Project) -> None:
    before = project.start()
    project.tables(tasks="    - {name: due, type: date, defaultSql: no_such_function()}\n")
    project.ok("generate-migrations", "--name", "add_due", "--allow-blocking")  # an unknown function may rewrite
    added = new_files(before, project.stored())
    [migration] = [p for p in added if p.endswith(".sql")]
    version = Path(migration).name[:14]
    assert migration.startswith("priv/app/tenant_migrations/")
    assert added == sorted([migration, f"priv/resource_snapshots/app/tenants/tasks/{version}.json"])

    failed = project.cli("migrate", "--tenants")
    assert failed.code == 1 and "no_such_function" in failed.out, failed.out + failed.err
    assert project.query("SELECT count(*) FROM orchestrator.migrations WHERE version = %s", int(version)) == [(1,)]

    preview = project.ok("withdraw", "--dry-run")
    assert f"app: would withdraw {Path(migration).name} (tenant): applied nowhere" in preview.out
    assert f"  would delete {migration}" in preview.out.splitlines()
    assert new_files(before, project.stored()) == added  # nothing deleted

    done = project.ok("withdraw", "--json")
    [report] = json.loads(done.out)["repos"]
    assert report["versions"] == [int(version)] and sorted(report["deleted"]) == added
    assert report["checked"]["tenants"] == 2 and report["dry_run"] is False
    assert project.stored() == before  # the migration and its snapshot are gone, nothing else changed
    assert project.query("SELECT count(*) FROM orchestrator.migrations WHERE version = %s", int(version)) == [(0,)]
    assert project.cli("generate-migrations", "--check").code == 1  # the change is to be generated again

    project.tables(tasks="    - {name: due, type: date, defaultSql: current_date}\n")
    project.ok("generate-migrations", "--name", "add_due")
    [fixed] = [p for p in new_files(before, project.stored()) if p.endswith(".sql")]
    assert "current_date" in project.stored()[fixed] and "no_such_function" not in project.stored()[fixed]
    project.ok("migrate", "--tenants")
    for tenant in ("t1", "t2"):
        assert conftest.columns(project.url, tenant, "tasks") == ["id", "due"]
    project.ok("status", "--tenants")  # nobody behind, and the failure of the withdrawn migration is over
    assert project.cli("generate-migrations", "--check").code == 0


def test_withdraw_refuses_a_migration_applied_on_one_tenant(project: Project) -> None:
    before = project.start()
    project.tables(tasks="    - {name: note, type: text}\n")
    project.ok("generate-migrations", "--name", "add_note")
    added = new_files(before, project.stored())
    version = Path(next(p for p in added if p.endswith(".sql"))).name[:14]
    project.ok("migrate", "--tenants", "--only-tenants", "t1")

    refused = project.cli("withdraw")
    assert refused.code == 1
    assert f"refusing to withdraw {version}: {version} applied in tenant t1;" in refused.err
    assert "nothing was deleted" in refused.err
    as_json = project.cli("withdraw", "--json")
    assert as_json.code == 1
    assert json.loads(as_json.out)["applied"] == [{"version": int(version), "where": "tenant t1", "state": "applied"}]
    assert new_files(before, project.stored()) == added

    init = min(Path(p).name[:14] for p in before if p.endswith(".sql"))
    older = project.cli("withdraw", init)
    assert older.code == 2 and f"version {init} is not in the newest generated migration(s)" in older.err

    project.ok("rollback", "--tenants", "--only-tenants", "t1")
    progress = "INSERT INTO orchestrator.progress (target, version, statements_done) VALUES ('app/t2', %s, 1)"
    project.query(progress, int(version))  # as left by a transaction:false migration that stopped midway
    partly = project.cli("withdraw")
    assert partly.code == 1 and f"{version} partly applied (1 of its statements ran) in app/t2" in partly.err
    project.query("DELETE FROM orchestrator.progress")
    project.ok("withdraw", version)
    assert project.stored() == before
    assert conftest.columns(project.url, "t1", "tasks") == ["id"]


def test_withdraw_the_tenant_part_of_a_generation(project: Project) -> None:
    before = project.start()
    project.tables(
        things="    - {name: label, type: text}\n", tasks="    - {name: due, type: date, defaultSql: nope()}\n"
    )
    project.ok("generate-migrations", "--name", "change", "--allow-blocking")  # nope() may rewrite
    added = new_files(before, project.stored())
    global_file, tenant_file = sorted((p for p in added if p.endswith(".sql")), key=lambda p: Path(p).name)
    project.ok("migrate")  # the global part is applied; the tenant part fails everywhere
    assert project.cli("migrate", "--tenants").code == 1

    whole = project.cli("withdraw")
    assert whole.code == 1 and "applied in public (global)" in whole.err
    tenant_version = Path(tenant_file).name[:14]
    assert f"'orchestrator withdraw --repo app {tenant_version}' withdraws that part alone" in whole.err

    part = project.ok("withdraw", "--repo", "app", tenant_version)
    assert f"  delete {tenant_file}" in part.out.splitlines()
    remaining = new_files(before, project.stored())
    assert global_file in remaining and tenant_file not in remaining
    assert not [p for p in remaining if "/tenants/" in p]  # the tenant snapshot went with it

    project.tables(things="    - {name: label, type: text}\n", tasks="    - {name: due, type: date}\n")
    result = project.ok("generate-migrations", "--name", "fix", "--json")
    assert [m["scope"] for m in json.loads(result.out)["migrations"]] == ["tenant"]
    project.ok("migrate", "--tenants")
    assert conftest.columns(project.url, "t2", "tasks") == ["id", "due"]


def test_withdraw_takes_extensions_out_of_the_snapshot(tmp_path: Path, database_url: str) -> None:
    project = Project(tmp_path, database_url, "files")
    project.tables(repo="  extensions: [hstore]\n")
    project.ok("generate-migrations", "--name", "init")  # nothing applied: generating needs no database
    before = project.stored()
    project.tables(things="    - {name: label, type: text}\n", repo="  extensions: [hstore, citext]\n")
    project.ok("generate-migrations", "--name", "citext")
    extensions = "priv/resource_snapshots/app/extensions.json"
    assert '"citext"' in project.stored()[extensions]

    result = project.ok("withdraw")
    assert f"  rewrite {extensions}" in result.out.splitlines()
    assert project.stored() == before and project.stored()[extensions] == snapshots.render_extensions(("hstore",))

    project.tables(repo="  extensions: [hstore]\n")
    project.ok("withdraw")  # the first generation: extensions.json goes with it, as if never generated
    assert project.stored() == {}
    assert not (tmp_path / "priv").exists()


def test_withdraw_with_several_repos_needs_one_named(tmp_path: Path, database_url: str) -> None:
    project = Project(tmp_path, database_url, "files")
    project.tables()
    other = REPO.replace("name: app", "name: other").replace("  tenants: {static: [t1, t2], createSchemas: true}\n", "")
    write(tmp_path / "config/other.yaml", other)
    write(tmp_path / "config/extra.yaml", res("extra", "extras", ID).replace("repo: app", "repo: other"))
    project.ok("generate-migrations")
    result = project.cli("withdraw")
    assert result.code == 2 and "name the repo (--repo R) or the version" in result.err
    project.ok("withdraw", "--repo", "other")
    assert not [p for p in project.stored() if "/other/" in p]
    assert [p for p in project.stored() if "/app/" in p]
    unknown = project.cli("withdraw", "20000101000000")
    assert unknown.code == 2 and "no migration has version 20000101000000" in unknown.err
