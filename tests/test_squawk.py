"""Generated migrations change existing tables without blocking them: squawk, an outside linter, judges the
SQL (``tests/squawk.py``), and a real PostgreSQL and the real dbmate apply it.

The evolution is one a live application makes: on tables that exist and hold rows, a column becomes NOT NULL,
a new column gets a foreign key and its index, a unique identity, a check constraint and a plain index arrive;
and a new table comes with its own foreign key, index and check. For the existing tables the generator must
write the online-safe forms (constraints ``NOT VALID`` then ``VALIDATE``, NOT NULL through a validated check,
indexes ``CONCURRENTLY``, each in a ``transaction:false`` file of its own); for the new table the plain forms,
in the file that creates it, where they cost nothing. squawk must find none of the blocking rules
(``squawk.BLOCKING``) in any UP section; the database must end with every constraint validated, every index
valid, no helper check left, and the rollback must give the previous catalog back exactly.

Needs the ``squawk`` binary (``squawk-cli`` in requirements-dev.lock) and ``dbmate`` (``.ci/run`` installs it):
without them these tests fail, they never skip.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from orchestrator import config, model
from orchestrator.migrations import files
from tests import catalog, squawk
from tests.conftest import run_cli, write
from tests.harness import res
from tests.test_dbmate import dbmate_url, run_dbmate

MIGRATIONS = Path("priv/app/migrations")
REPO = "apiVersion: orchestrator/v1\nkind: Repo\nmetadata: {name: app}\nspec:\n  url: ${APP_URL}\n"
ORG = res("org", "orgs", "    - {name: id, type: bigint, primaryKey: true}\n    - {name: name, type: text}\n")
USER_ATTRIBUTES = (
    "    - {name: id, type: bigint, primaryKey: true}\n"
    "    - {name: email, type: text%s}\n"
    "    - {name: handle, type: text}\n"
    "    - {name: age, type: integer}\n"
    "    - {name: created_at, type: timestamptz, allowNull: false, defaultSql: now()}\n"
)
USER_V1 = res("user", "users", USER_ATTRIBUTES % "")
USER_V2 = res(
    "user",
    "users",
    USER_ATTRIBUTES % ", allowNull: false"
    + "    - {name: org_id, type: bigint, references: {resource: org, index: true}}\n",
    "  identities:\n    - {name: unique_handle, keys: [handle]}\n"
    '  checkConstraints:\n    - {name: age_non_negative, check: "age >= 0"}\n'
    "  indexes:\n    - {fields: [created_at]}\n",
)
PET = res(
    "pet",
    "pets",
    "    - {name: id, type: bigint, primaryKey: true}\n"
    "    - {name: owner_id, type: bigint, allowNull: false, references: {resource: user, index: true}}\n"
    "    - {name: name, type: text}\n    - {name: age, type: integer}\n",
    '  checkConstraints:\n    - {name: pet_age_non_negative, check: "age >= 0"}\n  indexes:\n    - {fields: [name]}\n',
)
ROWS = (
    "INSERT INTO orgs SELECT g, 'org ' || g FROM generate_series(1, 10) g",
    "INSERT INTO users (id, email, handle, age) SELECT g, 'u' || g || '@example.com', 'h' || g, g % 90 "
    "FROM generate_series(1, 5000) g",
)
# A check PostgreSQL prints for "column IS NOT NULL": the helper of an online SET NOT NULL, which must not stay.
HELPER_CHECK = re.compile(r"^CHECK \(\(\w+ IS NOT NULL\)\)$")
# A statement on the new table: creating it, altering it, or an index on it (quoted or not, qualified or not).
ON_PETS = re.compile(r'\b(?:TABLE|ON)\s+(?:"?public"?\.)?"?pets"?(?:\s|\(|$)', re.IGNORECASE)

Applier = Callable[[list[Path]], None]


@pytest.fixture(scope="module")
def squawk_binary() -> str:
    try:
        return squawk.binary()
    except squawk.SquawkError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def dbmate() -> str:
    found = shutil.which("dbmate")
    if found is None:
        pytest.fail("dbmate is not installed: npm install -g dbmate (.ci/run installs the pinned version)")
    return found


# -- the oracle itself ---------------------------------------------------------------------------------------

BLOCKING_BY_HAND = """-- Hand-written, blocking: every statement changes a table the file does not create.
-- migrate:up
CREATE INDEX users_email_index ON users (email);
ALTER TABLE users ADD CONSTRAINT users_org_id_fkey FOREIGN KEY (org_id) REFERENCES orgs (id);
ALTER TABLE users ALTER COLUMN email SET NOT NULL;
ALTER TABLE users ADD CONSTRAINT age_non_negative CHECK (age >= 0);
ALTER TABLE users ALTER COLUMN id TYPE bigint;
CREATE INDEX CONCURRENTLY users_handle_index ON users (handle);
-- migrate:down
CREATE INDEX orgs_name_index ON orgs (name);
"""

# The same change written online-safe, as the generator is to write it: the new table's plain forms in the
# transactional file that creates it, each concurrent index alone, then the validations.
ONLINE_BY_HAND = {
    "20260101000000_evolve.sql": """-- migrate:up
