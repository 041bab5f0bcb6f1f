"""Bookkeeping in the database: ``schema_migrations`` per target, and the ``orchestrator`` schema.

``schema_migrations`` is Ecto's table (``version bigint PRIMARY KEY, inserted_at timestamp(0)``) with three
nullable columns of ours (``name``, ``checksum``, ``duration_ms``), so an existing Ecto/AshPostgres database is
adopted as it is: its rows mean "applied", our columns are added. Having a row always means the migration is
applied: the row is written in the migration's own transaction.

A ``schema_migrations`` of another layout (dbmate's ``version varchar PRIMARY KEY``, golang-migrate's ``dirty``
flag, ...) belongs to another tool: it is refused before anything is changed (``ForeignTableError``), never
altered, because that tool reads the same rows and would break on ours.

The ``orchestrator`` schema keeps what must outlive files and processes:

* ``migrations`` — the text of every applied migration, per scope (global or tenant), so a rollback works when
  an older image no longer has the file;
* ``progress`` — statements done of a ``transaction:false`` migration, per target, so a re-run resumes there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from orchestrator.errors import OrchestratorError

SCHEMA = "orchestrator"
OURS = ("name", "checksum", "duration_ms")
"""The nullable columns orchestrator adds to Ecto's table."""


@dataclass(frozen=True)
class Applied:
    version: int
    name: str | None
    checksum: str | None


class ForeignTableError(OrchestratorError):
    """A target's ``schema_migrations`` has another tool's layout; refused before anything was changed."""


class ForeignTable(dict[int, Applied]):
    """What a target whose ``schema_migrations`` is another tool's has applied: nothing of ours, and why.

    The planner refuses to plan for it (``reason`` is the message), so a tenant rollout fails that tenant only.
    """

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # format_type(): bigint, character varying(128), timestamp(0) without time zone, ...
    required: bool  # NOT NULL without a default: an INSERT must give it


_COLUMNS = """
SELECT n.nspname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull AND NOT a.atthasdef
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relname = 'schema_migrations' AND c.relkind IN ('r', 'p') AND n.nspname = ANY (%s)
ORDER BY n.nspname, a.attnum
"""


def layouts(conn: psycopg.Connection[Any], schemas: Sequence[str]) -> dict[str, list[Column]]:
    """The columns of each schema's ``schema_migrations`` (one query; schemas without one are left out)."""
    found: dict[str, list[Column]] = {}
    for schema, name, type_, required in conn.execute(_COLUMNS, (list(schemas),)).fetchall():
        found.setdefault(str(schema), []).append(Column(str(name), str(type_), bool(required)))
    return found


def foreign_layout(schema: str, columns: Sequence[Column]) -> str | None:
    """Why ``schema``'s ``schema_migrations`` cannot be shared (None: Ecto's or ours, adopted as it is).

    One line, since a tenant's failure shows the first line of its error.
    """
    by_name = {c.name: c for c in columns}
    version = by_name.get("version")
    problems = []
    if version is None:
        problems.append("no version column")
    elif version.type != "bigint":
        problems.append(f"version is {version.type}, not bigint")
    if "inserted_at" not in by_name:
        problems.append("no inserted_at column")
    problems += [
        f"{c.name} is NOT NULL without a default"
        for c in columns
        if c.required and c.name not in ("version", "inserted_at", *OURS)
    ]
    if not problems:
        return None
    table = f"{schema}.schema_migrations"
    dbmate = version is not None and version.type.startswith("character varying") and set(by_name) <= {"version", *OURS}
    owner = "dbmate's table layout" if dbmate else "a foreign table layout (another migration tool's)"
    way = (
        f"rename it (ALTER TABLE {table} RENAME TO dbmate_migrations) and run dbmate with "
        f"--migrations-table {schema}.dbmate_migrations"
        if dbmate
        else "rename it and point that tool at the new name"
    )
    return (
        f"{table} has {owner} ({'; '.join(problems)}), not the Ecto layout orchestrator records in "
        f"(version bigint PRIMARY KEY, inserted_at timestamp(0)); nothing was changed. Way forward: give "
        f"orchestrator a database or schema of its own, or keep the other tool's bookkeeping apart: {way}"
    )


