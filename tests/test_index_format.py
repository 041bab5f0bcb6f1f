"""Operator classes and ordering on index fields, and UNIQUE constraints (identities with ``constraint: true``),
on real PostgreSQL: generate, apply up, compare the live catalog with the manifests, apply down, compare with the
previous state (``tests/harness.py``, which also lints every up-migration with squawk)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import config, indexfield
from orchestrator.catalog import compare
from orchestrator.generator import generate, snapshots
from tests.conftest import REPO_ROOT, run_cli, write
from tests.harness import Project, repo_yaml, res

ID = "    - {name: id, type: bigint, primaryKey: true}\n"
COLUMNS = ID + (
    "    - {name: name, type: varchar(100)}\n"
    "    - {name: title, type: text}\n"
    "    - {name: created_at, type: timestamptz}\n"
)


@pytest.fixture
def project(tmp_path: Path, database_url: str) -> Project:
    return Project(tmp_path, database_url)


def sql_of(plan: generate.Plan) -> str:
    return "\n".join(m.text for m in plan.migrations)


def keys(project: Project, index: str) -> str:
    rows = project.query("SELECT pg_get_indexdef(%s::regclass)", f"public.{index}")
    return str(rows[0][0])


def test_opclass_and_ordering_with_the_table_then_added_online_then_renamed(project: Project) -> None:
    indexes = (
        "  indexes:\n"
        '    - {fields: ["name varchar_pattern_ops"]}\n'
        '    - {fields: ["created_at desc"]}\n'
        '    - {fields: ["lower(title) text_pattern_ops"], name: posts_title_like}\n'
        '    - {fields: ["(title || name) DESC NULLS LAST", "id nulls first"], name: posts_mixed}\n'
    )
    plan = project.step(res("post", "posts", COLUMNS, indexes))
    text = sql_of(plan)
    assert 'CREATE INDEX "posts_name_index" ON "public"."posts" ("name" "varchar_pattern_ops")' in text
    assert '("created_at" DESC)' in text
    assert 'CREATE INDEX "posts_title_like" ON "public"."posts" ((lower(title)) "text_pattern_ops")' in text
    assert "varchar_pattern_ops" in keys(project, "posts_name_index")
    assert "DESC" in keys(project, "posts_created_at_index")
    project.execute("INSERT INTO posts SELECT g, 'n' || g, 't' || g, now() FROM generate_series(1, 500) g")

    added = indexes + '    - {fields: ["title text_pattern_ops DESC"]}\n'
    plan = project.step(res("post", "posts", COLUMNS, added))
    concurrent = [m for m in plan.migrations if "CONCURRENTLY" in m.text]
    assert len(concurrent) == 1 and '("title" "text_pattern_ops" DESC)' in concurrent[0].text

    renamed = COLUMNS.replace(
        "{name: name, type: varchar(100)}", "{name: label, type: varchar(100), renamedFrom: name}"
    )
    kept = added.replace('"name varchar_pattern_ops"]}', '"label varchar_pattern_ops"], name: posts_name_index}')
    kept = kept.replace("(title || name)", "(title || label)")
    plan = project.step(res("post", "posts", renamed, kept))
    ops = [type(op).__name__ for m in plan.migrations for op in m.operations]
    assert "RenameColumn" in ops
    assert "varchar_pattern_ops" in keys(project, "posts_name_index")  # not rebuilt: renamed with its column
    project.undo()
    project.undo()
    project.undo()


USERS = ID + "    - {name: email, type: text}\n    - {name: org, type: integer}\n"


def constraints(project: Project) -> dict[str, tuple[object, ...]]:
    """name -> (contype, convalidated, condeferrable, condeferred, index name) of public.users' UNIQUE constraints."""
    rows = project.query(
        "SELECT conname::text, contype::text, convalidated, condeferrable, condeferred, conindid::regclass::text "
        "FROM pg_constraint WHERE conrelid = 'public.users'::regclass AND contype = 'u'"
    )
    return {str(r[0]): tuple(r[1:]) for r in rows}


def test_unique_constraints_with_the_table(project: Project) -> None:
    identities = (
        "  identities:\n"
        "    - {name: email, keys: [email], constraint: true}\n"
        "    - {name: org_email, keys: [org, email], constraint: true, deferrable: initiallyDeferred,"
        " nullsDistinct: false, indexName: users_org_email_key}\n"
    )
    plan = project.step(res("user", "users", USERS, identities))
    text = sql_of(plan)
    assert 'ADD CONSTRAINT "users_email_index" UNIQUE ("email")' in text
    assert (
        'ADD CONSTRAINT "users_org_email_key" UNIQUE NULLS NOT DISTINCT ("org", "email") DEFERRABLE INITIALLY DEFERRED'
        in text
    )
    assert constraints(project) == {
        "users_email_index": ("u", True, False, False, "users_email_index"),
        "users_org_email_key": ("u", True, True, True, "users_org_email_key"),
    }
    ref = res("post", "posts", ID + "    - {name: author, type: text, references: {resource: user, column: email}}\n")
    project.step(res("user", "users", USERS, identities), ref)  # a foreign key to a UNIQUE constraint's column
    project.undo()
    project.undo()
    assert project.query("SELECT to_regclass('public.users')") == [(None,)]


