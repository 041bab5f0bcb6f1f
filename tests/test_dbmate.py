"""A ``schema_migrations`` made by the real dbmate: refused before anything changes, and dbmate keeps working.

dbmate's table (``version varchar PRIMARY KEY``) cannot hold orchestrator's rows without breaking dbmate
(``dbmate rollback`` would take the newest row, ours), so orchestrator refuses it with a message naming the
schema and the way forward. Needs the ``dbmate`` binary (``npm install -g dbmate``; ``.ci/run`` installs it):
without it these tests fail, they never skip.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo, sql

from tests.conftest import Result, run_cli, write

DBMATE_UP = "-- migrate:up\nCREATE TABLE widgets (id integer);\n-- migrate:down\nDROP TABLE widgets;\n"
DBMATE_SECOND = "-- migrate:up\nCREATE TABLE gadgets (id integer);\n-- migrate:down\nDROP TABLE gadgets;\n"
OURS = "-- migrate:up\nCREATE TABLE notes (id bigint PRIMARY KEY);\n-- migrate:down\nDROP TABLE notes;\n"

Layout = list[tuple[object, ...]]


@pytest.fixture(scope="module")
def dbmate() -> str:
    found = shutil.which("dbmate")
    if found is None:
        pytest.fail("dbmate is not installed: npm install -g dbmate (.ci/run installs the pinned version)")
    return found


def dbmate_url(url: str, search_path: str | None = None) -> str:
    """The test database as a URL dbmate understands (TCP, or a Unix socket directory for the embedded one)."""
    params = conninfo.conninfo_to_dict(url)
    user, password = params.get("user") or "postgres", params.get("password") or ""
    host, port, name = str(params.get("host") or "127.0.0.1"), params.get("port") or "5432", params["dbname"]
    auth = f"{user}:{password}@" if password else f"{user}@"
    query = ["sslmode=disable"] + ([f"search_path={search_path}"] if search_path else [])
    if host.startswith("/"):
        return f"postgres://{auth}/{name}?socket={host}&{'&'.join(query)}"
    return f"postgres://{auth}{host}:{port}/{name}?{'&'.join(query)}"


def run_dbmate(binary: str, url: str, directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary, "--url", url, "--migrations-dir", str(directory), "--no-dump-schema", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def layout(url: str, schema: str) -> Layout:
    """The live columns of ``schema.schema_migrations``: name, type, nullable, default."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = 'schema_migrations' ORDER BY ordinal_position",
            (schema,),
        ).fetchall()


def rows(url: str, table: str) -> list[str]:
    schema, _, name = table.partition(".")
    query = sql.SQL("SELECT version FROM {} ORDER BY 1").format(sql.Identifier(schema, name))
    with psycopg.connect(url) as conn:
        return [str(r[0]) for r in conn.execute(query).fetchall()]


def relations(url: str, schema: str) -> set[str]:
    with psycopg.connect(url) as conn:
        found = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)).fetchall()
    return {str(r[0]) for r in found}