def _table(schema: str) -> sql.Identifier:
    return sql.Identifier(schema, "schema_migrations")


def ensure(conn: psycopg.Connection[Any], schema: str, *, lock_timeout_ms: int = 5_000) -> None:
    """Create (or adopt) the bookkeeping tables; safe to run concurrently from several processes."""
    ensure_target(conn, schema, lock_timeout_ms=lock_timeout_ms)
    ensure_shared(conn)


def ensure_target(conn: psycopg.Connection[Any], schema: str, *, lock_timeout_ms: int = 5_000) -> None:
    """Create or adopt one target's ``schema_migrations``; nothing (one query) when it is already ours.

    Adopting takes an ACCESS EXCLUSIVE lock for the ALTER, so it runs only when columns are missing, and under
    ``lock_timeout`` so a reader holding the table cannot make every runner queue behind it. Another tool's
    table raises ``ForeignTableError`` before anything is changed.
    """
    columns = layouts(conn, [schema]).get(schema, [])
    reason = foreign_layout(schema, columns) if columns else None
    if reason:
        raise ForeignTableError(reason)
    if {c.name for c in columns} >= set(OURS):
        return
    conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{lock_timeout_ms}ms",))
    create_all(
        conn,
        [
            sql.SQL("CREATE TABLE IF NOT EXISTS {} (version bigint PRIMARY KEY, inserted_at timestamp(0))").format(
                _table(schema)
            ),
            sql.SQL(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS name text, ADD COLUMN IF NOT EXISTS checksum text, "
                "ADD COLUMN IF NOT EXISTS duration_ms integer"
            ).format(_table(schema)),
        ],
    )


_SHARED_TABLES = ["migrations", "progress", "rollouts", "rollout_tenants"]