def test_unique_constraint_added_online_switched_and_dropped(project: Project) -> None:
    project.step(res("user", "users", USERS, "  identities:\n    - {name: org, keys: [org]}\n"))
    project.execute("INSERT INTO users SELECT g, 'u' || g || '@x', g FROM generate_series(1, 1000) g")
    both = (
        "  identities:\n    - {name: org, keys: [org]}\n"
        "    - {name: email, keys: [email], constraint: true, deferrable: true, nullsDistinct: false}\n"
    )
    plan = project.step(res("user", "users", USERS, both))
    suffixes = [m.path.name.split("_", 1)[1] for m in plan.migrations]
    assert suffixes == ["step_concurrently.sql", "step_after_indexes.sql"], suffixes
    assert 'CREATE UNIQUE INDEX CONCURRENTLY "users_email_index"' in plan.migrations[0].text
    assert (
        'ADD CONSTRAINT "users_email_index" UNIQUE USING INDEX "users_email_index" DEFERRABLE INITIALLY IMMEDIATE'
        in plan.migrations[1].text
    )
    assert constraints(project) == {"users_email_index": ("u", True, True, False, "users_email_index")}
    # each step's down alone gives back the catalog after the step before it
    project.apply(plan.migrations[1:], "down")
    assert constraints(project) == {}
    assert keys(project, "users_email_index").startswith("CREATE UNIQUE INDEX")
    project.apply(plan.migrations[1:], "up")

    posts = res("post", "posts", ID + "    - {name: org, type: integer, references: {resource: user, column: org}}\n")
    project.step(res("user", "users", USERS, both), posts)
    switched = both.replace("{name: org, keys: [org]}", "{name: org, keys: [org], constraint: true}")
    plan = project.step(res("user", "users", USERS, switched), posts)
    # no rebuild: the constraint takes the index over; the foreign key to it is dropped and added again (NOT VALID,
    # validated later), as the down's DROP CONSTRAINT could not go through under it
    assert [type(op).__name__ for m in plan.migrations for op in m.operations] == [
        "DropForeignKey",
        "AttachUnique",
        "AddForeignKey",
        "ValidateConstraint",
    ]
    assert set(constraints(project)) == {"users_email_index", "users_org_index"}

    back = switched.replace(", constraint: true}", "}")
    plan = project.step(res("user", "users", USERS, back), posts)  # constraint -> bare index: rebuilt online
    assert any('CREATE UNIQUE INDEX CONCURRENTLY "users_org_index"' in m.text for m in plan.migrations)
    # uniqueness is not enforced between the DROP CONSTRAINT (step 1) and the rebuild: the header and plan say so
    gap = "UNIQUENESS NOT ENFORCED: users_org_index on public.users is dropped in step 1 and built again CONCURRENTLY"
    assert gap in plan.migrations[0].text and any(gap in w for w in plan.warnings), plan.migrations[0].text
    assert set(constraints(project)) == {"users_email_index"}

    plan = project.step(res("user", "users", USERS), allow_destructive=True)
    assert constraints(project) == {}
    for _ in range(6):
        project.undo()


def test_unique_constraint_renamed_with_its_index_and_its_column(project: Project) -> None:
    identity = "  identities:\n    - {name: email, keys: [email], constraint: true, nullsDistinct: false}\n"
    project.step(res("user", "users", USERS, identity))
    project.execute("INSERT INTO users SELECT g, 'u' || g || '@x', g FROM generate_series(1, 100) g")
    renamed = identity.replace("nullsDistinct: false}", "nullsDistinct: false, indexName: users_email_key}")
    plan = project.step(res("user", "users", USERS, renamed))
    assert [type(op).__name__ for m in plan.migrations for op in m.operations] == ["RenameIndex"]
    assert set(constraints(project)) == {"users_email_key"}  # ALTER INDEX … RENAME renames the constraint too
    mail = USERS.replace("{name: email, type: text}", "{name: mail, type: text, renamedFrom: email}")
    plan = project.step(res("user", "users", mail, renamed.replace("keys: [email]", "keys: [mail]")))
    assert [type(op).__name__ for m in plan.migrations for op in m.operations] == ["RenameColumn"]
    plan = project.step(res("users2", "users", mail, "  identities:\n    - {name: email, keys: [mail]}\n"))
    assert [type(op).__name__ for m in plan.migrations for op in m.operations] == ["DropIndex", "CreateIndex"]
    assert constraints(project) == {}  # the constraint dropped, a bare unique index built concurrently
    for _ in range(4):
        project.undo()


