"""Changes that rewrite a table are refused like destructive ones: the classifier (``generator.rewrites``) is
checked against PostgreSQL itself, then the refusal as users meet it (the CLI, the Repo settings, the daemon).

The oracle: a table with rows gets a new ``pg_class.relfilenode`` exactly when PostgreSQL rewrites it. Every
pair of types is altered with the statement the generator renders, in a session whose TimeZone is not UTC
(timestamp <-> timestamptz is in place under UTC only); every added column with the statement the generator
renders too.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from orchestrator import model, pgtypes
from orchestrator.daemon import reconcile
from orchestrator.generator import operations as ops
from orchestrator.generator import render, rewrites
from tests.conftest import fresh_database, run_cli, write
from tests.harness import repo_yaml, res

IN_PLACE = [
    ("varchar(20)", "varchar(40)"),
    ("varchar(20)", "varchar"),
    ("varchar", "text"),
    ("varchar(20)", "text"),
    ("text", "varchar"),
    ("numeric(10,2)", "numeric(12,2)"),
    ("numeric(10,0)", "numeric(12,0)"),
    ("numeric(10,2)", "numeric"),
    ("timestamp(3)", "timestamp(6)"),
    ("timestamp(3)", "timestamp"),
    ("timestamp", "timestamp(6)"),
    ("timestamptz(0)", "timestamptz(3)"),
    ("timestamptz(3)", "timestamptz"),
    ("time(2)", "time"),
    ("timetz(2)", "timetz(4)"),
    ("interval(3)", "interval(6)"),
    ("interval(3)", "interval"),
    ("varbit(5)", "varbit(10)"),
    ("varbit(5)", "varbit"),
    ("bit(5)", "varbit"),
    ("cidr", "inet"),
    ("serial", "integer"),
    ("bigserial", "bigint"),
    ("smallserial", "smallint"),
    ("bigint", "bigserial"),
    ("varchar(20)[]", "varchar[]"),
    ("numeric(10,2)[]", "numeric[]"),
    ("text", "citext"),
    ("citext", "varchar"),
    ("xml", "text"),
    ("integer", "oid"),
]
REWRITE = [
    ("integer", "bigint"),
    ("smallint", "integer"),
    ("bigint", "integer"),
    ("integer", "numeric(12,2)"),
    ("real", "double precision"),
    ("text", "varchar(20)"),
    ("varchar", "varchar(20)"),
    ("varchar(40)", "varchar(20)"),
    ("citext", "varchar(20)"),
    ("char(5)", "char(10)"),
    ("char(5)", "text"),
    ("char(5)", "varchar(10)"),
    ("text", "char(5)"),
    ("json", "jsonb"),
    ("jsonb", "json"),
    ("timestamp", "timestamptz"),
    ("timestamptz", "timestamp"),
    ("timestamp(6)", "timestamp(3)"),
    ("timestamp", "timestamp(3)"),
    ("interval", "interval(3)"),
    ("numeric(10,2)", "numeric(10,3)"),
    ("numeric(10,2)", "numeric(8,2)"),
    ("numeric", "numeric(10,2)"),
    ("bit(5)", "bit(10)"),
    ("bit(5)", "varbit(10)"),
    ("varbit(10)", "varbit(5)"),
    ("inet", "cidr"),
    ("integer[]", "bigint[]"),
    ("varchar[]", "text[]"),
    ("varchar(20)[]", "varchar(40)[]"),
    ("text", "text[]"),
    ("uuid", "text"),
    ("serial", "bigint"),
    ("integer", "bigserial"),
    ("public.mood", "text"),
    ("text", "public.mood"),
    ("text", "public.short_text"),
]
ADDED = {
    "now()": model.Attribute("c", "timestamptz", default_sql="now()"),
    "current_timestamp": model.Attribute("c", "timestamptz", allow_null=False, default_sql="current_timestamp"),
    "current_date": model.Attribute("c", "date", default_sql="current_date"),
    "localtimestamp": model.Attribute("c", "timestamp", default_sql="localtimestamp"),
    "statement_timestamp()": model.Attribute("c", "timestamptz", default_sql="statement_timestamp()"),
    "literal": model.Attribute("c", "integer", allow_null=False, default=0),
    "literal with parentheses": model.Attribute("c", "text", default="a(b)"),
    "'x'::text": model.Attribute("c", "text", default_sql="'x'::text"),
    "'{}'::jsonb": model.Attribute("c", "jsonb", allow_null=False, default_sql="'{}'::jsonb"),
    "lower()": model.Attribute("c", "text", default_sql="lower('A(B)')"),
    "no default": model.Attribute("c", "text"),
    "gen_random_uuid()": model.Attribute("c", "uuid", default_sql="gen_random_uuid()"),
    "uuid_generate_v4()": model.Attribute("c", "uuid", default_sql="uuid_generate_v4()"),
    "clock_timestamp()": model.Attribute("c", "timestamptz", default_sql="clock_timestamp()"),
    "random()": model.Attribute("c", "double precision", default_sql="random()"),
    "md5(random())": model.Attribute("c", "text", default_sql="md5(random()::text)"),
    "timeofday()": model.Attribute("c", "text", default_sql="timeofday()"),
    "identity": model.Attribute("c", "bigint", allow_null=False, generated="identity"),
    "always identity": model.Attribute("c", "bigint", allow_null=False, generated="always"),
    "serial": model.Attribute("c", "serial"),
    "bigserial": model.Attribute("c", "bigserial"),
}
LINE = (
    "~ column public.users.id type integer -> bigint — rewrites table public.users holding ACCESS EXCLUSIVE "
    "(reads and writes wait) for the whole rewrite"
)


# -- the classifier against PostgreSQL -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def oracle(server_url: str) -> Iterator[str]:
    """One database for every oracle case (each uses a table of its own), with the types the cases name."""
    database = fresh_database(server_url)
    url = next(database)
    with psycopg.connect(url, autocommit=True) as conn:
        available = {str(r[0]) for r in conn.execute("SELECT name FROM pg_available_extensions").fetchall()}
        for extension in sorted(EXTENSIONS & available):  # the embedded PostgreSQL ships without contrib
            conn.execute(sql.SQL("CREATE EXTENSION {}").format(sql.Identifier(extension)))
        conn.execute("CREATE TYPE public.mood AS ENUM ('ok', 'sad')")
        conn.execute("CREATE DOMAIN public.short_text AS text CHECK (length(VALUE) < 10)")
    yield url
    next(database, None)


EXTENSIONS = frozenset({"citext", "uuid-ossp", "pgcrypto"})
_NEEDS = {"citext": "citext", "uuid_generate": "uuid-ossp", "gen_random_bytes": "pgcrypto"}


def installed(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {str(r[0]) for r in conn.execute("SELECT extname FROM pg_extension").fetchall()}


def require_extensions(url: str, *texts: str) -> None:
    """Skip a case whose type or function comes with an extension this server does not have: the embedded
    PostgreSQL ships without contrib; the PostgreSQL 15 run of CI has them and checks these cases."""
    needed = {extension for text in texts for key, extension in _NEEDS.items() if key in text}
    missing = needed - installed(url)
    if missing:
        pytest.skip(f"extension {', '.join(sorted(missing))} is not available on this server")


def rewritten(url: str, table: str, create: str, change: list[str]) -> bool:
    """Create ``table`` (columns ``create``) with two rows, run ``change`` under TimeZone America/New_York,
    and tell whether PostgreSQL gave the table a new file."""
    name = sql.Identifier(table)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id integer, {})").format(name, sql.SQL(create)))
        conn.execute(sql.SQL("INSERT INTO {} (id) VALUES (1), (2)").format(name))
        node = "SELECT relfilenode FROM pg_class WHERE oid = %s::regclass"
        before = conn.execute(node, (table,)).fetchone()
        conn.execute("SET TimeZone = 'America/New_York'")
        for statement in change:
            conn.execute(statement.encode())
        return conn.execute(node, (table,)).fetchone() != before


def table_name(*words: str) -> str:
    return "t_" + re.sub(r"[^a-z0-9]+", "_", " ".join(words).replace("[]", " array"))


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [(old, new, False) for old, new in IN_PLACE] + [(old, new, True) for old, new in REWRITE],
    ids=[f"{old}->{new}" for old, new in IN_PLACE + REWRITE],
)
def test_type_change_rewrites_exactly_when_postgresql_does(oracle: str, old: str, new: str, expected: bool) -> None:
    for type_ in (old, new):
        assert pgtypes.normalise(type_) == type_ or type_ in rewrites.SERIAL_STORAGE  # canonical, as generated
    require_extensions(oracle, old, new)
    table = table_name(old, "to", new)
    change = render.statements(ops.AlterType(ops.Ref("public", table), "c", old, new))
    assert rewritten(oracle, table, f"c {old}", change) is expected, "PostgreSQL disagrees with the test's list"
    assert rewrites.type_change_rewrites(old, new) is expected


@pytest.mark.parametrize("case", sorted(ADDED))
def test_added_column_rewrites_exactly_when_postgresql_does(oracle: str, case: str) -> None:
    attribute = ADDED[case]
    require_extensions(oracle, case, attribute.type)
    table = table_name("add", case)
    change = render.statements(ops.AddColumn(ops.Ref("public", table), attribute))
    expected = rewritten(oracle, table, "other text", change)
    assert (rewrites.added_column_rewrites(attribute) is not None) is expected


def test_the_function_lists_match_pg_proc(oracle: str) -> None:
    """Every function taken as not volatile is stable or immutable in every overload; every one known to be
    volatile is volatile (those this server has: some come with extensions or newer versions)."""
    query = "SELECT proname, provolatile FROM pg_proc WHERE proname = ANY(%s)"
    names = sorted(rewrites.NOT_VOLATILE | rewrites.SYNTAX | rewrites.VOLATILE)
    with psycopg.connect(oracle) as conn:
        found: dict[str, set[str]] = {}
        for name, volatility in conn.execute(query, (names,)).fetchall():
            found.setdefault(name, set()).add(volatility)
    assert not rewrites.NOT_VOLATILE - found.keys()  # no misspelt name
    assert {name for name in rewrites.NOT_VOLATILE | rewrites.SYNTAX if "v" in found.get(name, set())} == set()
    assert {name for name in rewrites.VOLATILE if name in found and found[name] != {"v"}} == set()
    absent = {"random_normal"}  # PostgreSQL 16
    absent |= {
        name
        for key, extension in _NEEDS.items()
        if extension not in installed(oracle)
        for name in rewrites.VOLATILE
        if name.startswith(key)
    }
    assert rewrites.VOLATILE - found.keys() <= absent


# -- the classifier's reading of SQL and of operation lists --------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("now()", None),
        ("CURRENT_TIMESTAMP(3)", None),
        ("'a(b)'", None),
        ("'it''s f()'", None),
        ("E'x\\' g()'", None),
        ("$$h()$$", None),
        ("$q$ h() $q$", None),
        ("'1'::character varying(10)", None),
        ("CAST('1' AS numeric(10,2))", None),
        ("'x'::public.mood", None),
        ("now() + interval '1 day'", None),
        ("date_trunc('day', pg_catalog.now())", None),
        ("extract(year from now())::integer", None),
        ("-- f()\n1", None),
        ("/* f() */ 1", None),
        ("gen_random_uuid()", "volatile default gen_random_uuid(): every row gets its own value"),
        ("pg_catalog.random()", "volatile default pg_catalog.random(): every row gets its own value"),
        ("'x'::text || my_func()", "default 'x'::text || my_func() (unknown function my_func(): treated as volatile)"),
        ("app.next_code(1)", "default app.next_code(1) (unknown function app.next_code(): treated as volatile)"),
    ],
)
def test_volatility_of_defaults(expression: str, reason: str | None) -> None:
    assert rewrites.volatility(expression) == reason


def test_lines_name_the_operation_and_the_lock_and_skip_new_tables() -> None:
    users, tasks = ops.Ref("public", "users"), ops.Ref(None, "tasks")
    table = model.Table(resource="user", repo="app", name="users", schema="public", attributes=())
    token = model.Attribute("token", "uuid", default_sql="gen_random_uuid()")
    operations: list[ops.Operation] = [
        ops.AlterType(users, "id", "integer", "bigint"),
        ops.AlterType(users, "name", "varchar(20)", "varchar(40)"),
        ops.AddColumn(users, token),
        ops.AddColumn(tasks, model.Attribute("n", "bigint", generated="identity")),
    ]
    assert rewrites.rewrites(operations) == [
        LINE,
        "+ column public.users.token uuid — volatile default gen_random_uuid(): every row gets its own value; "
        "rewrites table public.users holding ACCESS EXCLUSIVE (reads and writes wait) for the whole rewrite",
        "+ column tasks.n bigint — identity: every row gets its own value from the sequence; rewrites table tasks "
        "in every tenant schema holding ACCESS EXCLUSIVE (reads and writes wait) for the whole rewrite",
    ]
    created = [ops.CreateTable(users, table), ops.AddColumn(users, token), ops.AlterType(users, "id", "int", "x")]
    assert rewrites.rewrites(created) == []


# -- generate-migrations ---------------------------------------------------------------------------------------

ID = "    - {name: id, type: bigint, primaryKey: true}\n"


def files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def setup(root: Path, *resources: str, repo: str = "") -> None:
    shutil.rmtree(root / "config", ignore_errors=True)
    write(root / "config" / "repo.yaml", repo_yaml(repo))
    for i, text in enumerate(resources):
        write(root / "config" / f"r{i}.yaml", text)


def generated(root: Path, *resources: str, repo: str = "") -> None:
    setup(root, *resources, repo=repo)
    first = run_cli("generate-migrations", cwd=root)
    assert first.code == 0, first.err


def test_integer_to_bigint_is_refused_and_nothing_written(tmp_path: Path) -> None:
    generated(tmp_path, res("u", "users", "    - {name: id, type: integer, primaryKey: true}\n"))
    setup(tmp_path, res("u", "users", "    - {name: id, type: bigint, primaryKey: true}\n"))
    before = files(tmp_path)
    for args in ([], ["--check"], ["--dry-run"]):
        refused = run_cli("generate-migrations", *args, cwd=tmp_path)
        assert refused.code == 1, refused.out + refused.err
        assert refused.err.startswith("error: refusing changes that rewrite a table; nothing was written:\n")
        assert f"  app: {LINE}\n" in refused.err
        assert "expand/contract" in refused.err and "varchar(n) widened" in refused.err
        assert "--allow-blocking" in refused.err and "allowBlocking: true" in refused.err
        assert refused.out == "" and files(tmp_path) == before
    allowed = run_cli("generate-migrations", "--allow-blocking", cwd=tmp_path)
    assert allowed.code == 0, allowed.err
    assert "~ column public.users.id type integer -> bigint" in allowed.out
    assert len(files(tmp_path)) == len(before) + 2  # the migration and the snapshot


@pytest.mark.parametrize("setting", ["  allowBlocking: true\n", "  onlineSafe: false\n"])
def test_repo_settings_allow_rewrites(tmp_path: Path, setting: str) -> None:
    generated(tmp_path, res("t", "things", ID + "    - {name: n, type: integer}\n"))
    setup(tmp_path, res("t", "things", ID + "    - {name: n, type: bigint}\n"), repo=setting)
    result = run_cli("generate-migrations", cwd=tmp_path)
    assert result.code == 0, result.err
    assert "~ column public.things.n type integer -> bigint" in result.out


def test_changes_made_in_place_pass_without_warning(tmp_path: Path) -> None:
    before = "    - {name: code, type: varchar(20)}\n    - {name: note, type: varchar}\n"
    after = "    - {name: code, type: varchar(40)}\n    - {name: note, type: text}\n"
    amount = "    - {name: amount, type: 'numeric(%s,2)'}\n"
    generated(tmp_path, res("t", "things", ID + before + amount % 10))
    added = "    - {name: seen, type: timestamptz, allowNull: false, defaultSql: now()}\n"
    setup(tmp_path, res("t", "things", ID + after + amount % 12 + added))
    result = run_cli("generate-migrations", cwd=tmp_path)
    assert result.code == 0 and result.err == "", result.err
    for change in ("code type varchar(20) -> varchar(40)", "note type varchar -> text", "amount type numeric(10,2)"):
        assert f"~ column public.things.{change}" in result.out
    assert "+ column public.things.seen timestamptz" in result.out


def test_volatile_default_on_a_new_column_is_refused_but_not_on_a_new_table(tmp_path: Path) -> None:
    token = "    - {name: token, type: uuid, defaultSql: gen_random_uuid()}\n"
    serial = "    - {name: n, type: bigint, generated: identity}\n"
    generated(tmp_path, res("t", "things", ID), res("o", "others", ID + token + serial))  # created: empty
    setup(tmp_path, res("t", "things", ID + token), res("o", "others", ID + token + serial))
    before = files(tmp_path)
    refused = run_cli("generate-migrations", cwd=tmp_path)
    assert refused.code == 1 and files(tmp_path) == before
    assert (
        "app: + column public.things.token uuid — volatile default gen_random_uuid(): every row gets its own "
        "value; rewrites table public.things holding ACCESS EXCLUSIVE" in refused.err
    )
    assert "add the column without it, then set the default" in refused.err
    assert "others" not in refused.err


def test_destructive_and_blocking_refusals_come_in_one_message(tmp_path: Path) -> None:
    generated(tmp_path, res("t", "things", ID + "    - {name: n, type: integer}\n    - {name: nick, type: text}\n"))
    setup(tmp_path, res("t", "things", ID + "    - {name: n, type: bigint}\n"))
    both = run_cli("generate-migrations", cwd=tmp_path)
    assert both.code == 1
    assert re.search(
        r"refusing changes that rewrite a table.*public\.things\.n type integer -> bigint.*--allow-blocking.*"
        r"refusing destructive changes.*public\.things\.nick.*--allow-destructive",
        both.err,
        re.DOTALL,
    ), both.err
    destructive = run_cli("generate-migrations", "--allow-blocking", cwd=tmp_path)
    assert destructive.code == 1 and "refusing destructive changes" in destructive.err
    assert "rewrite a table" not in destructive.err
    blocking = run_cli("generate-migrations", "--allow-destructive", cwd=tmp_path)
    assert blocking.code == 1 and "rewrite a table" in blocking.err and "destructive changes" not in blocking.err
    assert run_cli("generate-migrations", "--allow-destructive", "--allow-blocking", cwd=tmp_path).code == 0


# -- the daemon: the Repo's setting only ---------------------------------------------------------------------


def test_reconcile_obeys_the_repo_setting(tmp_path: Path, database_url: str) -> None:
    repo = "apiVersion: orchestrator/v1\nkind: Repo\nmetadata: {name: app}\nspec:\n  url: %s\n%s"
    config = tmp_path / "config"
    write(config / "repo.yaml", repo % (database_url, ""))
    write(config / "things.yaml", res("t", "things", ID + "    - {name: n, type: integer}\n"))
    assert reconcile.reconcile(config, tmp_path).ok
    write(config / "things.yaml", res("t", "things", ID + "    - {name: n, type: bigint}\n"))
    refused = reconcile.reconcile(config, tmp_path)
    assert not refused.ok and refused.errors[0].startswith("generate: refusing changes that rewrite a table")
    assert column_type(database_url) == "integer"
    write(config / "repo.yaml", repo % (database_url, "  allowBlocking: true\n"))
    allowed = reconcile.reconcile(config, tmp_path)
    assert allowed.ok, allowed.as_dict()
    assert column_type(database_url) == "bigint"


def column_type(url: str) -> str:
    with psycopg.connect(url) as conn:
        query = "SELECT data_type FROM information_schema.columns WHERE table_name = 'things' AND column_name = 'n'"
        row = conn.execute(query).fetchone()
    assert row is not None
    return str(row[0])