def ensure_shared(conn: psycopg.Connection[Any]) -> None:
    """Create the ``orchestrator`` schema and its tables (once per database; one query when they exist)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = ANY (%s)",
        (SCHEMA, _SHARED_TABLES),
    ).fetchone()
    if row and row[0] == len(_SHARED_TABLES):
        return
    create_all(
        conn,
        [
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)),
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (scope text NOT NULL, version bigint NOT NULL, name text NOT NULL, "
                "checksum text NOT NULL, body text NOT NULL, stored_at timestamptz NOT NULL DEFAULT now(), "
                "PRIMARY KEY (scope, version))"
            ).format(sql.Identifier(SCHEMA, "migrations")),
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (target text NOT NULL, version bigint NOT NULL, "
                "statements_done integer NOT NULL, checksum text, PRIMARY KEY (target, version))"
            ).format(sql.Identifier(SCHEMA, "progress")),
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                "direction text NOT NULL, started_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz, "
                "tenants integer NOT NULL, failed integer)"
            ).format(sql.Identifier(SCHEMA, "rollouts")),
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (rollout_id bigint NOT NULL, tenant text NOT NULL, "
                "status text NOT NULL, attempts integer NOT NULL, applied text[] NOT NULL DEFAULT '{{}}', "
                "last_error text, finished_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (rollout_id, tenant))"
            ).format(sql.Identifier(SCHEMA, "rollout_tenants")),
        ],
    )


def create_all(conn: psycopg.Connection[Any], statements: Sequence[sql.SQL | sql.Composed]) -> None:
    """Run ``CREATE … IF NOT EXISTS`` statements, each in its own transaction, tolerating a concurrent creator."""
    for statement in statements:
        # IF NOT EXISTS is not atomic: two processes creating the same table at once can collide on the catalog
        with (
            contextlib.suppress(
                psycopg.errors.UniqueViolation,
                psycopg.errors.DuplicateObject,
                psycopg.errors.DuplicateTable,
                psycopg.errors.DuplicateSchema,
            ),
            conn.transaction(),
        ):
            conn.execute(statement)


def exists(conn: psycopg.Connection[Any], schema: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{schema}".schema_migrations',)).fetchone()
    return bool(row and row[0])


def applied(conn: psycopg.Connection[Any], schema: str, *, adopted: bool = False) -> dict[int, Applied]:
    """Return the applied migrations of a target by version (none when it has no bookkeeping yet).

    ``adopted``: the caller knows the table exists with our columns (one query instead of two). Another tool's
    table raises ``ForeignTableError``.
    """
    if adopted:
        query = sql.SQL("SELECT version, name, checksum FROM {} ORDER BY version").format(_table(schema))
        return {int(r[0]): Applied(int(r[0]), r[1], r[2]) for r in conn.execute(query).fetchall()}
    found = layouts(conn, [schema]).get(schema)
    if not found:
        return {}
    reason = foreign_layout(schema, found)
    if reason:
        raise ForeignTableError(reason)
    ours = {c.name for c in found} >= {"name", "checksum"}
    columns = sql.SQL("version, name, checksum" if ours else "version, NULL, NULL")
    rows = conn.execute(sql.SQL("SELECT {} FROM {} ORDER BY version").format(columns, _table(schema))).fetchall()
    return {int(r[0]): Applied(int(r[0]), r[1], r[2]) for r in rows}


def record(
    conn: psycopg.Connection[Any], schema: str, *, version: int, name: str, checksum: str, duration_ms: int | None
) -> None:
    conn.execute(record_sql(schema, version=version, name=name, checksum=checksum, duration_ms=duration_ms))


def record_sql(schema: str, *, version: int, name: str, checksum: str, duration_ms: int | None) -> sql.Composed:
    """The row of an applied migration, as a statement with its values quoted in (the executor sends it with the
    migration in one query); ``duration_ms`` None: measured by the server, from the start of the transaction
    to this insert (the client does not wait for each statement)."""
    return sql.SQL(
        "INSERT INTO {} (version, inserted_at, name, checksum, duration_ms) VALUES ({}, now() AT TIME ZONE "
        "'utc', {}, {}, coalesce({}::integer, (extract(epoch FROM clock_timestamp() - now()) * 1000)::integer))"
    ).format(_table(schema), sql.Literal(version), sql.Literal(name), sql.Literal(checksum), sql.Literal(duration_ms))


def forget_sql(schema: str, version: int) -> sql.Composed:
    return sql.SQL("DELETE FROM {} WHERE version = {}").format(_table(schema), sql.Literal(version))


def set_checksum(conn: psycopg.Connection[Any], schema: str, version: int, checksum: str) -> None:
    conn.execute(sql.SQL("UPDATE {} SET checksum = %s WHERE version = %s").format(_table(schema)), (checksum, version))


def store_text(conn: psycopg.Connection[Any], scope: str, *, version: int, name: str, checksum: str, body: str) -> None:
    conn.execute(store_text_sql(scope, version=version, name=name, checksum=checksum, body=body))


def store_text_sql(scope: str, *, version: int, name: str, checksum: str, body: str) -> sql.Composed:
    return sql.SQL(
        "INSERT INTO orchestrator.migrations (scope, version, name, checksum, body) VALUES ({}, {}, {}, {}, {}) "
        "ON CONFLICT (scope, version) DO UPDATE SET name = EXCLUDED.name, checksum = EXCLUDED.checksum, "
        "body = EXCLUDED.body, stored_at = now()"
    ).format(*(sql.Literal(v) for v in (scope, version, name, checksum, body)))


def stored_texts(conn: psycopg.Connection[Any], scope: str) -> dict[int, tuple[str, str]]:
    """Return version -> (name, text) of every migration stored for ``scope``."""
    if not conn.execute("SELECT to_regclass('orchestrator.migrations') IS NOT NULL").fetchone()[0]:  # type: ignore[index]
        return {}
    rows = conn.execute("SELECT version, name, body FROM orchestrator.migrations WHERE scope = %s", (scope,))
    return {int(v): (str(n), str(b)) for v, n, b in rows.fetchall()}


def progress_sql(target: str, version: int) -> sql.Composed:
    return sql.SQL(
        "SELECT statements_done, checksum FROM orchestrator.progress WHERE target = {} AND version = {}"
    ).format(sql.Literal(target), sql.Literal(version))


def progress_of(row: Sequence[Any] | None) -> tuple[int, str | None]:
    """Statements done of a partly applied migration, and the checksum of the file they came from."""
    return (int(row[0]), row[1]) if row else (0, None)


def set_progress(conn: psycopg.Connection[Any], target: str, version: int, done: int, checksum: str) -> None:
    conn.execute(
        "INSERT INTO orchestrator.progress (target, version, statements_done, checksum) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (target, version) DO UPDATE SET statements_done = EXCLUDED.statements_done, "
        "checksum = EXCLUDED.checksum",
        (target, version, done, checksum),
    )


def forget_stale_progress(conn: psycopg.Connection[Any], target: str, version: int, checksum: str) -> bool:
    """Drop the partial progress recorded for an older text of a migration; return whether there was any."""
    cursor = conn.execute(
        "DELETE FROM orchestrator.progress WHERE target = %s AND abs(version) = %s AND checksum IS DISTINCT FROM %s",
        (target, version, checksum),
    )
    return cursor.rowcount > 0


def clear_progress_sql(target: str, version: int, *, newer: bool = False) -> sql.Composed:
    """Forget the partial progress of ``version`` on ``target``, up and down; with ``newer``, of every later
    version too (a rollback past them: what a half-run newer migration did is gone or about to be re-run)."""
    return sql.SQL("DELETE FROM orchestrator.progress WHERE target = {} AND abs(version) {} {}").format(
        sql.Literal(target), sql.SQL(">=" if newer else "="), sql.Literal(version)
    )


def start_rollout(conn: psycopg.Connection[Any], direction: str, tenants: int) -> int:
    row = conn.execute(
        "INSERT INTO orchestrator.rollouts (direction, tenants) VALUES (%s, %s) RETURNING id", (direction, tenants)
    ).fetchone()
    assert row is not None
    return int(row[0])


def finish_rollout(conn: psycopg.Connection[Any], rollout: int, failed: int) -> None:
    conn.execute("UPDATE orchestrator.rollouts SET finished_at = now(), failed = %s WHERE id = %s", (failed, rollout))


@dataclass(frozen=True)
class Outcome:
    """One tenant's result in a rollout, as ``rollout_tenants`` keeps it."""

    tenant: str
    status: str
    attempts: int
    applied: list[str]
    error: str | None


