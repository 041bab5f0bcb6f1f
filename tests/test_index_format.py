"""Operator classes and ordering on index fields, and UNIQUE constraints (identities with ``constraint: true``),
on real PostgreSQL: generate, apply up, compare the live catalog with the manifests, apply down, compare with the
previous state (``tests/harness.py``, which also lints every up-migration with squawk)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.generator import generate
from tests.harness import Project, res

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
