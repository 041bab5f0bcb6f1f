"""regen in a temporary git repository: untracked migrations are rolled back, deleted and generated again."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg

from tests.conftest import run_cli, write
from tests.harness import res

REPO = "apiVersion: orchestrator/v1\nkind: Repo\nmetadata: {name: app}\nspec:\n  url: ${APP_URL}\n"
ID = "    - {name: id, type: bigint, primaryKey: true}\n"
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
