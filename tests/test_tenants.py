"""``orchestrator tenants`` against a real PostgreSQL: every tenant source, hostile names, failures."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from orchestrator import config, db, tenants
from orchestrator.errors import DatabaseError
from tests.conftest import run_cli, write

REGISTRY = """
CREATE TABLE public.organizations (slug text PRIMARY KEY, active boolean NOT NULL DEFAULT true);
INSERT INTO public.organizations VALUES ('acme', true), ('globex', true), ('initech', false);
"""


def repo_yaml(tenants_spec: str, url: str = "${TEST_URL}") -> str:
    return (
        f"apiVersion: orchestrator/v1\nkind: Repo\nmetadata: {{name: app}}\n"
        f"spec:\n  url: {url}\n  tenants: {tenants_spec}\n"
    )


def setup(tmp_path: Path, tenants_spec: str) -> Path:
    write(tmp_path / "config" / "repo.yaml", repo_yaml(tenants_spec))
    return tmp_path


def test_query_source_lists_active_organizations(tmp_path: Path, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(REGISTRY)
    root = setup(tmp_path, "{query: \"SELECT 'org_' || slug FROM public.organizations WHERE active ORDER BY 1\"}")
    result = run_cli("tenants", cwd=root, env={"TEST_URL": database_url})
    assert result.code == 0, result.err
    assert result.out.splitlines() == ["app (query): 2 tenants", "  org_acme", "  org_globex"]
    as_json = run_cli("tenants", "--repo", "app", "--json", cwd=root, env={"TEST_URL": database_url})
    assert json.loads(as_json.out)["repos"][0]["tenants"] == ["org_acme", "org_globex"]


def test_schema_pattern_lists_matching_schemas_only(tmp_path: Path, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        for schema in ("org_b", "org_a", "other", "orgx"):
            conn.execute(f'CREATE SCHEMA "{schema}"')
    root = setup(tmp_path, "{schemaPattern: 'org\\_%'}")
    result = run_cli("tenants", "--json", cwd=root, env={"TEST_URL": database_url})
    assert result.code == 0, result.err
    assert json.loads(result.out)["repos"][0]["tenants"] == ["org_a", "org_b"]


def test_static_source_needs_no_database(tmp_path: Path) -> None:
    root = setup(tmp_path, "{static: [acme, globex]}")
    write(
        root / "config" / "repo.yaml",
        repo_yaml("{static: [acme, globex]}", url="postgresql://nowhere.invalid/x"),
    )
    result = run_cli("tenants", cwd=root)
    assert result.code == 0, result.err
    assert result.out.splitlines() == ["app (static): 2 tenants", "  acme", "  globex"]


def test_hostile_names_from_the_query_are_rejected_not_used(tmp_path: Path, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE registry (name text)")
        conn.execute(
            "INSERT INTO registry VALUES ('good_one'), ('x\"; DROP TABLE registry; --'), "
            "(repeat('a', 64)), ('good_one'), (NULL)"
        )
    root = setup(tmp_path, "{query: 'SELECT name FROM registry'}")
    result = run_cli("tenants", cwd=root, env={"TEST_URL": database_url})
    assert result.code == 1
    assert result.out.splitlines() == ["app (query): 1 tenant", "  good_one"]
    assert "rejected tenant name 'x\"; DROP TABLE registry; --'" in result.err
    with psycopg.connect(database_url) as conn:  # nothing was executed with the hostile name
        assert conn.execute("SELECT count(*) FROM registry").fetchone() == (5,)


def test_the_tenant_query_cannot_write(tmp_path: Path, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE registry (name text)")
    root = setup(tmp_path, "{query: \"INSERT INTO registry VALUES ('sneaky') RETURNING name\"}")
    result = run_cli("tenants", cwd=root, env={"TEST_URL": database_url})
    assert result.code == 1
    assert "the tenant query failed: cannot execute INSERT in a read-only transaction" in result.err
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM registry").fetchone() == (0,)


def test_missing_registry_means_no_tenants_yet(tmp_path: Path, database_url: str) -> None:
    root = setup(tmp_path, "{query: 'SELECT slug FROM public.organizations'}")
    result = run_cli("tenants", cwd=root, env={"TEST_URL": database_url})
    assert result.code == 0, result.err
    assert result.out.splitlines()[0] == "app (query): 0 tenants"
    assert 'relation "public.organizations" does not exist' in result.out


def test_query_errors_fail_with_the_database_message(tmp_path: Path, database_url: str) -> None:
    root = setup(tmp_path, "{query: 'SELEC 1'}")
    result = run_cli("tenants", cwd=root, env={"TEST_URL": database_url})
    assert result.code == 1
    assert 'the tenant query failed: syntax error at or near "SELEC"' in result.err


def test_unknown_repo_and_repo_without_source_are_usage_errors(tmp_path: Path) -> None:
    root = setup(tmp_path, "{static: [a]}")
    write(
        root / "config" / "other.yaml",
        "apiVersion: orchestrator/v1\nkind: Repo\nmetadata: {name: other}\nspec: {}\n",
    )
    unknown = run_cli("tenants", "--repo", "nope", cwd=root)
    assert unknown.code == 2 and "unknown repo 'nope' (known: app, other)" in unknown.err
    without = run_cli("tenants", "--repo", "other", cwd=root)
    assert without.code == 2 and "repo 'other' has no tenants source" in without.err


def test_unset_variable_is_a_located_config_error(tmp_path: Path) -> None:
    root = setup(tmp_path, "{query: 'SELECT 1'}")
    result = run_cli("tenants", cwd=root)
    assert result.code == 2
    assert (
        "config/repo.yaml:1:1: spec.url: environment variable TEST_URL is not set "
        "(write ${TEST_URL:-} to fall back to the embedded PostgreSQL)"
    ) in result.err


def test_connection_failure_never_shows_the_password(tmp_path: Path) -> None:
    root = setup(tmp_path, "{query: 'SELECT 1'}")
    secret_url = "postgresql://app:s3cr3t-pw@127.0.0.1:1/app"
    result = run_cli("tenants", cwd=root, env={"TEST_URL": secret_url})
    assert result.code == 1
    assert "cannot connect to postgresql://app:***@127.0.0.1:1/app" in result.err
    assert "s3cr3t-pw" not in result.err + result.out


def test_url_file_and_default_interpolation(tmp_path: Path, database_url: str) -> None:
    write(tmp_path / "secret-url", database_url + "\n")
    write(
        tmp_path / "config" / "repo.yaml",
        "apiVersion: orchestrator/v1\nkind: Repo\nmetadata: {name: app}\nspec:\n  urlFile: secret-url\n"
        "  tenants: {schemaPattern: 'public'}\n",
    )
    cfg = config.load(tmp_path / "config", base=tmp_path)
    repo = cfg.repos[0]
    assert db.resolve_url(repo, tmp_path) == database_url
    with db.connect(repo, tmp_path) as conn:
        assert tenants.list_tenants(repo, conn).tenants == ("public",)
    templated = type(repo)(name="x", url="${NOPE:-postgresql://h/${X}}")
    assert db.resolve_url(templated, tmp_path, {"X": "ignored"}) == "postgresql://h/${X}"
    assert db.resolve_url(type(repo)(name="x", url="${A:-}"), tmp_path, {}) is None
    assert db.resolve_url(type(repo)(name="x", url="${A}/db"), tmp_path, {"A": "postgresql://h"}) == "postgresql://h/db"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h/db?password=pw&sslmode=require", "postgresql://h/db?password=***&sslmode=require"),
        ("host=h password=pw dbname=d", "host=h password=*** dbname=d"),
        ("host=h password='p w' dbname=d", "host=h password=*** dbname=d"),
        (
            'app: missing "=" after "postgress://u:s3cret@h/db" in connection info string',
            'app: missing "=" after "postgress://u:***@h/db" in connection info string',
        ),
        (
            "a postgresql://u:p%40ss@h1,h2:5433/db?password=x and b postgres://v:w@[::1]/d",
            "a postgresql://u:***@h1,h2:5433/db?password=*** and b postgres://v:***@[::1]/d",
        ),
    ],
)
def test_redact(url: str, shown: str) -> None:
    assert db.redact(url) == shown


def test_list_tenants_raises_database_error_for_bad_sql(database_url: str, tmp_path: Path) -> None:
    write(tmp_path / "config" / "repo.yaml", repo_yaml("{query: 'SELECT nope FROM nowhere_at_all()'}"))
    cfg = config.load(tmp_path / "config", base=tmp_path)
    with psycopg.connect(database_url, autocommit=True) as conn, pytest.raises(DatabaseError):
        tenants.list_tenants(cfg.repos[0], conn)