@pytest.mark.parametrize(
    ("case", "located"),
    [
        (
            "100_index_field_not_renderable.yaml",
            "config/100_index_field_not_renderable.yaml:18:11: spec.indexes[0].fields[0]: after column 'name', "
            "expected [COLLATE collation] [opclass] [ASC|DESC] [NULLS FIRST|LAST], found 'varchar_pattern_ops extra'",
        ),
        (
            "101_identity_constraint_rules.yaml",
            "config/101_identity_constraint_rules.yaml:17:61: spec.identities[0].where: a UNIQUE constraint cannot "
            "be partial; drop where or constraint: true",
        ),
    ],
)
def test_cli_rejects_unrenderable_fields_and_constraint_misuse(tmp_path: Path, case: str, located: str) -> None:
    """validate and generate-migrations: located errors, exit 2, nothing written (not a failed migration)."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / case).write_text((REPO_ROOT / "tests" / "bad" / case).read_text())
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for command in ("validate", "generate-migrations"):
        result = run_cli(command, "--config", "config", cwd=tmp_path)
        assert result.code == 2, result.out + result.err
        assert located in result.err
        assert "nothing was written or applied" in result.err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_tenant_table_with_opclass_index_and_unique_constraint(project: Project) -> None:
    context = "  multitenancy: {strategy: context}\n"
    first = context + '  indexes:\n    - {fields: ["name varchar_pattern_ops", "created_at DESC NULLS LAST"]}\n'
    project.step(res("post", "posts", COLUMNS, first))
    project.execute("INSERT INTO t1.posts SELECT g, 'n' || g, 't' || g, now() FROM generate_series(1, 200) g")
    plan = project.step(
        res("post", "posts", COLUMNS, first + "  identities:\n    - {name: title, keys: [title], constraint: true}\n")
    )
    assert [m.scope for m in plan.migrations] == ["tenant", "tenant"]
    assert 'ADD CONSTRAINT "posts_title_index" UNIQUE USING INDEX "posts_title_index"' in plan.migrations[1].text
    project.undo()
    project.undo()


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("name varchar_pattern_ops", "name varchar_pattern_ops"),
        ("  created_at   desc ", "created_at DESC"),
        ("created_at DESC NULLS FIRST", "created_at DESC"),
        ("created_at ASC NULLS LAST", "created_at"),
        ("created_at asc nulls first", "created_at NULLS FIRST"),
        ("name Text_Pattern_Ops DESC NULLS LAST", "name text_pattern_ops DESC NULLS LAST"),
        ("name pg_catalog.text_pattern_ops", "name text_pattern_ops"),
        ("name myschema.my_ops", "name myschema.my_ops"),
        ("lower(title) text_pattern_ops", "lower(title) text_pattern_ops"),
        ("(a || b) desc nulls last", "(a || b) DESC NULLS LAST"),
        ("a || b", "a || b"),
        ("name IS NULL", "name IS NULL"),
        ("lower(name) IS NOT NULL", "lower(name) IS NOT NULL"),
        ("CASE WHEN a THEN b ELSE name END", "CASE WHEN a THEN b ELSE name END"),
        ("coalesce(a, 'x;y')", "coalesce(a, 'x;y')"),
    ],
)
def test_field_canonical_form(written: str, canonical: str) -> None:
    assert indexfield.canonical(written, {"name", "created_at", "a", "b"}) == canonical


@pytest.mark.parametrize(
    "bad",
    [
        "name varchar_pattern_ops extra",
        "name DESC DESC",
        "name NULLS",
        "nme varchar_pattern_ops",
        "lower(name",
        "lower(name))",
        "a || b DESC",
        "lower(a) || b text_pattern_ops",
        "lower(a) bogus extra",
        "lower(a); DROP TABLE t",
        "'unclosed",
        "",
    ],
)
def test_field_that_cannot_be_rendered_is_refused(bad: str) -> None:
    with pytest.raises(indexfield.FieldError):
        indexfield.parse(bad, {"name", "a", "b"})


def test_catalog_keys_with_suffix_compare_exactly() -> None:
    assert compare._same_key("name varchar_pattern_ops", "name VARCHAR_PATTERN_OPS")
    assert not compare._same_key("name varchar_pattern_ops", "name")
    assert not compare._same_key("created_at DESC", "created_at")
    assert not compare._same_key("created_at DESC", "created DESC")
    assert compare._same_key("lower(title) text_pattern_ops", "lower(title) text_pattern_ops")
    assert not compare._same_key("lower(title) text_pattern_ops", "lower(title)")


def test_snapshot_leaves_default_constraint_fields_out_and_round_trips(tmp_path: Path) -> None:
    write(tmp_path / "config/repo.yaml", repo_yaml())
    identities = (
        "  identities:\n    - {name: org, keys: [org]}\n"
        "    - {name: email, keys: [email], constraint: true, deferrable: initiallyDeferred}\n"
    )
    write(tmp_path / "config/r.yaml", res("user", "users", USERS, identities))
    table = config.load(tmp_path / "config", base=tmp_path).tables[0]
    plain, constrained = table.canonical()["identities"]
    assert "constraint" not in plain and "deferrable" not in plain  # old snapshots keep their bytes and hash
    assert (constrained["constraint"], constrained["deferrable"]) == (True, "deferred")
    assert snapshots.from_canonical(table.canonical(), "app").canonical() == table.canonical()
