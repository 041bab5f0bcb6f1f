"""Apply one migration, up or down, to one target.

A transactional migration runs in one transaction with ``SET LOCAL lock_timeout`` / ``statement_timeout``
(and ``search_path`` for a tenant); its ``schema_migrations`` row and stored text are written in that same
transaction, so it is applied completely or not at all. A ``transaction:false`` migration runs statement by
statement in autocommit; after each statement but the last its progress is recorded, so a re-run resumes at
the statement that failed, and an INVALID index left by a failed ``CREATE INDEX CONCURRENTLY`` is dropped
before it is tried again. Its row is written when the last statement is done (one round trip with the
settings' reset): a connection lost just before re-runs only that statement, which is made re-runnable.

Errors: transient ones (see ``retry``) are re-raised as they are, for the caller's retry loop; permanent ones
become ``MigrationFailed`` naming the SQLSTATE, the migration file and line, and the statement.
"""

from __future__ import annotations

import functools
import re
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from orchestrator.errors import OrchestratorError
from orchestrator.migrations import events, files, recorder, retry
from orchestrator.migrations.target import Direction, Scope, Target

_NO_TRANSACTION = re.compile(
    r"\bCONCURRENTLY\b|^(VACUUM|CREATE\s+DATABASE|DROP\s+DATABASE|ALTER\s+SYSTEM|CLUSTER\b)", re.I
)
_NAME = r'("(?:[^"]|"")+"|\w+)'
_DROP_CONCURRENT = re.compile(
    rf"^\s*DROP\s+INDEX\s+CONCURRENTLY\s+(?:IF\s+EXISTS\s+)?(?:{_NAME}\s*\.\s*)?{_NAME}", re.I
)
_CONCURRENT_INDEX = re.compile(
    r"^\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    rf'("(?:[^"]|"")+"|(?!ON\b)\w+)\s+ON\s+(?:ONLY\s+)?(?:{_NAME}\s*\.\s*)?{_NAME}',
    re.I,
)


_PATIENT = re.compile(
    r"^(CREATE\s+(UNIQUE\s+)?INDEX\s+CONCURRENTLY|DROP\s+INDEX\s+CONCURRENTLY|ALTER\s+TABLE\b[^;]*\bVALIDATE\s+CONSTRAINT\b)",
    re.I,
)
_NO_REPLAY = frozenset({"57", "53", "54", "55", "58", "XX"})


class MigrationFailed(OrchestratorError):
    """A statement failed with a permanent error; nothing of a transactional migration was kept."""

    def __init__(self, message: str, sqlstate: str | None, path: Path | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.sqlstate, self.path, self.line = sqlstate, path, line


def apply(
    conn: psycopg.Connection[Any],
    target: Target,
    migration: files.MigrationFile,
    direction: Direction,
    *,
    sink: events.Sink = events.discard,
    store_text: bool = True,
) -> int:
    """Run ``migration`` ``up`` or ``down`` on ``target``; return its duration in milliseconds."""
    section = direction.section(migration)
    started = time.monotonic()
    if section.transaction:
        try:
            _in_one_query(conn, target, migration, direction, section, store_text)
        except psycopg.Error as exc:
            if retry.is_transient(exc):
                raise
            if (exc.sqlstate or "")[:2] in _NO_REPLAY:  # a timeout or resource error: replaying would repeat it
                message = f"{migration.path}: {exc.sqlstate} {_first(exc)}"
                raise MigrationFailed(message, exc.sqlstate, migration.path) from None
            # The error does not say which statement failed: nothing was kept, so run the migration again one
            # statement at a time to name it (or, if the failure does not repeat, apply it).
            with conn.transaction():
                _settings(conn, target, local=True)
                for statement in section.located():
                    _execute(conn, migration, statement)
                for finishing in _finish(target, migration, direction, _ms(started), store_text):
                    conn.execute(finishing)
    else:
        _non_transactional(conn, target, migration, direction, section, sink)
        # One query, one round trip: the session's settings back; then, under the repo's timeouts again (the
        # section reset them: a lock wait here must end by itself, or the watchdog, which never abandons a
        # session waiting for a lock, would wait with it for ever), the record.
        _script(
            conn,
            *(sql.SQL("RESET {}").format(sql.Identifier(name)) for name in _SETTINGS),
            _settings_sql(target, local=True),
            *_finish(target, migration, direction, _ms(started), store_text),
            recorder.clear_progress_sql(target.name, migration.version),
        )
    return _ms(started)


def _in_one_query(
    conn: psycopg.Connection[Any],
    target: Target,
    migration: files.MigrationFile,
    direction: Direction,
    section: files.Section,
    store_text: bool,
) -> None:
    """The whole migration and its record as one simple-protocol query: PostgreSQL runs a query of several
    statements as one implicit transaction (all or nothing), in one round trip, and the client has nothing to
    do per statement. That is what makes a tenant fan-out cheap."""
    _script(
        conn,
        _settings_sql(target, local=True),
        sql.SQL(section.script()),
        *_finish(target, migration, direction, None, store_text),
    )


def _script(conn: psycopg.Connection[Any], *statements: sql.Composable) -> None:
    """Send ``statements`` as one query (no parameters: values are quoted in by ``sql.Literal``)."""
    conn.execute(sql.SQL("\n;\n").join(statements))  # a newline first: a statement may end in a -- comment


def _non_transactional(
    conn: psycopg.Connection[Any],
    target: Target,
    migration: files.MigrationFile,
    direction: Direction,
    section: files.Section,
    sink: events.Sink,
) -> None:
    """Run a ``transaction:false`` section statement by statement, resumable.

    A statement that may run in a transaction commits together with its progress row, so a lost connection
    can never make it run twice. The others (CONCURRENTLY, VACUUM, ...) run alone and are made re-runnable:
    an index a previous attempt finished is not created again, an INVALID one it left behind is dropped first.
    """
    key = _progress_key(migration, direction)
    statements = section.located()
    timeouts, schema = target.repo.timeouts, target.schema if target.scope is Scope.TENANT else None
    # the lock timeout of the first statement (the usual start) set with the others: one round trip less
    first = _wait_ms(target, _code(statements[0].sql)) if statements else timeouts.lock_timeout_ms
    # one query, one round trip (not a pipeline: a pipeline's fetch leaves libpq saying nothing is in progress,
    # and the watchdog would not see the call wait on a silent connection)
    cursor = conn.execute(
        sql.SQL("{}\n;\n{}").format(
            _settings_for(schema, first, timeouts.statement_timeout_ms, False),
            recorder.progress_sql(target.name, key),
        )
    )
    cursor.nextset()
    done, checksum = recorder.progress_of(cursor.fetchone())
    if done and checksum not in (None, migration.checksum):
        raise MigrationFailed(
            f"{migration.path}: edited after {done} of its statements ran on {target.name}; restore the file, or "
            "run 'orchestrator repair' to forget the partial progress",
            None,
            migration.path,
        )
    if done:
        sink(events.Resumed(target, migration, done + 1, len(statements)))
    waits = f"{first}ms"
    for index, statement in enumerate(statements[done:], start=done):
        waits = _lock_timeout(conn, target, _code(statement.sql), waits)
        if _NO_TRANSACTION.search(_code(statement.sql)):
            if _prepare_concurrent(conn, statement.sql):
                _execute(conn, migration, statement)
            if index + 1 < len(statements):  # after the last one, the migration's record is written instead
                recorder.set_progress(conn, target.name, key, index + 1, migration.checksum)
        else:
            with conn.transaction():
                _execute(conn, migration, statement)
                recorder.set_progress(conn, target.name, key, index + 1, migration.checksum)


def _lock_timeout(conn: psycopg.Connection[Any], target: Target, code: str, current: str) -> str:
    """Give a statement that only takes SHARE UPDATE EXCLUSIVE (a concurrent index build or drop, VALIDATE
    CONSTRAINT) the repo's ``lockWait`` to wait for locks instead of ``lockTimeout``: waiting, it blocks no read
    or write of the application, and a concurrent build waits for every older transaction of the database, which
    a short lock_timeout would make it fail (and rebuild from scratch) on any long transaction."""
    wanted = f"{_wait_ms(target, code)}ms"
    if wanted != current:
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (wanted,))
    return wanted


def _wait_ms(target: Target, code: str) -> int:
    timeouts = target.repo.timeouts
    return max(timeouts.lock_timeout_ms, timeouts.lock_wait_ms) if _PATIENT.match(code) else timeouts.lock_timeout_ms


def _progress_key(migration: files.MigrationFile, direction: Direction) -> int:
    return migration.version if direction is Direction.UP else -migration.version


def _finish(
    target: Target,
    migration: files.MigrationFile,
    direction: Direction,
    duration_ms: int | None,
    store_text: bool,
) -> list[sql.Composed]:
    """The statements that record ``migration`` as applied (or no longer applied) at ``target``."""
    if direction is Direction.DOWN:
        # partial progress of this or a newer migration is stale once this one is rolled back: a half-run
        # _validate must start from its first statement when its change is applied again
        return [
            recorder.forget_sql(target.schema, migration.version),
            recorder.clear_progress_sql(target.name, migration.version, newer=True),
        ]
    done = [
        recorder.record_sql(
            target.schema,
            version=migration.version,
            name=migration.name,
            checksum=migration.checksum,
            duration_ms=duration_ms,
        )
    ]
    if store_text:  # a tenant rollout stores each text once, not once per tenant
        done.append(
            recorder.store_text_sql(
                target.scope.value,
                version=migration.version,
                name=migration.name,
                checksum=migration.checksum,
                body=migration.text,
            )
        )
    return done


_SETTINGS = ("lock_timeout", "statement_timeout", "search_path")


def _settings(conn: psycopg.Connection[Any], target: Target, *, local: bool) -> None:
    conn.execute(_settings_sql(target, local=local))


def _settings_sql(target: Target, *, local: bool) -> sql.SQL:
    """lock_timeout, statement_timeout and, for a tenant, search_path, in one statement."""
    timeouts = target.repo.timeouts
    schema = target.schema if target.scope is Scope.TENANT else None
    return _settings_for(schema, timeouts.lock_timeout_ms, timeouts.statement_timeout_ms, local)


def _settings_for(schema: str | None, lock_ms: int, statement_ms: int, local: bool) -> sql.SQL:
    """Each part rendered (quoted) once and kept: the timeouts once per run, a tenant's search_path once per
    tenant; a rollout sends these with every migration of every tenant."""
    rendered = _set_config("lock_timeout", f"{lock_ms}ms", local) + ", "
    rendered += _set_config("statement_timeout", f"{statement_ms}ms", local)
    if schema is not None:
        rendered += ", " + _search_path(schema, local)
    return sql.SQL("SELECT " + rendered)


@functools.lru_cache(maxsize=64)
def _set_config(name: str, value: str, local: bool) -> str:
    return (
        sql.SQL("set_config({}, {}, {})")
        .format(sql.Literal(name), sql.Literal(value), sql.Literal(local))
        .as_string(None)
    )


@functools.lru_cache(maxsize=4096)
def _search_path(schema: str, local: bool) -> str:
    return _set_config("search_path", sql.SQL("{}, public").format(sql.Identifier(schema)).as_string(None), local)


def _execute(conn: psycopg.Connection[Any], migration: files.MigrationFile, statement: files.Statement) -> None:
    try:
        conn.execute(statement.sql.encode())
    except psycopg.Error as exc:
        if retry.is_transient(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        shown = " ".join(statement.sql.split())
        shown = shown if len(shown) <= 300 else shown[:297] + "..."
        raise MigrationFailed(
            f"{migration.path}:{statement.line}: {exc.sqlstate or 'error'} {first}\n  statement: {shown}",
            exc.sqlstate,
            migration.path,
            statement.line,
        ) from None


def _code(statement: str) -> str:
    """The statement without its leading comments."""
    return re.sub(r"^(\s*(--[^\n]*\n|/\*.*?\*/))*\s*", "", statement, flags=re.S)


def _prepare_concurrent(conn: psycopg.Connection[Any], statement: str) -> bool:
    """Make a CONCURRENTLY index statement re-runnable; return whether it still has to run.

    CREATE: a valid index of that name next to its table (in the table's schema, however the table is named)
    means a previous attempt finished (skip); an INVALID one is what a failed attempt leaves behind (drop it,
    then run). DROP: no index left means done.
    """
    code = _code(statement)
    create, drop = _CONCURRENT_INDEX.match(code), _DROP_CONCURRENT.match(code)
    if drop:
        return bool(_scalar(conn, "SELECT to_regclass(%s) IS NOT NULL", (_qualified(drop.group(1), drop.group(2)),)))
    if not create:
        return True  # an unnamed index, or another statement: nothing to check
    row = conn.execute(
        "SELECT n.nspname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = %s AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = to_regclass(%s))",
        (_unquote(create.group(1)), _qualified(create.group(2), create.group(3))),
    ).fetchone()
    if row and row[1]:
        return False
    if row:
        conn.execute(
            sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(row[0], _unquote(create.group(1))))
        )
    return True


def _unquote(raw: str) -> str:
    return raw[1:-1].replace('""', '"') if raw.startswith('"') else raw.lower()


def _qualified(schema: str | None, name: str) -> str:
    """The name as written (quotes kept), for ``to_regclass`` to resolve like the statement would."""
    return f"{schema}.{name}" if schema else name


def _scalar(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...]) -> Any:
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def _first(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
