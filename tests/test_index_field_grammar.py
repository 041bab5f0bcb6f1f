"""The index field grammar against the server: every field string either fails ``validate`` with a located error
or renders a CREATE INDEX that PostgreSQL accepts and whose key the catalog reads back as the canonical field.

The table below is the contract between ``indexfield`` (what validation lets through and how it is spelled),
``render`` (the SQL) and ``catalog.read`` (how the live key is printed): when they disagree a field either
passes validation and fails at migrate (issue 14: never), or drifts right after it is applied. Also here:
collations survive import and a changed collation is a difference; an ordered unique index backs a foreign key.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from orchestrator import config, model
from orchestrator.catalog import compare, read
from orchestrator.errors import ConfigError
from tests import catalog
from tests.conftest import fresh_database, write
from tests.harness import Project, repo_yaml, res
from tests.test_import import _cli, _execute, _project, _same_catalog

COLUMNS = (
    "    - {name: id, type: bigint, primaryKey: true}\n"
    "    - {name: title, type: text}\n"
    "    - {name: note, type: text}\n"
    "    - {name: body, type: text}\n"
    "    - {name: label, type: varchar(50)}\n"
    "    - {name: a, type: integer}\n"
    "    - {name: b, type: integer}\n"
    "    - {name: userName, type: text}\n"
)

# (written, canonical, what the catalog reads back): canonical None = refused, the third item is then a fragment
# of the error; the catalog reading is None when it is the canonical field itself.
VALID: list[tuple[str, str, str | None]] = [
    ("title", "title", None),
    ("  title   desc ", "title DESC", None),
    ("title DESC NULLS FIRST", "title DESC", None),
    ("title ASC NULLS LAST", "title", None),
    ("title asc nulls first", "title NULLS FIRST", None),
    ("title DESC NULLS LAST", "title DESC NULLS LAST", None),
    ("title text_pattern_ops", "title text_pattern_ops", None),
    ("title Text_Pattern_Ops DESC", "title text_pattern_ops DESC", None),
    ("title pg_catalog.text_pattern_ops", "title text_pattern_ops", None),
    ('title "text_pattern_ops"', "title text_pattern_ops", None),
    ("label varchar_pattern_ops", "label varchar_pattern_ops", None),
    ('a "int4_ops"', "a", None),  # the type's default operator class: the catalog shows none, nor does the model
    ("a int4_ops DESC", "a DESC", None),
    ('note COLLATE "C"', 'note COLLATE "C"', None),
    ('note collate "POSIX" DESC', 'note COLLATE "POSIX" DESC', None),
    ('note COLLATE pg_catalog."C"', 'note COLLATE "C"', None),
    ("note COLLATE ucs_basic", 'note COLLATE "ucs_basic"', None),
    ('note COLLATE "default"', "note", None),
    ('title COLLATE "C" text_pattern_ops', 'title COLLATE "C" text_pattern_ops', None),
    ('title COLLATE "C" DESC', 'title COLLATE "C" DESC', None),
    ('title COLLATE "C" text_pattern_ops DESC NULLS LAST', 'title COLLATE "C" text_pattern_ops DESC NULLS LAST', None),
    ('"userName" DESC', "userName DESC", None),
    ('"userName"', "userName", None),
    ("userName NULLS FIRST", "userName NULLS FIRST", None),
    ("lower(body)", "lower(body)", None),
    ('lower(body) COLLATE "C"', 'lower(body) COLLATE "C"', None),
    ('lower(body) COLLATE "C" text_pattern_ops DESC', 'lower(body) COLLATE "C" text_pattern_ops DESC', None),
    ("lower(title) text_pattern_ops", "lower(title) text_pattern_ops", None),
    ("(title || note) DESC NULLS LAST", "(title || note) DESC NULLS LAST", None),
    ('(title || note) COLLATE "C"', '(title || note) COLLATE "C"', None),
    ("title || note", "title || note", "(title || note)"),
    ("a + b", "a + b", "(a + b)"),
    ("title IS NULL", "title IS NULL", "(title IS NULL)"),
    ("coalesce(title, 'x, y')", "coalesce(title, 'x, y')", "COALESCE(title, 'x, y'::text)"),
    ('lower(body COLLATE "C")', 'lower(body COLLATE "C")', None),
    ("(a * 2) DESC", "(a * 2) DESC", None),
]

INVALID: list[tuple[str, str]] = [
    ("a 1", "after column 'a', expected [COLLATE collation]"),
    ("a, b", "an index field is one key"),
    ("a $x", "contains '$'"),
    ("a $1", "contains '$'"),
    ("a 'x'", "after column 'a', expected"),
    ('a "x" y', "after column 'a', expected"),
    ("title COLLATE C", 'write COLLATE "C"'),
    ("title COLLATE", "expected a collation name"),
    ('title text_pattern_ops COLLATE "C"', "after column 'title', expected"),
    ("title DESC text_pattern_ops", "after column 'title', expected"),
    ("title DESC DESC", "after column 'title', expected"),
    ("title NULLS", "after column 'title', expected"),
    ("title NULLS MIDDLE", "after column 'title', expected"),
    ("titel DESC", "did you mean 'title'"),
    ('"titel" DESC', "unknown column 'titel'"),
    ('"Title"', "unknown column 'Title'"),
    ("a.b.c.d x", "not an expression"),
    ("title || note DESC", "needs the expression in parentheses"),
    ("title || note text_pattern_ops", "'note' followed by 'text_pattern_ops'"),
    ("lower(body) 1", "')' followed by '1'"),
    ("lower(body) bogus extra", "after the expression 'lower(body)', expected"),
    ('lower(body) COLLATE "default"', 'COLLATE "default" after an expression'),
    ("lower(body", "unbalanced parentheses"),
    ("lower(body))", "unbalanced parentheses"),
    ("lower(body); DROP TABLE t", "contains ';'"),
    ("'unclosed", "unbalanced quote"),
    ("", "must be non-empty"),
]


def _load(tmp_path: Path, fields: list[str]) -> tuple[model.Config | None, list[str]]:
    indexes = "  indexes:\n" + "".join(
        f"    - {{name: posts_f{i}, fields: [{_yaml(f)}]}}\n" for i, f in enumerate(fields)
    )
    write(tmp_path / "config" / "repo.yaml", repo_yaml())
    write(tmp_path / "config" / "post.yaml", res("post", "posts", COLUMNS, indexes))
    try:
        return config.load(tmp_path / "config", base=tmp_path), []
    except ConfigError as exc:
        return None, [str(p) for p in exc.problems]


def _yaml(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@pytest.mark.parametrize(("written", "fragment"), INVALID, ids=[w or "empty" for w, _ in INVALID])
def test_refused_field_is_a_located_validation_error(tmp_path: Path, written: str, fragment: str) -> None:
    cfg, problems = _load(tmp_path, [written])
    assert cfg is None
    assert len(problems) == 1, problems
    assert re.match(r"config/post\.yaml:\d+:\d+: spec\.indexes\[0\]\.fields\[0\]: ", problems[0]), problems
    assert fragment in problems[0]


@pytest.mark.parametrize(("written", "canonical", "_read"), VALID, ids=[w for w, _, _ in VALID])
def test_accepted_field_is_canonical_in_the_model(tmp_path: Path, written: str, canonical: str, _read: str) -> None:
    cfg, problems = _load(tmp_path, [written])
    assert problems == []
    assert cfg is not None
    assert cfg.tables[0].indexes[0].fields == (canonical,)


def test_every_accepted_field_is_created_by_postgresql_and_reads_back_canonical(project: Project) -> None:
    indexes = "  indexes:\n" + "".join(
        f"    - {{name: posts_f{i}, fields: [{_yaml(w)}]}}\n" for i, (w, _, _) in enumerate(VALID)
    )
    project.step(res("post", "posts", COLUMNS, indexes))  # applies, then compares the whole catalog with the model
    with psycopg.connect(project.url) as conn:
        found = {i.name: i.keys for i in read.read_schema(conn, "public")["posts"].indexes}
    for i, (written, canonical, reading) in enumerate(VALID):
        keys = found[f"posts_f{i}"]
        assert keys == (reading or canonical,), written
        assert compare._same_key(canonical, keys[0]), written
    project.undo()


def test_a_changed_collation_or_operator_class_is_a_difference(project: Project) -> None:
    indexes = (
        "  indexes:\n"
        "    - {name: posts_note, fields: ['note COLLATE \"C\"']}\n"
        "    - {name: posts_lower, fields: ['lower(body) COLLATE \"C\" DESC']}\n"
        "    - {name: posts_title, fields: ['title text_pattern_ops']}\n"
    )
    project.step(res("post", "posts", COLUMNS, indexes))
    project.execute(
        "DROP INDEX posts_note, posts_lower, posts_title;"
        'CREATE INDEX posts_note ON posts (note COLLATE "POSIX");'
        "CREATE INDEX posts_lower ON posts (lower(body) DESC);"
        "CREATE INDEX posts_title ON posts (title);"
    )
    cfg = project.history[-1][0]
    with psycopg.connect(project.url) as conn:
        live = read.read_schema(conn, "public")["posts"]
    found = catalog.differences(catalog.expected(cfg.tables[0], "public"), live)
    assert sorted(found) == [
        'index public.posts.posts_lower: keys = (lower(body) DESC), expected (lower(body) COLLATE "C" DESC)',
        'index public.posts.posts_note: keys = (note COLLATE "POSIX"), expected (note COLLATE "C")',
        "index public.posts.posts_title: keys = (title), expected (title text_pattern_ops)",
    ]


SOURCE = """
CREATE TABLE teams (id bigint PRIMARY KEY, name text, note text, body text);
CREATE INDEX teams_note ON teams (note COLLATE "C");
CREATE INDEX teams_lower_body ON teams (lower(body) COLLATE "C");
CREATE INDEX teams_mixed ON teams (name COLLATE "POSIX" text_pattern_ops DESC, lower(note) NULLS FIRST);
CREATE UNIQUE INDEX teams_id_name ON teams (id DESC, name);
CREATE TABLE members (id bigint PRIMARY KEY, team_id bigint, team_name text,
                      FOREIGN KEY (team_id, team_name) REFERENCES teams (id, name));