CREATE TABLE pets (id bigint PRIMARY KEY, owner_id bigint NOT NULL, name text, age bigint);
CREATE INDEX pets_name_index ON pets (name);
ALTER TABLE pets ADD CONSTRAINT pet_age_non_negative CHECK (age >= 0);
ALTER TABLE pets ADD CONSTRAINT pets_owner_id_fkey FOREIGN KEY (owner_id) REFERENCES users (id);
ALTER TABLE users ADD COLUMN org_id bigint;
ALTER TABLE users ADD CONSTRAINT users_email_not_null CHECK (email IS NOT NULL) NOT VALID;
ALTER TABLE users ADD CONSTRAINT age_non_negative CHECK (age >= 0) NOT VALID;
ALTER TABLE users ADD CONSTRAINT users_org_id_fkey FOREIGN KEY (org_id) REFERENCES orgs (id) NOT VALID;
-- migrate:down
DROP TABLE pets;
""",
    "20260101000001_evolve_concurrently.sql": """-- migrate:up transaction:false
CREATE INDEX CONCURRENTLY users_org_id_index ON users (org_id);
-- migrate:down transaction:false
DROP INDEX CONCURRENTLY users_org_id_index;
""",
    "20260101000002_evolve_validate.sql": """-- migrate:up transaction:false
