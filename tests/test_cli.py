"""The CLI as a user runs it: the example config, the embedded PostgreSQL, exit codes and help."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from orchestrator import embedded
from tests.conftest import REPO_ROOT, run_cli, write


@pytest.fixture
def embedded_root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    embedded.stop(tmp_path)


def test_validate_the_example_config() -> None:
    result = run_cli("validate", cwd=REPO_ROOT)
    assert result.code == 0, result.err
    assert result.out.splitlines()[0] == "OK: 2 repos, 6 tables (3 global, 3 per tenant) in config"
    report = json.loads(run_cli("validate", "--json", cwd=REPO_ROOT).out)
    assert report["valid"] is True
    app = next(r for r in report["repos"] if r["name"] == "app")
    assert app["url"] == "${APP_DATABASE_URL:-}" and app["tenants"] == "query"
    assert {t["table"] for t in app["tables"]} >= {"public.users", "tenants.tasks"}


def test_config_and_root_come_from_the_environment(tmp_path: Path) -> None:
    shutil.copytree(REPO_ROOT / "config", tmp_path / "manifests")
    result = run_cli("validate", cwd=REPO_ROOT, env={"ORCHESTRATOR_CONFIG": str(tmp_path / "manifests")})
    assert result.code == 0 and str(tmp_path / "manifests") in result.out


def test_embedded_postgres_started_on_demand_and_reused(embedded_root: Path) -> None:
    write(
        embedded_root / "config" / "repo.yaml",
        "apiVersion: orchestrator/v1\nkind: Repo\nmetadata: {name: app}\n"
        "spec:\n  tenants: {query: 'SELECT current_database()'}\n",
    )
    first = run_cli("tenants", "--json", cwd=embedded_root)
    assert first.code == 0, first.err
    assert json.loads(first.out)["repos"][0]["tenants"] == ["app"]  # one database per repo
    assert (embedded_root / ".orchestrator" / "pgdata" / "PG_VERSION").read_text().strip() == "16"
    pid = (embedded_root / ".orchestrator" / "pgdata" / "postmaster.pid").read_text().splitlines()[0]
    second = run_cli("tenants", "--json", cwd=embedded_root)
    assert second.code == 0, second.err
    again = (embedded_root / ".orchestrator" / "pgdata" / "postmaster.pid").read_text().splitlines()[0]
    assert again == pid, "the running server is reused, not restarted"
    with psycopg.connect(embedded.database_url(embedded_root, "app")) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("app",)


def test_root_option_places_the_embedded_data(embedded_root: Path) -> None:
    work = embedded_root / "elsewhere"
    write(
        work / "config" / "repo.yaml",
        "apiVersion: orchestrator/v1\nkind: Repo\nmetadata: {name: app}\nspec:\n  tenants: {schemaPattern: public}\n",
    )
    result = run_cli("tenants", "--config", str(work / "config"), "--root", str(embedded_root), cwd=work)
    assert result.code == 0, result.err
    assert result.out.splitlines() == ["app (schemaPattern): 1 tenant", "  public"]
    assert (embedded_root / ".orchestrator" / "pgdata").is_dir()
    assert not (work / ".orchestrator").exists()


def test_usage_errors_exit_2() -> None:
    assert run_cli(cwd=REPO_ROOT).code == 2
    result = run_cli("frobnicate", cwd=REPO_ROOT)
    assert result.code == 2 and "invalid choice" in result.err
    assert run_cli("validate", "--bogus", cwd=REPO_ROOT).code == 2


def test_help_lists_only_working_commands() -> None:
    result = run_cli("--help", cwd=REPO_ROOT)
    assert result.code == 0
    assert "validate" in result.out and "tenants" in result.out
    assert "withdraw" in result.out and "when applied nowhere" in result.out
    usage = run_cli("withdraw", "--help", cwd=REPO_ROOT)
    assert usage.code == 0 and "[VERSION]" in usage.out and "--dry-run" in usage.out
    assert "not implemented" not in result.out.lower()


def test_console_script_is_installed() -> None:
    import subprocess
    import sys

    script = Path(sys.executable).parent / "orchestrator"
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("orchestrator ")