"""


def test_collations_survive_import_and_the_round_trip(tmp_path: Path, source: str, target: str) -> None:
    _execute(source, SOURCE)
    root = _project(tmp_path)
    imported = _cli(root, source, "import", "--repo", "app")
    assert imported.code == 0, imported.err + imported.out
    written = "\n".join(p.read_text() for p in sorted((root / "config").glob("*.yaml")))
    assert 'note COLLATE \\"C\\"' in written or 'note COLLATE "C"' in written, written
    assert "lower(body) COLLATE" in written, written
    assert _cli(root, source, "validate").code == 0
    check = _cli(root, source, "generate-migrations", "--check")
    assert check.code == 0, check.out + check.err
    built = _cli(root, target, "migrate")
    assert built.code == 0, built.out + built.err
    _same_catalog(source, target, ["public"])
    drift = _cli(root, target, "drift")
    assert drift.code == 0, drift.out + drift.err
    _execute(target, 'DROP INDEX teams_note; CREATE INDEX teams_note ON teams (note COLLATE "POSIX")')
    drift = _cli(root, target, "drift")
    assert drift.code == 1 and "teams_note" in drift.out and '"POSIX"' in drift.out, drift.out + drift.err


TEAMS = (
    "    - {name: id, type: bigint, primaryKey: true}\n"
    "    - {name: code, type: text}\n"
    "    - {name: region, type: text}\n"
)
MEMBERS = (
    "    - {name: id, type: bigint, primaryKey: true}\n"
    "    - {name: team_code, type: text}\n"
    "    - {name: team_region, type: text}\n"
    "    - {name: region, type: text, references: {resource: team, column: region}}\n"
)
FOREIGN_KEY = (
    "  foreignKeys:\n    - {columns: [team_code, team_region], references: {resource: team, columns: [code, region]}}\n"
)


def test_an_ordered_unique_index_backs_a_foreign_key(project: Project) -> None:
    team_indexes = (
        "  indexes:\n"
        "    - {name: teams_code_region, unique: true, fields: ['code DESC', 'region NULLS FIRST']}\n"
        "    - {name: teams_region, unique: true, fields: ['region DESC']}\n"
    )
    project.step(
        res("team", "teams", TEAMS, team_indexes), res("member", "members", MEMBERS, FOREIGN_KEY)
    )  # applied: PostgreSQL takes both indexes as the keys' targets, and the catalog matches the model
    project.undo()


def test_a_unique_index_with_an_operator_class_or_collation_is_refused_as_a_target(tmp_path: Path) -> None:
    team_indexes = (
        "  indexes:\n"
        "    - {name: teams_code_region, unique: true, fields: ['code text_pattern_ops', region]}\n"
        "    - {name: teams_region, unique: true, fields: ['region COLLATE \"C\"']}\n"
    )
    write(tmp_path / "config" / "repo.yaml", repo_yaml())
    write(tmp_path / "config" / "team.yaml", res("team", "teams", TEAMS, team_indexes))
    write(tmp_path / "config" / "member.yaml", res("member", "members", MEMBERS, FOREIGN_KEY))
    with pytest.raises(ConfigError) as raised:
        config.load(tmp_path / "config", base=tmp_path)
    problems = sorted(str(p) for p in raised.value.problems)
    assert len(problems) == 2, problems
    assert "unique index 'teams_code_region' is on these columns but with a collation or operator class" in (
        problems[0] + problems[1]
    )
    assert "unique index 'teams_region' is on these columns but with a collation or operator class" in (
        problems[0] + problems[1]
    )
    assert all(re.match(r"config/member\.yaml:\d+:\d+: spec\.", p) for p in problems), problems


@pytest.fixture
def project(tmp_path: Path, database_url: str) -> Project:
    return Project(tmp_path, database_url)


@pytest.fixture
def source(server_url: str) -> Iterator[str]:
    yield from fresh_database(server_url)


@pytest.fixture
def target(server_url: str) -> Iterator[str]:
    yield from fresh_database(server_url)