ALTER TABLE users VALIDATE CONSTRAINT users_org_id_fkey;
ALTER TABLE users VALIDATE CONSTRAINT age_non_negative;
ALTER TABLE users VALIDATE CONSTRAINT users_email_not_null;
ALTER TABLE users ALTER COLUMN email SET NOT NULL;
ALTER TABLE users DROP CONSTRAINT users_email_not_null;
-- migrate:down
ALTER TABLE users ALTER COLUMN email DROP NOT NULL;
""",
}


def test_the_oracle_flags_blocking_ddl_on_existing_tables(squawk_binary: str) -> None:
    path = Path("20260101000000_blocking.sql")
    found = {(f.line, f.rule) for f in squawk.blocking(squawk.lint(path, text=BLOCKING_BY_HAND, pg_version="15.0"))}
    assert found == {
        (3, "require-concurrent-index-creation"),
        (4, "constraint-missing-not-valid"),
        (4, "adding-foreign-key-constraint"),
        (5, "adding-not-nullable-field"),
        (6, "constraint-missing-not-valid"),
        (7, "changing-column-type"),
        (8, "ban-concurrent-index-creation-in-transaction"),  # the section is transactional
    }  # and the down's CREATE INDEX (line 10) is not linted


def test_the_oracle_passes_the_online_forms_and_reads_the_header(squawk_binary: str) -> None:
    for name, text in ONLINE_BY_HAND.items():
        findings = squawk.lint(Path(name), text=text, pg_version="15.0")
        assert squawk.blocking(findings) == [], squawk.describe(Path(name), findings, text)
    # The header decides: CONCURRENTLY is a finding in a transactional section only. (squawk reports it only
    # in a file of two statements or more; dbmate and the runner would fail a lone one in a transaction too,
    # which test_dbmate_applies_the_generated_evolution checks on the generated files.)
    body = "ALTER TABLE users ADD COLUMN note text;\nCREATE INDEX CONCURRENTLY users_note_index ON users (note);\n"
    for header, expected in (("-- migrate:up", [4]), ("-- migrate:up transaction:false", [])):
        found = squawk.blocking(squawk.lint(Path("x.sql"), text=f"-- x\n{header}\n{body}-- migrate:down\n"))
        assert [(f.line, f.rule) for f in found] == [
            (line, "ban-concurrent-index-creation-in-transaction") for line in expected
        ]


# -- the generator, judged -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    tables: dict[str, catalog.CatalogTable]
    validity: list[tuple[Any, ...]]


@dataclass
class Evolution:
    env: dict[str, str]
    base: list[Path]
    """The generated files of the base schema, in version order (relative to root)."""
    evolution: list[Path]
    """The generated files of the evolution, in version order (relative to root)."""
    before: Snapshot
    """The catalog between the two (base applied, with rows)."""


def snapshot(url: str) -> Snapshot:
    """public's tables as tests/catalog.py reads them, and every constraint's and index's validity."""
    with psycopg.connect(url) as conn:
        validity = conn.execute(
            "SELECT 'constraint', conrelid::regclass::text, conname, convalidated, pg_get_constraintdef(c.oid) "
            "FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = 'public' "
            "UNION ALL "
            "SELECT 'index', i.indrelid::regclass::text, x.relname, i.indisvalid AND i.indisready, "
            "pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid "
            "JOIN pg_namespace n ON n.oid = x.relnamespace WHERE n.nspname = 'public' ORDER BY 1, 2, 3"
        ).fetchall()
        return Snapshot(catalog.read_schema(conn, "public"), validity)


def configure(root: Path, *resources: str) -> model.Config:
    directory = root / "config"
    shutil.rmtree(directory, ignore_errors=True)
    write(directory / "repo.yaml", REPO)
    for i, text in enumerate(resources):
        write(directory / f"r{i}.yaml", text)
    return config.load(directory, base=root)


def generate(root: Path, env: dict[str, str], name: str) -> list[Path]:
    """Run generate-migrations; return the files it added, in version order."""
    before = set((root / MIGRATIONS).glob("*.sql"))
    result = run_cli("generate-migrations", "--name", name, cwd=root, env=env)
    assert result.code == 0, result.out + result.err
    added = sorted(set((root / MIGRATIONS).glob("*.sql")) - before)
    assert added, result.out
    return [p.relative_to(root) for p in added]


def execute(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.encode())


def evolve(root: Path, url: str, apply: Applier) -> Evolution:
    """Generate the base schema, ``apply`` it, load rows, then generate the evolution (not applied)."""
    env = {"APP_URL": url}
    configure(root, ORG, USER_V1)
    base = generate(root, env, "base")
    apply(base)
    execute(url, *ROWS)
    before = snapshot(url)
    configure(root, ORG, USER_V2, PET)
    return Evolution(env, base, generate(root, env, "evolve"), before)


def migrate_with_orchestrator(root: Path, url: str) -> Applier:
    def apply(_: list[Path]) -> None:
        result = run_cli("migrate", cwd=root, env={"APP_URL": url})
        assert result.code == 0, result.out + result.err

    return apply