def record_tenants(conn: psycopg.Connection[Any], rollout: int, outcomes: Sequence[Outcome]) -> None:
    """Upsert the outcomes (re-running it after a lost connection changes nothing), as one statement (not
    ``executemany``, whose pipeline the watchdog could not see waiting on a silent connection)."""
    latest = {o.tenant: o for o in outcomes}  # one row per tenant: an upsert may not touch a row twice
    rows = sql.SQL(", ").join(
        sql.SQL("({}, {}, {}, {}, {}::text[], {})").format(
            *(sql.Literal(v) for v in (rollout, o.tenant, o.status, o.attempts, o.applied, o.error))
        )
        for o in latest.values()
    )
    conn.execute(
        sql.SQL(
            "INSERT INTO orchestrator.rollout_tenants (rollout_id, tenant, status, attempts, applied, last_error) "
            "VALUES {} ON CONFLICT (rollout_id, tenant) DO UPDATE SET status = EXCLUDED.status, "
            "attempts = EXCLUDED.attempts, applied = EXCLUDED.applied, last_error = EXCLUDED.last_error, "
            "finished_at = now()"
        ).format(rows)
    )


def last_outcomes(conn: psycopg.Connection[Any]) -> dict[str, tuple[str, str | None]]:
    """Each tenant's most recent rollout outcome: status and error (failures stay visible until fixed)."""
    if not conn.execute("SELECT to_regclass('orchestrator.rollout_tenants') IS NOT NULL").fetchone()[0]:  # type: ignore[index]
        return {}
    rows = conn.execute(
        "SELECT DISTINCT ON (tenant) tenant, status, last_error FROM orchestrator.rollout_tenants "
        "ORDER BY tenant, finished_at DESC, rollout_id DESC"
    ).fetchall()
    return {str(t): (str(s), e) for t, s, e in rows}
