"""regen in a temporary git repository: untracked migrations are rolled back, deleted and generated again."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql

from tests import conftest
from tests.conftest import run_cli, write
from tests.harness import res

REPO = "apiVersion: orchestrator/v1\nkind: Repo\nmetadata: {name: app}\nspec:\n  url: ${APP_URL}\n"
ID = "    - {name: id, type: bigint, primaryKey: true}\n"
TENANTS = "  tenants: {static: [t1, t2], createSchemas: true}\n"
CONTEXT = "  multitenancy: {strategy: context}\n"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
}


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, env={"PATH": "/usr/bin:/bin", **GIT_ENV})


def migrations(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "priv/app/migrations").glob("*.sql"))


def columns(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'things' ORDER BY ordinal_position"
        ).fetchall()
    return [str(r[0]) for r in rows]


def test_regen_replaces_untracked_migrations_with_one(tmp_path: Path, database_url: str) -> None:
    env = {"APP_URL": database_url}
    write(tmp_path / "config/repo.yaml", REPO)
    write(tmp_path / "config/things.yaml", res("thing", "things", ID))
    git(tmp_path, "init", "-q")
    assert run_cli("generate-migrations", "--name", "init", cwd=tmp_path, env=env).code == 0
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "init")
    assert run_cli("migrate", cwd=tmp_path, env=env).code == 0

    # two iterations on the same change: two untracked migrations, both applied
    write(tmp_path / "config/things.yaml", res("thing", "things", ID + "    - {name: a, type: text}\n"))
    assert run_cli("generate-migrations", "--name", "wip", cwd=tmp_path, env=env).code == 0
    assert run_cli("migrate", cwd=tmp_path, env=env).code == 0
    write(
        tmp_path / "config/things.yaml",
        res("thing", "things", ID + "    - {name: a, type: text}\n    - {name: b, type: text}\n"),
    )
    assert run_cli("generate-migrations", "--name", "wip", cwd=tmp_path, env=env).code == 0
    assert run_cli("migrate", cwd=tmp_path, env=env).code == 0
    assert len(migrations(tmp_path)) == 3 and columns(database_url) == ["id", "a", "b"]

    result = run_cli("regen", "--name", "add_a_b", cwd=tmp_path, env=env)
    assert result.code == 0, result.err
    assert result.out.count("rolled back") == 2 and "deleted priv/app/migrations/" in result.out
    names = migrations(tmp_path)
    assert len(names) == 2 and names[0].endswith("_init.sql") and names[1].endswith("_add_a_b.sql")
    assert columns(database_url) == ["id"]  # rolled back, not migrated without -m
    snapshots = sorted((tmp_path / "priv/resource_snapshots/app/things").glob("*.json"))
    assert len(snapshots) == 2

    again = run_cli("regen", "-m", "--name", "add_a_b", cwd=tmp_path, env=env)
    assert again.code == 0, again.err
    assert len(migrations(tmp_path)) == 2 and columns(database_url) == ["id", "a", "b"]
    check = run_cli("generate-migrations", "--check", cwd=tmp_path, env=env)
    assert check.code == 0, check.out


def test_regen_outside_git_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "config/repo.yaml", REPO)
    result = run_cli("regen", cwd=tmp_path, env={"APP_URL": "postgresql://nowhere.invalid/x"})
    assert result.code == 2 and "regen needs a git checkout" in result.err


def committed_project(root: Path, env: dict[str, str], tasks: str = ID) -> None:
    """A git checkout with a global table and a tenant table, committed and migrated everywhere (t1, t2)."""
    write(root / "config/repo.yaml", REPO + TENANTS)
    write(root / "config/things.yaml", res("thing", "things", ID))
    write(root / "config/tasks.yaml", res("task", "tasks", tasks, CONTEXT))
    git(root, "init", "-q")
    assert run_cli("generate-migrations", "--name", "init", cwd=root, env=env).code == 0
    git(root, "add", "-A")
    git(root, "commit", "-qm", "init")
    assert run_cli("migrate", cwd=root, env=env).code == 0
    result = run_cli("migrate", "--tenants", cwd=root, env=env)
    assert result.code == 0, result.out + result.err


def test_regen_rolls_back_and_migrates_tenants(tmp_path: Path, database_url: str) -> None:
    env = {"APP_URL": database_url}
    committed_project(tmp_path, env)

    # iteration 1: a global table and a tenant column; iteration 2: a tenant column and a tenant foreign key
    # to the new global table (so the tenants must be rolled back before the globals)
    write(tmp_path / "config/labels.yaml", res("label", "labels", ID))
    write(tmp_path / "config/tasks.yaml", res("task", "tasks", ID + "    - {name: a, type: text}\n", CONTEXT))
    for step in ("wip1", "wip2"):
        assert run_cli("generate-migrations", "--name", step, cwd=tmp_path, env=env).code == 0
        assert run_cli("migrate", cwd=tmp_path, env=env).code == 0
        result = run_cli("migrate", "--tenants", cwd=tmp_path, env=env)
        assert result.code == 0, result.out + result.err
        more = "    - {name: a, type: text}\n    - {name: b, type: text}\n"
        more += "    - {name: label_id, type: bigint, references: {resource: label}}\n"
        write(tmp_path / "config/tasks.yaml", res("task", "tasks", ID + more, CONTEXT))
    for tenant in ("t1", "t2"):
        assert conftest.columns(database_url, tenant, "tasks") == ["id", "a", "b", "label_id"]

    result = run_cli("regen", "-m", "--json", "--name", "add_a_b", cwd=tmp_path, env=env)
    assert result.code == 0, result.out + result.err
    doc = json.loads(result.out)
    [rolled] = doc["rollback"]["repos"]
    assert [f.split("_", 1)[1] for f in rolled["rolled_back"]] == ["wip1.sql"]
    assert {t["tenant"]: (t["status"], len(t["applied"])) for t in rolled["tenants"]} == {
        "t1": ("rolled back", 3),
        "t2": ("rolled back", 3),
    }
    deleted = [p for p in doc["deleted"] if p.endswith(".sql")]
    assert len(deleted) == 4 and all("_wip" in p for p in deleted)
    generated: dict[str, list[str]] = {}
    for m in doc["generate"]["migrations"]:
        generated.setdefault(m["scope"], []).append(Path(m["path"]).name)
    # the new global table is plain; the tenant foreign key on the existing table is NOT VALID, then validated
    assert [n[15:] for n in generated["global"]] == ["add_a_b.sql"]
    assert [n[15:] for n in generated["tenant"]] == ["add_a_b.sql", "add_a_b_validate.sql"]
    [migrated] = doc["migrate"]["repos"]
    assert migrated["applied"] == generated["global"]
    [tenants] = doc["migrate_tenants"]["repos"]
    assert {t["tenant"]: (t["status"], t["applied"]) for t in tenants["tenants"]} == {
        "t1": ("migrated", generated["tenant"]),
        "t2": ("migrated", generated["tenant"]),
    }
    assert conftest.columns(database_url, "public", "labels") == ["id"]
    for tenant in ("t1", "t2"):
        assert conftest.columns(database_url, tenant, "tasks") == ["id", "a", "b", "label_id"]
        with psycopg.connect(database_url) as conn:
            query = sql.SQL("SELECT max(version) FROM {}").format(sql.Identifier(tenant, "schema_migrations"))
            newest = conn.execute(query).fetchone()
        assert newest is not None and str(newest[0]) == generated["tenant"][-1][:14]
    status = run_cli("status", "--tenants", cwd=tmp_path, env=env)
    assert status.code == 0, status.out + status.err


def test_regen_migrate_reports_a_failing_tenant(tmp_path: Path, database_url: str) -> None:
    env = {"APP_URL": database_url}
    committed_project(tmp_path, env)
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO t2.tasks (id) VALUES (1)")  # a NOT NULL column without default fails there

    required = ID + "    - {name: c, type: text, allowNull: false}\n"
    write(tmp_path / "config/tasks.yaml", res("task", "tasks", required, CONTEXT))
    result = run_cli("regen", "-m", "--name", "add_c", cwd=tmp_path, env=env)
    assert result.code == 1, result.out + result.err
    assert "app: 2 tenants: 1 failed, 1 migrated" in result.out
    assert [line.split()[:2] for line in result.out.splitlines() if " failed " in line] == [["t2", "failed"]]
    assert conftest.columns(database_url, "t1", "tasks") == ["id", "c"]
    assert conftest.columns(database_url, "t2", "tasks") == ["id"]