def pg_version(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    return squawk.server_version(int(row[0]))


def up_statements(path: Path) -> tuple[bool, list[str]]:
    parsed = files.parse(path)
    return parsed.up.transaction, parsed.up.statements


def assert_online_result(url: str, cfg: model.Config) -> None:
    """The evolution is applied completely and nothing half-done is left behind."""
    with psycopg.connect(url) as conn:
        catalog.assert_matches(conn, cfg.tables, "public")
    state = snapshot(url)
    unfinished = [row for row in state.validity if not row[3]]
    assert unfinished == [], f"not validated / not valid: {unfinished}"
    helpers = [row for row in state.validity if row[0] == "constraint" and HELPER_CHECK.match(str(row[4]))]
    assert helpers == [], f"helper checks left behind: {helpers}"
    with psycopg.connect(url) as conn:
        not_null = conn.execute(
            "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'public.users'::regclass AND attname = 'email'"
        ).fetchone()
    assert not_null == (True,)


def test_generated_evolution_of_existing_tables_passes_squawk(
    tmp_path: Path, database_url: str, squawk_binary: str
) -> None:
    ev = evolve(tmp_path, database_url, migrate_with_orchestrator(tmp_path, database_url))
    version = pg_version(database_url)
    report = []
    for relative in ev.base + ev.evolution:
        path = tmp_path / relative
        found = squawk.blocking(squawk.lint(path, pg_version=version))
        if found:
            report.append(squawk.describe(path, found))
    assert report == [], "squawk finds blocking DDL in the generated migrations:\n" + "\n".join(report)


def test_the_new_table_keeps_the_plain_forms_in_its_own_file(tmp_path: Path, database_url: str) -> None:
    ev = evolve(tmp_path, database_url, migrate_with_orchestrator(tmp_path, database_url))
    on_pets = {
        relative.name: [s for s in up_statements(tmp_path / relative)[1] if ON_PETS.search(s)]
        for relative in ev.evolution
    }
    holding = [name for name, statements in on_pets.items() if statements]
    assert len(holding) == 1, f"statements on the new table are spread over {holding}"
    transactional, _ = up_statements(tmp_path / MIGRATIONS / holding[0])
    assert transactional
    statements = on_pets[holding[0]]
    assert len(statements) == 5, statements  # the table, two indexes, the check, the foreign key
    online = [s for s in statements if re.search(r"CONCURRENTLY|NOT VALID|VALIDATE", s, re.IGNORECASE)]
    assert online == [], "the new table is empty: its plain forms cost nothing and need no second file"


def test_generated_evolution_applies_validated_and_rolls_back(tmp_path: Path, database_url: str) -> None:
    ev = evolve(tmp_path, database_url, migrate_with_orchestrator(tmp_path, database_url))
    migrated = run_cli("migrate", cwd=tmp_path, env=ev.env)
    assert migrated.code == 0, migrated.out + migrated.err
    assert_online_result(database_url, config.load(tmp_path / "config", base=tmp_path))
    check = run_cli("generate-migrations", "--check", cwd=tmp_path, env=ev.env)
    assert check.code == 0, check.out + check.err

    back = run_cli("rollback", "--step", str(len(ev.evolution)), cwd=tmp_path, env=ev.env)
    assert back.code == 0, back.out + back.err
    assert snapshot(database_url) == ev.before


def test_dbmate_applies_the_generated_evolution(tmp_path: Path, database_url: str, dbmate: str) -> None:
    url = dbmate_url(database_url)
    directory = tmp_path / "dbmate"
    directory.mkdir()

    def apply(paths: Sequence[Path]) -> None:
        for relative in paths:
            shutil.copy(tmp_path / relative, directory / relative.name)
        up = run_dbmate(dbmate, url, directory, "up")
        assert up.returncode == 0, up.stdout + up.stderr

    ev = evolve(tmp_path, database_url, apply)
    for relative in ev.evolution:
        # dbmate sends a section as one query, and PostgreSQL runs a query of several statements as one
        # transaction: CREATE INDEX CONCURRENTLY must be alone in a transaction:false section (else 25001)
        transactional, statements = up_statements(tmp_path / relative)
        if any(re.search(r"\bCONCURRENTLY\b", s, re.IGNORECASE) for s in statements):
            assert not transactional and len(statements) == 1, f"{relative.name}: {statements}"
    apply(ev.evolution)
    assert_online_result(database_url, config.load(tmp_path / "config", base=tmp_path))

    for _ in ev.evolution:
        down = run_dbmate(dbmate, url, directory, "rollback")
        assert down.returncode == 0, down.stdout + down.stderr
    assert snapshot(database_url) == ev.before
