"""Multi-column foreign keys (``foreignKeys:``) on a real PostgreSQL: created with their tables, added online to
a table that holds rows (NOT VALID, then VALIDATE), changed, kept through column and table renames, dropped,
and every step rolled back to exactly the previous catalog (``tests/harness.py``, squawk included)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator import config
from orchestrator.generator import generate, order, snapshots
from orchestrator.generator import operations as ops
from tests.conftest import write
from tests.harness import Project, repo_yaml, res

TENANCY = "  multitenancy: {strategy: attribute, attribute: tenant_id}\n"
POSTS = (
    "    - {name: id, type: bigint, primaryKey: true}\n"
    "    - {name: tenant_id, type: uuid, allowNull: false}\n"
    "    - {name: title, type: text}\n"
)
POST_KEY = "  identities:\n    - {name: tenant_post, keys: [id]}\n"
COMMENTS = (
    "    - {name: id, type: bigint, primaryKey: true}\n"
    "    - {name: tenant_id, type: uuid, allowNull: false}\n"
    "    - {name: post_id, type: bigint}\n"
)
TO_POSTS = "    - columns: [post_id, tenant_id]\n      references: {resource: post, columns: [id, tenant_id]}\n"
LIKES = (
    "    - {name: id, type: bigint, primaryKey: true}\n"
    "    - {name: tenant_id, type: uuid, allowNull: false}\n"
    "    - {name: %s, type: bigint}\n"
)


@pytest.fixture(params=["files", "database"])
def project(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> Project:
    return Project(tmp_path, database_url, state_kind=request.param)


def kinds(plan: generate.Plan) -> list[str]:
    return [type(op).__name__ for m in plan.migrations for op in m.operations]


def suffixes(plan: generate.Plan) -> list[str]:
    return [m.path.stem.partition("_step")[2] for m in plan.migrations]


def posts(title: str = "") -> str:
    return res("post", "posts", POSTS, TENANCY + POST_KEY + title)


def comments() -> str:
    return res("comment", "comments", COMMENTS, TENANCY + "  foreignKeys:\n" + TO_POSTS)


def likes(column: str = "post_id", keys: str = "", renamed: str = "") -> str:
    attributes = LIKES % (column + (f", renamedFrom: {renamed}" if renamed else ""))
    return res("like", "likes", attributes, TENANCY + (f"  foreignKeys:\n{keys}" if keys else ""))


def validated(project: Project, name: str) -> bool:
    rows = project.query("SELECT convalidated FROM pg_constraint WHERE conname = %s", name)
    assert len(rows) == 1, rows
    return bool(rows[0][0])


def test_tenant_keys_created_added_online_changed_renamed_dropped_and_rolled_back(project: Project) -> None:
    plan = project.step(posts(), comments(), likes())
    up = plan.migrations[0].text.partition("-- migrate:down")[0]
    assert (
        'ALTER TABLE "public"."comments" ADD CONSTRAINT "comments_post_id_tenant_id_fkey" '
        'FOREIGN KEY ("post_id", "tenant_id") REFERENCES "public"."posts" ("id", "tenant_id");'
    ) in up
    assert "+ foreign key comments_post_id_tenant_id_fkey: public.comments (post_id, tenant_id) -> " in up
    assert validated(project, "comments_post_id_tenant_id_fkey")
    project.execute(
        "INSERT INTO posts SELECT g, '00000000-0000-0000-0000-00000000000a', 'p' || g FROM generate_series(1, 50) g"
    )
    project.execute(
        "INSERT INTO likes SELECT g, '00000000-0000-0000-0000-00000000000a', g FROM generate_series(1, 50) g"
    )

    # added to a table with rows: NOT VALID in the main step, the index concurrently, VALIDATE last
    key = (
        "    - columns: [post_id, tenant_id]\n      references: {resource: post, columns: [id, tenant_id]}\n"
        "      onDelete: cascade\n      index: true\n"
    )
    plan = project.step(posts(), comments(), likes(keys=key))
    assert suffixes(plan) == ["", "_concurrently", "_validate"]
    assert kinds(plan) == ["AddForeignKey", "CreateIndex", "ValidateConstraint"]
    main, concurrent, validate = (m.text.partition("-- migrate:down")[0] for m in plan.migrations)
    assert "NOT VALID" in main and "lock SHARE ROW EXCLUSIVE on both tables; brief, NOT VALID" in main
    assert 'CREATE INDEX CONCURRENTLY "likes_post_id_tenant_id_index"' in concurrent
    assert 'VALIDATE CONSTRAINT "likes_post_id_tenant_id_fkey"' in validate
    assert validated(project, "likes_post_id_tenant_id_fkey")

    # actions changed: dropped and added again, validated online
    changed = key.replace("onDelete: cascade", "onDelete: {setNull: [post_id]}\n      match: simple") + (
        "      onUpdate: cascade\n      deferrable: initiallyDeferred\n"
    )
    plan = project.step(posts(), comments(), likes(keys=changed))
    assert kinds(plan) == ["DropForeignKey", "AddForeignKey", "ValidateConstraint"]
    assert 'ON DELETE SET NULL ("post_id") ON UPDATE CASCADE DEFERRABLE INITIALLY DEFERRED' in plan.migrations[0].text
    assert validated(project, "likes_post_id_tenant_id_fkey")

    # a column of the key renamed: the constraint and its index follow (renamed), never dropped
    renamed_key = changed.replace("[post_id, tenant_id]", "[article_id, tenant_id]").replace(
        "setNull: [post_id]", "setNull: [article_id]"
    )
    plan = project.step(posts(), comments(), likes("article_id", renamed_key, renamed="post_id"))
    assert sorted(kinds(plan)) == ["RenameColumn", "RenameConstraint", "RenameIndex"]
    assert project.query("SELECT count(*) FROM likes WHERE article_id IS NOT NULL") == [(50,)]

    # dropped (with its index)
    plan = project.step(posts(), comments(), likes("article_id"))
    assert sorted(kinds(plan)) == ["DropForeignKey", "DropIndex"]

    for _ in range(4):
        project.undo()  # each down returns exactly the previous catalog, rows kept
    assert project.query("SELECT count(*) FROM likes") == [(50,)]
    project.undo()


def test_referenced_column_and_table_renames_keep_the_key(project: Project) -> None:
    project.step(posts(), comments())
    project.execute("INSERT INTO posts VALUES (1, '00000000-0000-0000-0000-00000000000a', 'p')")
    project.execute("INSERT INTO comments VALUES (1, '00000000-0000-0000-0000-00000000000a', 1)")
    # the referenced column renamed: PostgreSQL follows it, so nothing touches the constraint
    uid = POSTS.replace("{name: id,", "{name: uid, renamedFrom: id,")
    moved = res("post", "posts", uid, TENANCY + "  identities:\n    - {name: tenant_post, keys: [uid]}\n")
    to_uid = TO_POSTS.replace("columns: [id, tenant_id]", "columns: [uid, tenant_id]")
    comments_uid = res("comment", "comments", COMMENTS, TENANCY + "  foreignKeys:\n" + to_uid)
    plan = project.step(moved, comments_uid)
    assert kinds(plan) == ["RenameColumn"]
    # the referenced table renamed, and the referencing one: the key stays, its default name follows
    articles = moved.replace("table: posts", "table: articles\n  renamedFrom: posts")
    notes = comments_uid.replace("table: comments", "table: notes\n  renamedFrom: comments")
    plan = project.step(articles, notes)
    assert "DropForeignKey" not in kinds(plan) and "AddForeignKey" not in kinds(plan)
    assert ops.RenameConstraint(
        ops.Ref("public", "notes"), "comments_post_id_tenant_id_fkey", "notes_post_id_tenant_id_fkey"
    ) in [op for m in plan.migrations for op in m.operations]
    project.undo()
    project.undo()
    project.undo()


def test_dropping_tables_with_keys_rebuilds_them_in_the_down(project: Project) -> None:
    project.step(posts(), comments())
    plan = project.step(allow_destructive=True)
    assert sorted(op.table for m in plan.migrations for op in m.operations if isinstance(op, ops.DropTable)) == [
        "public.comments",
        "public.posts",
    ]
    project.undo()  # both tables, the identity and the two-column key come back
    project.undo()


def test_key_to_an_identity_built_concurrently_goes_after_the_index(project: Project) -> None:
    """PostgreSQL needs the referenced unique index to exist: built concurrently on an existing table, the key
    is added in the ``_after_indexes`` step, NOT VALID, then validated."""
    plain = res("post", "posts", POSTS, TENANCY)
    project.step(plain, likes())
    project.execute("INSERT INTO posts VALUES (1, '00000000-0000-0000-0000-00000000000a', 'p')")
    project.execute("INSERT INTO likes VALUES (1, '00000000-0000-0000-0000-00000000000a', 1)")
    plan = project.step(posts(), likes(keys=TO_POSTS))
    assert suffixes(plan) == ["_concurrently", "_after_indexes", "_validate"]
    assert kinds(plan) == ["CreateIndex", "AddForeignKey", "ValidateConstraint"]
    assert validated(project, "likes_post_id_tenant_id_fkey")
    project.undo()
    project.undo()


CONTEXT = "  multitenancy: {strategy: context}\n"
REGIONS = res(
    "region",
    "regions",
    "    - {name: country, type: text, primaryKey: true}\n    - {name: code, type: text, primaryKey: true}\n",
)
ORDERS = res(
    "order",
    "orders",
    "    - {name: id, type: bigint, primaryKey: true}\n    - {name: rev, type: integer, primaryKey: true}\n",
    CONTEXT,
)
LINES = (
    "    - {name: id, type: bigint, primaryKey: true}\n"
    "    - {name: order_id, type: bigint}\n"
    "    - {name: order_rev, type: integer}\n"
    "    - {name: country, type: text}\n"
    "    - {name: region, type: text}\n"
)
LINE_KEYS = (
    "  foreignKeys:\n"
    "    - columns: [order_id, order_rev]\n      references: {resource: order}\n      onDelete: cascade\n"
    "      index: true\n"
    "    - name: lines_region_fkey\n      columns: [country, region]\n"
    "      references: {table: regions, schema: public, columns: [country, code]}\n      match: full\n"
)


def test_context_tables_reference_a_tenant_table_and_a_global_table(project: Project) -> None:
    plan = project.step(REGIONS, ORDERS, res("line", "lines", LINES, CONTEXT + LINE_KEYS))
    tenant = next(m for m in plan.migrations if m.scope == "tenant").text.partition("-- migrate:down")[0]
    assert 'FOREIGN KEY ("order_id", "order_rev") REFERENCES "orders" ("id", "rev") ON DELETE CASCADE' in tenant
    assert 'FOREIGN KEY ("country", "region") REFERENCES "public"."regions" ("country", "code") MATCH FULL' in tenant
    project.execute("INSERT INTO public.regions VALUES ('fr', 'idf')")
    project.execute("INSERT INTO t1.orders VALUES (1, 1)")  # t1: the harness's tenant
    project.execute("INSERT INTO t1.lines VALUES (1, 1, 1, 'fr', 'idf')")
    # dropped from the tenant table with rows, then added again online
    plan = project.step(REGIONS, ORDERS, res("line", "lines", LINES, CONTEXT))
    assert sorted(kinds(plan)) == ["DropForeignKey", "DropForeignKey", "DropIndex"]
    plan = project.step(REGIONS, ORDERS, res("line", "lines", LINES, CONTEXT + LINE_KEYS))
    assert kinds(plan) == ["AddForeignKey", "AddForeignKey", "CreateIndex", "ValidateConstraint", "ValidateConstraint"]
    assert validated(project, "lines_region_fkey") and validated(project, "lines_order_id_order_rev_fkey")
    # the global table's referenced column renamed: the tenant key follows it, no tenant migration at all
    regions = REGIONS.replace("{name: code,", "{name: region_code, renamedFrom: code,")
    keys = LINE_KEYS.replace("[country, code]", "[country, region_code]")
    plan = project.step(regions, ORDERS, res("line", "lines", LINES, CONTEXT + keys))
    assert [(m.scope, type(op).__name__) for m in plan.migrations for op in m.operations] == [
        ("global", "RenameColumn")
    ]
    for _ in range(4):
        project.undo()


def test_type_changes_under_a_key_drop_and_add_it_again(project: Project) -> None:
    small = res("post", "posts", POSTS.replace("id, type: bigint", "id, type: integer"), TENANCY + POST_KEY)
    comments_small = comments().replace("post_id, type: bigint", "post_id, type: integer")
    project.step(small, comments_small)
    plan = project.step(posts(), comments(), allow_blocking=True)
    assert kinds(plan)[0] == "DropForeignKey" and kinds(plan)[-2:] == ["AddForeignKey", "ValidateConstraint"]
    assert validated(project, "comments_post_id_tenant_id_fkey")
    project.undo()
    project.undo()


def test_snapshots_leave_out_an_empty_list_and_read_keys_back(tmp_path: Path) -> None:
    """A table without table-level keys keeps its snapshot bytes (no ``foreign_keys`` entry); one with keys
    reads back equal; a referencing table is created after the table it references."""
    for i, text in enumerate((repo_yaml(), posts(), comments())):
        write(tmp_path / f"r{i}.yaml", text)
    cfg = config.load(tmp_path, base=tmp_path)
    by_name = {t.name: t for t in cfg.tables}
    assert "foreign_keys" not in by_name["posts"].canonical()
    assert by_name["comments"].canonical()["foreign_keys"][0]["ref_columns"] == ["id", "tenant_id"]
    for table in cfg.tables:
        again = snapshots.from_canonical(json.loads(table.canonical_json()), table.repo)
        assert again.canonical_json() == table.canonical_json()
    created = order.order([ops.CreateTable(ops.Ref("public", t.name), t) for t in reversed(cfg.tables)])
    assert [op.table for op in created] == ["public.posts", "public.comments"]


P_COLUMNS = (
    "    - {name: id, type: bigint, primaryKey: true}\n"
    "    - {name: a, type: %s, allowNull: false}\n"
    "    - {name: b, type: integer, allowNull: false}\n"
)
C_COLUMNS = (
    "    - {name: id, type: bigint, primaryKey: true}\n    - {name: pa, type: %s}\n    - {name: pb, type: integer}\n"
)


def parent(keys: str, identity: str, a_type: str = "integer") -> str:
    return res("p", "p", P_COLUMNS % a_type, f"  identities:\n    - {{name: unique_ab, keys: {keys}, {identity}}}\n")


def child(columns: str, ref_columns: str, pa_type: str = "integer") -> str:
    key = f"  foreignKeys:\n    - columns: {columns}\n      references: {{resource: p, columns: {ref_columns}}}\n"
    return res("c", "c", C_COLUMNS % pa_type, key)


@pytest.mark.parametrize("width", [2, 1])
def test_keys_to_a_unique_constraint_follow_its_changes(project: Project, width: int) -> None:
    """A table-level key depends on the referenced unique index (constraint or not): switching between a UNIQUE
    constraint and a bare index, rebuilding the index or changing a referenced column's type drops the key first
    and adds it again last (NOT VALID, then VALIDATE), every step rolled back; also for a one-column entry."""
    keys, columns, fkey = ("[a, b]", "[pa, pb]", "c_pa_pb_fkey") if width == 2 else ("[a]", "[pa]", "c_pa_fkey")
    project.step(parent(keys, "constraint: true"), child(columns, keys))
    project.execute("INSERT INTO p VALUES (1, 1, 1)")
    project.execute("INSERT INTO c VALUES (1, 1, 1)")
    steps = [
        (parent(keys, "nullsDistinct: true"), child(columns, keys)),  # constraint -> bare index
        (parent(keys, "constraint: true"), child(columns, keys)),  # bare index -> constraint
        (parent(keys, "constraint: true, nullsDistinct: false"), child(columns, keys)),  # the index rebuilt
        (parent(keys, "nullsDistinct: false", "bigint"), child(columns, keys, "bigint")),  # and types change
    ]
    if width == 2:  # the key order of the index changes: rebuilt
        steps.append((parent("[b, a]", "nullsDistinct: false", "bigint"), child(columns, keys, "bigint")))
    for parent_yaml, child_yaml in steps:
        plan = project.step(parent_yaml, child_yaml, allow_blocking=True)
        assert kinds(plan)[0] == "DropForeignKey", kinds(plan)
        assert kinds(plan)[-2:] == ["AddForeignKey", "ValidateConstraint"], kinds(plan)
        assert validated(project, fkey)
    for _ in range(len(steps) + 1):
        project.undo()
