"""Two repos whose URLs name one database share its ``public.schema_migrations``: versions must not collide.

The generator gives a repo versions above those of the other repos on its database; a collision that exists
anyway (files made before, by hand, elsewhere) is a version conflict: refused, never reported as an edit, and
never "repaired" onto the other repo's row.
"""

from __future__ import annotations

from pathlib import Path

import psycopg

from tests.conftest import Result, run_cli, write

REPOS = """apiVersion: orchestrator/v1
kind: Repo
metadata: {name: app}
spec:
  url: ${APP_URL}
---
apiVersion: orchestrator/v1
kind: Repo
metadata: {name: billing}
spec:
  url: ${BILLING_URL}
"""

RESOURCE = """apiVersion: orchestrator/v1
kind: Resource
metadata: {{name: {name}}}
spec:
  repo: {repo}
  table: {table}
  attributes:
    - {{name: id, type: bigint, primaryKey: true}}
"""


def cli(root: Path, url: str, *args: str) -> Result:
    """Both repos' URLs name the same database, written differently (host and keywords reordered)."""
    other = " ".join(reversed(url.split())) if "://" not in url else url
    return run_cli(*args, cwd=root, env={"APP_URL": url, "BILLING_URL": other})


def bookkeeping(url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT version, name, checksum FROM public.schema_migrations ORDER BY 1").fetchall()


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        found = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {str(r[0]) for r in found}


def migration(root: Path, repo: str, file: str, table: str) -> Path:
    return write(
        root / "priv" / repo / "migrations" / file,
        f"-- migrate:up\nCREATE TABLE {table} (id bigint PRIMARY KEY);\n-- migrate:down\nDROP TABLE {table};\n",
    )


def test_generated_versions_are_unique_across_repos_on_one_database(tmp_path: Path, database_url: str) -> None:
    write(tmp_path / "config" / "repos.yaml", REPOS)
    write(tmp_path / "config" / "notes.yaml", RESOURCE.format(name="note", repo="app", table="notes"))
    write(tmp_path / "config" / "invoices.yaml", RESOURCE.format(name="invoice", repo="billing", table="invoices"))
    generated = cli(tmp_path, database_url, "generate-migrations")  # one run, one clock second for both repos
    assert generated.code == 0, generated.err
    app = sorted(p.name for p in (tmp_path / "priv/app/migrations").glob("*.sql"))
    billing = sorted(p.name for p in (tmp_path / "priv/billing/migrations").glob("*.sql"))
    assert len(app) == len(billing) == 1
    assert billing[0][:14] > app[0][:14]

    write(tmp_path / "config" / "payments.yaml", RESOURCE.format(name="payment", repo="billing", table="payments"))
    again = cli(tmp_path, database_url, "generate-migrations", "--repo", "billing")  # app's files count too
    assert again.code == 0, again.err
    billing = sorted(p.name for p in (tmp_path / "priv/billing/migrations").glob("*.sql"))
    assert len(billing) == 2 and billing[1][:14] > billing[0][:14] > app[0][:14]

    migrated = cli(tmp_path, database_url, "migrate")
    assert migrated.code == 0, migrated.err
    assert [(str(v), n) for v, n, _ in bookkeeping(database_url)] == [
        (app[0][:14], "migrate_resources"),
        (billing[0][:14], "migrate_resources"),
        (billing[1][:14], "migrate_resources"),
    ]
    assert tables(database_url) >= {"notes", "invoices", "payments"}
    for repo in ("app", "billing"):
        status = cli(tmp_path, database_url, "status", "--repo", repo)
        assert status.code == 0, status.err
        assert "edited" not in status.out


def test_database_state_for_two_repos_on_one_database(tmp_path: Path, database_url: str) -> None:
    """The generation lock is the database's: taken once for both repos, not waited for by the second."""
    write(
        tmp_path / "config" / "repos.yaml",
        REPOS.replace("${BILLING_URL}", "${BILLING_URL}\n  timeouts: {lockWait: 2s}"),
    )
    write(tmp_path / "config" / "notes.yaml", RESOURCE.format(name="note", repo="app", table="notes"))
    write(tmp_path / "config" / "invoices.yaml", RESOURCE.format(name="invoice", repo="billing", table="invoices"))
    generated = cli(tmp_path, database_url, "generate-migrations", "--state", "database")
    assert generated.code == 0, generated.err
    with psycopg.connect(database_url) as conn:
        paths = [str(r[0]) for r in conn.execute("SELECT path FROM orchestrator.state_files WHERE path LIKE '%.sql'")]
    versions = {path.rpartition("/")[2][:14]: path.split("/")[1] for path in paths}
    assert sorted(versions.values()) == ["app", "billing"]  # two files, two versions
    migrated = cli(tmp_path, database_url, "migrate", "--state", "database")
    assert migrated.code == 0, migrated.err
    assert sorted(str(v) for v, _, _ in bookkeeping(database_url)) == sorted(versions)
    assert tables(database_url) == {"schema_migrations", "notes", "invoices"}


def test_a_version_conflict_is_refused_and_never_repaired(tmp_path: Path, database_url: str) -> None:
    write(tmp_path / "config" / "repos.yaml", REPOS)
    migration(tmp_path, "app", "20250101000000_create_notes.sql", "notes")
    migration(tmp_path, "billing", "20250101000000_create_invoices.sql", "invoices")
    applied = cli(tmp_path, database_url, "migrate", "--repo", "app")
    assert applied.code == 0, applied.err
    row = bookkeeping(database_url)
    assert [(v, n) for v, n, _ in row] == [(20250101000000, "create_notes")]

    warned = cli(tmp_path, database_url, "generate-migrations")
    assert warned.code == 0, warned.err
    clash = "20250101000000_create_notes.sql and priv/billing/migrations/20250101000000_create_invoices.sql"
    assert clash in warned.err

    for command in ("migrate", "status", "repair", "rollback"):
        result = cli(tmp_path, database_url, command, "--repo", "billing")
        assert result.code == 1, (command, result.out, result.err)
        assert "version conflict: version 20250101000000 is recorded as applied under the name 'create_notes'" in (
            result.err
        )
        assert "20250101000000_create_invoices.sql (name 'create_invoices')" in result.err
        assert "Versions must be unique per database" in result.err
        assert "edited" not in result.out
        assert bookkeeping(database_url) == row  # app's row untouched: same name, same checksum
        assert tables(database_url) == {"schema_migrations", "notes"}  # invoices never created, notes not dropped
    owner = cli(tmp_path, database_url, "status", "--repo", "app")
    assert owner.code == 0, owner.err
    assert "applied      20250101000000_create_notes" in owner.out

    # The way forward: the file not applied gets a version of its own.
    (tmp_path / "priv/billing/migrations/20250101000000_create_invoices.sql").unlink()
    migration(tmp_path, "billing", "20250101000001_create_invoices.sql", "invoices")
    fixed = cli(tmp_path, database_url, "migrate", "--repo", "billing")
    assert fixed.code == 0, fixed.err
    assert bookkeeping(database_url)[0] == row[0]
    assert [(v, n) for v, n, _ in bookkeeping(database_url)][1] == (20250101000001, "create_invoices")
    assert tables(database_url) == {"schema_migrations", "notes", "invoices"}