def has_schema(url: str, schema: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is not None


def configure(root: Path, tenants: str = "") -> None:
    spec = f"  tenants: {tenants}\n" if tenants else ""
    write(
        root / "config" / "repo.yaml",
        "apiVersion: orchestrator/v1\nkind: Repo\nmetadata: {name: app}\nspec:\n  url: ${APP_URL}\n"
        "  retry: {attempts: 2, initialDelay: 100ms, maxDelay: 200ms}\n" + spec,
    )


def refused(result: Result, schema: str) -> None:
    assert result.code == 1, (result.out, result.err)
    assert f"{schema}.schema_migrations has dbmate's table layout" in result.err
    assert "nothing was changed" in result.err
    assert f"--migrations-table {schema}.dbmate_migrations" in result.err


def test_a_dbmate_table_is_refused_untouched_and_dbmate_keeps_working(
    tmp_path: Path, database_url: str, dbmate: str
) -> None:
    url = dbmate_url(database_url)
    dbmate_dir = tmp_path / "db" / "migrations"
    write(dbmate_dir / "20240101000000_widgets.sql", DBMATE_UP)
    made = run_dbmate(dbmate, url, dbmate_dir, "up")
    assert made.returncode == 0, made.stderr
    before = layout(database_url, "public")
    assert before == [("version", "character varying", "NO", None)]

    configure(tmp_path)
    write(tmp_path / "priv" / "app" / "migrations" / "20250101000000_notes.sql", OURS)
    env = {"APP_URL": database_url}
    for command in (["migrate"], ["migrate", "--dry-run"], ["rollback"], ["status"], ["repair"]):
        refused(run_cli(*command, cwd=tmp_path, env=env), "public")
        assert layout(database_url, "public") == before  # not ALTERed, not even our columns
        assert rows(database_url, "public.schema_migrations") == ["20240101000000"]
        assert relations(database_url, "public") == {"schema_migrations", "widgets"}  # notes was not created
        assert not has_schema(database_url, "orchestrator")  # refused before any bookkeeping of ours

    status = run_dbmate(dbmate, url, dbmate_dir, "status")
    assert status.returncode == 0, status.stderr
    assert "[X] 20240101000000_widgets.sql" in status.stdout
    write(dbmate_dir / "20240102000000_gadgets.sql", DBMATE_SECOND)
    up = run_dbmate(dbmate, url, dbmate_dir, "up")
    assert up.returncode == 0, up.stderr
    assert rows(database_url, "public.schema_migrations") == ["20240101000000", "20240102000000"]
    down = run_dbmate(dbmate, url, dbmate_dir, "rollback")
    assert down.returncode == 0, down.stderr
    assert "Rolled back: 20240102000000_gadgets.sql" in down.stdout
    assert rows(database_url, "public.schema_migrations") == ["20240101000000"]
    assert relations(database_url, "public") == {"schema_migrations", "widgets"}

    # The way forward the message gives: dbmate's bookkeeping moved aside, then both tools work side by side.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE public.schema_migrations RENAME TO dbmate_migrations")
    migrated = run_cli("migrate", cwd=tmp_path, env=env)
    assert migrated.code == 0, migrated.err
    assert [str(r[0]) for r in layout(database_url, "public")][:2] == ["version", "inserted_at"]
    assert rows(database_url, "public.schema_migrations") == ["20250101000000"]
    moved = run_dbmate(dbmate, url, dbmate_dir, "--migrations-table", "public.dbmate_migrations", "status")
    assert moved.returncode == 0, moved.stderr
    assert "[X] 20240101000000_widgets.sql" in moved.stdout and "Pending: 1" in moved.stdout


def test_a_tenant_with_a_dbmate_table_fails_alone(tmp_path: Path, database_url: str, dbmate: str) -> None:
    dbmate_dir = tmp_path / "db" / "migrations"
    write(dbmate_dir / "20240101000000_widgets.sql", DBMATE_UP)
    made = run_dbmate(dbmate, dbmate_url(database_url, search_path="org_b"), dbmate_dir, "up")
    assert made.returncode == 0, made.stderr
    before = layout(database_url, "org_b")
    assert before == [("version", "character varying", "NO", None)]

    configure(tmp_path, "{static: [org_a, org_b, org_c], createSchemas: true}")
    write(tmp_path / "priv" / "app" / "tenant_migrations" / "20250101000000_notes.sql", OURS)
    env = {"APP_URL": database_url}
    up = run_cli("migrate", "--tenants", cwd=tmp_path, env=env)
    assert up.code == 1, (up.out, up.err)
    assert "3 tenants: 1 failed, 2 migrated" in up.out
    failure = next(line for line in up.out.splitlines() if line.strip().startswith("org_b"))
    assert "org_b.schema_migrations has dbmate's table layout" in failure
    assert "--migrations-table org_b.dbmate_migrations" in failure
    for tenant in ("org_a", "org_c"):
        assert rows(database_url, f"{tenant}.schema_migrations") == ["20250101000000"]
        assert "notes" in relations(database_url, tenant)
    assert layout(database_url, "org_b") == before
    assert rows(database_url, "org_b.schema_migrations") == ["20240101000000"]
    assert relations(database_url, "org_b") == {"schema_migrations", "widgets"}

    down = run_cli("rollback", "--tenants", cwd=tmp_path, env=env)
    assert down.code == 1, (down.out, down.err)
    assert "3 tenants: 1 failed, 2 rolled back" in down.out
    assert "org_b.schema_migrations has dbmate's table layout" in down.out
    assert layout(database_url, "org_b") == before
    assert rows(database_url, "org_b.schema_migrations") == ["20240101000000"]

    status = run_dbmate(dbmate, dbmate_url(database_url, search_path="org_b"), dbmate_dir, "status")
    assert status.returncode == 0, status.stderr
    assert "[X] 20240101000000_widgets.sql" in status.stdout
