"""Every generator operation on a real PostgreSQL: generate, apply up, compare the live catalog with the
manifests, apply down, compare with the previous state (``tests/harness.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.generator import generate
from orchestrator.generator import operations as ops
from tests.harness import Project, res

ID = "    - {name: id, type: bigint, primaryKey: true}\n"
UUID_ID = "    - {name: id, type: uuid, primaryKey: true, defaultSql: gen_random_uuid()}\n"


@pytest.fixture(params=["files", "database"])
def project(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> Project:
    """The same tests on both state backends: snapshots and migrations in files, or in the database."""
    return Project(tmp_path, database_url, state_kind=request.param)


def kinds(plan: generate.Plan) -> list[str]:
    return [type(op).__name__ for m in plan.migrations for op in m.operations]


def test_create_tables_with_fk_cycle_then_drop_them(project: Project) -> None:
    a = res(
        "a",
        "alphas",
        ID + "    - {name: beta_id, type: bigint, references: {resource: b}}\n"
        "    - {name: parent_id, type: bigint, references: {resource: a, onDelete: cascade}}\n",
    )
    b = res("b", "betas", ID + "    - {name: alpha_id, type: bigint, references: {resource: a, index: true}}\n")
    plan = project.step(a, b)
    assert kinds(plan)[:2] == ["CreateTable", "CreateTable"]  # every table before any foreign key
    assert kinds(plan)[-3:] == ["AddForeignKey"] * 3
    other = res("c", "others", ID)
    plan = project.step(other, allow_destructive=True)
    assert {op.table for m in plan.migrations for op in m.operations if isinstance(op, ops.DropTable)} == {
        "public.alphas",
        "public.betas",
    }
    project.undo()  # the down recreates both tables, their index and their foreign keys
    project.undo()


def test_drop_order_puts_referencing_tables_first(project: Project) -> None:
    parent = res("parent", "parents", ID)
    child = res("child", "children", ID + "    - {name: parent_id, type: bigint, references: {resource: parent}}\n")
    project.step(parent, child)
    plan = project.step(allow_destructive=True)
    drops = [op.table for m in plan.migrations for op in m.operations if isinstance(op, ops.DropTable)]
    assert drops == ["public.children", "public.parents"]
    project.undo()


def test_rename_table_keeps_data_and_renames_derived_names(project: Project) -> None:
    fields = (
        ID + "    - {name: title, type: text}\n    - {name: parent_id, type: bigint, references: {resource: post}}\n"
    )
    identity = "  identities:\n    - {name: unique_title, keys: [title]}\n"
    project.step(res("post", "articles", fields, identity))
    project.execute("INSERT INTO articles (id, title) VALUES (1, 'kept')")
    plan = project.step(
        res("post", "posts", fields.replace("articles", "posts"), identity + "  renamedFrom: articles\n")
    )
    assert "DropTable" not in kinds(plan) and "RenameTable" in kinds(plan)
    assert project.query("SELECT title FROM posts") == [("kept",)]
    project.undo()
    assert project.query("SELECT title FROM articles") == [("kept",)]


def test_move_table_to_another_schema(project: Project) -> None:
    project.step(res("thing", "things", ID))
    project.execute("INSERT INTO things VALUES (7)")
    plan = project.step(res("thing", "things", ID, "  schema: sales\n"))
    assert kinds(plan) == ["CreateSchema", "MoveTable"]
    assert project.query("SELECT id FROM sales.things") == [(7,)]
    project.undo()
    assert project.query("SELECT id FROM public.things") == [(7,)]


def test_add_drop_and_rename_columns(project: Project) -> None:
    project.step(res("user", "users", ID + "    - {name: nick, type: text}\n    - {name: age, type: integer}\n"))
    project.execute("INSERT INTO users VALUES (1, 'ann', 30)")
    plan = project.step(
        res(
            "user",
            "users",
            ID + "    - {name: handle, type: varchar(40), renamedFrom: nick, "
            "allowNull: false, default: anon}\n"
            "    - {name: score, type: integer, default: 0}\n",
        ),
        allow_destructive=True,
        allow_blocking=True,  # text -> varchar(40) rewrites the table
    )
    assert kinds(plan)[0] == "RenameColumn"  # the rename comes before its type/null/default changes
    assert "DropColumn" in kinds(plan) and "AddColumn" in kinds(plan)
    assert project.query("SELECT handle, score FROM users") == [("ann", 0)]
    project.undo()
    assert project.query("SELECT nick FROM users") == [("ann",)]


def test_type_change_uses_a_cast(project: Project) -> None:
    project.step(res("t", "things", ID + "    - {name: code, type: text, default: '7'}\n"))
    project.execute("INSERT INTO things VALUES (1, '42')")
    plan = project.step(res("t", "things", ID + "    - {name: code, type: integer, default: 7}\n"), allow_blocking=True)
    assert any("casts every value" in w for w in plan.warnings)
    assert project.query("SELECT code FROM things") == [(42,)]
    project.undo()
    assert project.query("SELECT code FROM things") == [("42",)]


def test_widening_type_change_has_no_warning(project: Project) -> None:
    project.step(res("t", "things", ID + "    - {name: code, type: varchar(10)}\n    - {name: n, type: integer}\n"))
    plan = project.step(
        res("t", "things", ID + "    - {name: code, type: varchar(20)}\n    - {name: n, type: bigint}\n"),
        allow_blocking=True,  # integer -> bigint rewrites the table (but converts every value)
    )
    assert kinds(plan) == ["AlterType", "AlterType"] and plan.warnings == []
    project.undo()


def test_not_null_and_defaults_literal_and_sql(project: Project) -> None:
    project.step(res("t", "things", ID + "    - {name: label, type: text}\n    - {name: at, type: timestamptz}\n"))
    plan = project.step(
        res(
            "t",
            "things",
            ID + '    - {name: label, type: text, allowNull: false, default: "it\'s"}\n'
            "    - {name: at, type: timestamptz, defaultSql: now()}\n",
        )
    )
    # online: a helper check NOT VALID, validated in a step of its own, then SET NOT NULL and the helper dropped
    assert [m.path.name[15:] for m in plan.migrations] == ["step.sql", "step_validate.sql"]
    assert sorted(kinds(plan)) == ["AlterDefault", "AlterDefault", "AlterNull", "NullCheck", "ValidateConstraint"]
    assert any("becomes NOT NULL" in w for w in plan.warnings)
    assert project.query(
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'things'::regclass AND contype = 'c'"
    ) == [(0,)]
    project.execute("INSERT INTO things (id) VALUES (1)")
    assert project.query("SELECT label, at IS NOT NULL FROM things") == [("it's", True)]
    project.undo()


def test_identity_generation_on_change_and_off(project: Project) -> None:
    project.step(res("t", "things", "    - {name: id, type: bigint, primaryKey: true}\n"))
    project.step(res("t", "things", "    - {name: id, type: bigint, primaryKey: true, generated: identity}\n"))
    project.execute("INSERT INTO things DEFAULT VALUES")
    plan = project.step(res("t", "things", "    - {name: id, type: bigint, primaryKey: true, generated: always}\n"))
    assert kinds(plan) == ["AlterIdentity"]
    project.undo()
    project.undo()
    project.undo()


def test_composite_and_changed_primary_keys(project: Project) -> None:
    attrs = "    - {name: org_id, type: uuid}\n    - {name: id, type: bigint}\n"
    project.step(res("t", "things", attrs, "  primaryKey: [org_id, id]\n"))
    plan = project.step(res("t", "things", attrs, "  primaryKey: [id]\n"))
    assert kinds(plan) == ["DropPrimaryKey", "AlterNull", "AddPrimaryKey"]
    project.undo()


def test_identities_add_change_rename_drop(project: Project) -> None:
    base = ID + "    - {name: email, type: text}\n    - {name: org, type: text}\n"
    project.step(res("u", "users", base, "  identities:\n    - {name: unique_email, keys: [email]}\n"))
    plan = project.step(
        res(
            "u", "users", base, "  identities:\n    - {name: unique_email, keys: [email], indexName: users_email_key}\n"
        )
    )
    assert kinds(plan) == ["RenameIndex"]
    plan = project.step(
        res(
            "u",
            "users",
            base,
            "  identities:\n    - {name: unique_email, keys: [org, email], "
            'where: "email IS NOT NULL", nullsDistinct: false, '
            "indexName: users_email_key}\n",
        )
    )
    assert kinds(plan) == ["DropIndex", "CreateIndex"]
    plan = project.step(res("u", "users", base))
    assert kinds(plan) == ["DropIndex"]
    for _ in range(4):
        project.undo()


def test_custom_indexes_every_option(project: Project) -> None:
    attrs = ID + "    - {name: title, type: text}\n    - {name: body, type: text}\n    - {name: tags, type: 'text[]'}\n"
    project.step(res("p", "posts", attrs))
    indexes = (
        "  indexes:\n"
        '    - {fields: [title], where: "body IS NOT NULL", include: [body]}\n'
        '    - {fields: ["lower(title)"], name: posts_lower_title_index, unique: true}\n'
        "    - {fields: [tags], using: gin}\n"
        "    - {fields: [body], unique: true, nullsDistinct: false}\n"
        "    - {fields: [title, body], concurrently: true}\n"
    )
    plan = project.step(res("p", "posts", attrs, indexes))
    # the table exists: every index is built CONCURRENTLY, each in a migration of its own (dbmate runs a
    # section as one query, where two CONCURRENTLY statements fail with 25001)
    assert [m.path.name.endswith("_concurrently.sql") for m in plan.migrations] == [True] * 5
    for migration in plan.migrations:
        up, _, down = migration.text.partition("-- migrate:down")
        assert "-- migrate:up transaction:false" in up and up.partition("-- migrate:up")[2].count("CONCURRENTLY") == 1
        assert "DROP INDEX CONCURRENTLY" in down
    project.undo()


def test_opting_out_of_online_forms_keeps_the_plain_ones(project: Project) -> None:
    attrs = ID + "    - {name: title, type: text}\n    - {name: body, type: text}\n"
    plain = "  onlineSafe: false\n"
    project.step(res("p", "posts", attrs), repo_extra=plain)
    indexes = "  indexes:\n    - {fields: [title]}\n    - {fields: [title, body], concurrently: true}\n"
    checks = "  checkConstraints:\n    - {name: title_set, check: \"title <> ''\"}\n"
    plan = project.step(
        res("p", "posts", attrs.replace("body, type: text", "body, type: text, allowNull: false"), indexes + checks),
        repo_extra=plain,
    )
    assert [m.path.name.endswith("_concurrently.sql") for m in plan.migrations] == [False, True]
    assert kinds(plan) == ["AlterNull", "CreateIndex", "AddCheck", "CreateIndex"]
    main, concurrent = (m.text.partition("-- migrate:up")[2] for m in plan.migrations)
    assert "SET NOT NULL" in main and "NOT VALID" not in main and "CONCURRENTLY" not in main
    assert "-- migrate:up transaction:false" in plan.migrations[1].text and "CREATE INDEX CONCURRENTLY" in concurrent
    project.undo()


def test_foreign_key_changes_and_index_toggle(project: Project) -> None:
    parent = res("parent", "parents", ID)
    child = "    - {name: parent_id, type: bigint, references: {resource: parent%s}}\n"
    project.step(parent, res("child", "children", ID + child % ""))
    plan = project.step(
        parent,
        res(
            "child",
            "children",
            ID + child % ", onDelete: {setNull: [parent_id]}, "
            "onUpdate: cascade, deferrable: initiallyDeferred, "
            "match: full",
        ),
    )
    assert kinds(plan) == ["DropForeignKey", "AddForeignKey", "ValidateConstraint"]
    plan = project.step(
        parent,
        res(
            "child",
            "children",
            ID + child % ", onDelete: {setNull: [parent_id]}, "
            "onUpdate: cascade, deferrable: initiallyDeferred, "
            "match: full, index: true",
        ),
    )
    assert kinds(plan) == ["CreateIndex"]  # the index is added without touching the constraint
    plan = project.step(
        parent,
        res(
            "child",
            "children",
            ID + child % ", onDelete: {setNull: [parent_id]}, "
            "onUpdate: cascade, deferrable: initiallyDeferred, "
            "match: full, index: true, name: child_parent_fk",
        ),
    )
    assert kinds(plan) == ["RenameConstraint"]
    for _ in range(4):
        project.undo()


def test_check_constraints_add_change_drop(project: Project) -> None:
    attrs = ID + "    - {name: n, type: integer}\n"
    project.step(res("t", "things", attrs, '  checkConstraints:\n    - {name: n_positive, check: "n > 0"}\n'))
    plan = project.step(res("t", "things", attrs, '  checkConstraints:\n    - {name: n_positive, check: "n >= 0"}\n'))
    assert kinds(plan) == ["DropCheck", "AddCheck", "ValidateConstraint"]
    plan = project.step(res("t", "things", attrs))
    assert kinds(plan) == ["DropCheck"]
    project.undo()
    project.undo()
    project.undo()


def test_custom_statements_add_change_remove(project: Project) -> None:
    attrs = ID + "    - {name: n, type: integer}\n"

    def view(body: str) -> str:
        return (
            f'  statements:\n    - {{name: big_things, up: "CREATE VIEW big_things AS SELECT id FROM things '  # noqa: S608 (a manifest, not a query)
            f'WHERE {body}", down: "DROP VIEW big_things"}}\n'
        )

    project.step(res("t", "things", attrs, view("n > 10")))
    assert project.query("SELECT count(*) FROM pg_views WHERE viewname = 'big_things'") == [(1,)]
    plan = project.step(res("t", "things", attrs, view("n > 100")))
    statements = [op for m in plan.migrations for op in m.operations if isinstance(op, ops.RunStatement)]
    assert [s.removal for s in statements] == [True, False]  # old down, then new up
    assert "n > 100" in str(project.query("SELECT definition FROM pg_views WHERE viewname = 'big_things'")[0][0])
    project.undo()
    assert "n > 10" in str(project.query("SELECT definition FROM pg_views WHERE viewname = 'big_things'")[0][0])
    project.step(res("t", "things", attrs))
    assert project.query("SELECT count(*) FROM pg_views WHERE viewname = 'big_things'") == [(0,)]
    project.undo()
    project.undo()


def test_extensions(project: Project) -> None:
    # citext on a full server, pgvector on the embedded one (pgserver ships only plpgsql and vector)
    available = {row[0] for row in project.query("SELECT name FROM pg_available_extensions")}
    name, type_ = ("citext", "citext") if "citext" in available else ("vector", "vector(3)")
    plan = project.step(
        res("t", "things", ID + f"    - {{name: v, type: '{type_}'}}\n"), repo_extra=f"  extensions: [{name}]\n"
    )
    assert kinds(plan)[0] == "CreateExtension"
    assert project.query("SELECT count(*) FROM pg_extension WHERE extname = %s", name) == [(1,)]
    project.undo()  # the down leaves the extension installed: it may have been there before
    assert project.query("SELECT count(*) FROM pg_extension WHERE extname = %s", name) == [(1,)]


def test_attribute_multitenancy_puts_tenant_column_first(project: Project) -> None:
    attrs = (
        "    - {name: org_id, type: uuid, allowNull: false}\n    - {name: id, type: bigint}\n"
        "    - {name: name, type: text}\n    - {name: parent_id, type: bigint, "
        "references: {resource: e, column: id, index: true}}\n"
    )
    extra = (
        "  multitenancy: {strategy: attribute, attribute: org_id}\n  primaryKey: [id]\n"
        "  identities:\n    - {name: unique_name, keys: [name]}\n  indexes:\n    - {fields: [name]}\n"
    )
    project.step(res("e", "events", attrs, extra))
    rows = project.query(
        "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index "
        "WHERE indrelid = 'events'::regclass AND NOT indisprimary ORDER BY 1"
    )
    assert all("(org_id, " in str(definition) for _, definition in rows), rows
    project.undo()


def test_tenant_tables_go_to_tenant_migrations_unqualified(project: Project, tmp_path: Path) -> None:
    user = res("user", "users", UUID_ID)
    project_res = res(
        "project",
        "projects",
        ID + "    - {name: owner_id, type: uuid, references: {resource: user}}\n",
        "  multitenancy: {strategy: context}\n",
    )
    task = res(
        "task",
        "tasks",
        ID + "    - {name: project_id, type: bigint, references: {resource: project}}\n",
        "  multitenancy: {strategy: context}\n",
    )
    plan = project.step(user, project_res, task)
    tenant = next(m for m in plan.migrations if m.scope == "tenant")
    assert tenant.path.parent.as_posix() == "priv/app/tenant_migrations"
    assert 'CREATE TABLE "projects"' in tenant.text and 'REFERENCES "public"."users"' in tenant.text
    assert 'REFERENCES "projects"' in tenant.text
    stored = project.store(project.history[-1][0]).read("priv/resource_snapshots/app")
    assert any(p.startswith("priv/resource_snapshots/app/tenants/projects/") for p in stored)
    assert any(p.startswith("priv/resource_snapshots/app/users/") for p in stored)
    project.undo()


def test_example_config_round_trip(project: Project) -> None:
    """The shipped example (BETWEEN and IN checks, partial and expression indexes, tenant FKs to global tables)."""
    from tests.conftest import REPO_ROOT

    texts = [p.read_text() for p in sorted((REPO_ROOT / "config" / "app").glob("*.yaml")) if p.name != "repo.yaml"]
    plan = project.step(*texts)
    assert [m.scope for m in plan.migrations] == ["global", "tenant"]
    project.undo()


# -- regressions found in review: combinations that PostgreSQL rejected in the up or the down ---------------


def test_renamed_parent_with_changed_child_key_round_trips(project: Project) -> None:
    child = "    - {name: parent_id, type: bigint, references: {resource: parent%s}}\n"
    project.step(res("parent", "parents", ID), res("child", "children", ID + child % ""))
    project.step(
        res("parent", "folks", ID, "  renamedFrom: parents\n"),
        res("child", "children", ID + child % ", onDelete: cascade"),
    )
    project.undo()  # the down re-adds the original constraint, to the original table name


def test_renamed_key_column_with_identity_index_and_self_reference(project: Project) -> None:
    def parent(table: str, column: str, extra: str = "", hint: str = "") -> str:
        return res(
            "parent",
            table,
            f"    - {{name: {column}, type: bigint, primaryKey: true{hint}}}\n    - {{name: code, type: text}}\n"
            "    - {name: parent_id, type: bigint, references: {resource: parent, index: true}}\n",
            f"  identities:\n    - {{name: k, keys: [{column}, code]}}\n"
            f"  indexes:\n    - {{fields: [{column}, parent_id]}}\n" + extra,
        )

    child = res("child", "children", ID + "    - {name: pid, type: bigint, references: {resource: parent}}\n")
    project.step(parent("parents", "id"), child)
    project.execute("INSERT INTO parents (id, code) VALUES (1, 'a')")
    project.step(parent("folks", "key", "  renamedFrom: parents\n", ", renamedFrom: id"), child)
    assert project.query("SELECT key, code FROM folks") == [(1, "a")]
    project.undo()


def test_type_change_under_a_foreign_key(project: Project) -> None:
    def pair(type_: str) -> tuple[str, str]:
        parent = res("parent", "parents", f"    - {{name: id, type: {type_}, primaryKey: true}}\n")
        child = res("child", "children", ID + f"    - {{name: pid, type: {type_}, references: {{resource: parent}}}}\n")
        return parent, child

    project.step(*pair("integer"))
    plan = project.step(*pair("bigint"), allow_blocking=True)
    assert kinds(plan)[0] == "DropForeignKey" and kinds(plan)[-2:] == ["AddForeignKey", "ValidateConstraint"]
    project.undo()


def test_key_backing_a_foreign_key_changes(project: Project) -> None:
    attrs = "    - {name: id, type: bigint, allowNull: false}\n    - {name: v, type: bigint, allowNull: false}\n"
    child = res(
        "child", "children", ID + "    - {name: pid, type: bigint, references: {resource: parent, column: id}}\n"
    )
    identity = "  identities:\n    - {name: uid, keys: [id]}\n"
    project.step(res("parent", "parents", attrs, f"  primaryKey: [id]\n{identity}"), child)
    project.step(res("parent", "parents", attrs, f"  primaryKey: [id, v]\n{identity}"), child)
    project.undo()


def test_identity_column_to_plain_nullable_with_default(project: Project) -> None:
    project.step(res("t", "things", ID + "    - {name: n, type: bigint, generated: identity}\n"))
    plan = project.step(res("t", "things", ID + "    - {name: n, type: bigint, default: 0}\n"))
    assert kinds(plan)[0] == "AlterIdentity"
    project.undo()


def test_dropping_a_concurrent_index_and_its_down(project: Project) -> None:
    attrs = ID + "    - {name: c, type: text}\n"
    project.step(res("t", "things", attrs, "  indexes:\n    - {fields: [c], concurrently: true}\n"))
    plan = project.step(res("t", "things", attrs))
    assert "CONCURRENTLY" not in plan.migrations[0].text.split("-- migrate:down")[1]
    project.undo()


def test_comment_in_user_sql_does_not_swallow_the_terminator(project: Project) -> None:
    project.step(
        res(
            "t",
            "things",
            ID + "    - {name: c, type: text}\n",
            "  checkConstraints:\n    - {name: not_empty, check: \"c <> '' -- no empty strings\"}\n",
        )
    )


def test_global_drop_that_a_tenant_key_depends_on_is_refused(project: Project) -> None:
    plan_table = res("plan", "plans", ID)
    task = "    - {name: plan_id, type: bigint%s}\n"
    ctx = "  multitenancy: {strategy: context}\n"
    project.step(plan_table, res("task", "tasks", ID + task % ", references: {resource: plan}", ctx))
    with pytest.raises(generate.DestructiveChangeError, match="tenant foreign key tasks_plan_id_fkey"):
        project.step(res("task", "tasks", ID + task % "", ctx), allow_destructive=True)


def test_a_table_renamed_to_the_name_of_one_dropped_in_the_same_step(project: Project) -> None:
    project.step(res("a", "alpha", ID), res("b", "beta", ID + "    - {name: label, type: text}\n"))
    project.execute("INSERT INTO beta (id, label) VALUES (1, 'kept')")
    renamed = res("b", "alpha", ID + "    - {name: label, type: text}\n", "  renamedFrom: beta\n")
    plan = project.step(renamed, allow_destructive=True)
    assert kinds(plan) == ["DropTable", "RenameTable", "RenameConstraint"]  # the old alpha first, or they collide
    assert project.query("SELECT label FROM alpha") == [("kept",)]
    project.undo()
    assert project.query("SELECT label FROM beta") == [("kept",)]
