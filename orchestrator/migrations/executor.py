"""Apply one migration, up or down, to one target.

A transactional migration runs in one transaction with ``SET LOCAL lock_timeout`` / ``statement_timeout``
(and ``search_path`` for a tenant); its ``schema_migrations`` row and stored text are written in that same
transaction, so it is applied completely or not at all. A ``transaction:false`` migration runs statement by
statement in autocommit; after each statement its progress is recorded, so a re-run resumes at the statement
that failed, and an INVALID index left by a failed ``CREATE INDEX CONCURRENTLY`` is dropped before it is
tried again. Its row is written when the last statement is done.

Errors: transient ones (see ``retry``) are re-raised as they are, for the caller's retry loop; permanent ones
become ``MigrationFailed`` naming the SQLSTATE, the migration file and line, and the statement.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from orchestrator import model
from orchestrator.errors import OrchestratorError
from orchestrator.migrations import files, recorder, retry

_CONCURRENT_INDEX = re.compile(
    r'^\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?("(?:[^"]|"")+"|\w+)', re.I
)


class MigrationFailed(OrchestratorError):
    """A statement failed with a permanent error; nothing of a transactional migration was kept."""

    def __init__(self, message: str, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@dataclass(frozen=True)
class Target:
    """Where migrations are applied: ``schema`` holds its ``schema_migrations``; ``tenant`` sets search_path."""

    repo: model.Repo
    database: str
    schema: str
    scope: str  # "global" or "tenant"

    @property
    def name(self) -> str:
        return self.repo.name if self.scope == "global" else f"{self.repo.name}/{self.schema}"

    @property
    def tenant(self) -> bool:
        return self.scope == "tenant"


def apply(
    conn: psycopg.Connection[Any],
    target: Target,
    migration: files.MigrationFile,
    direction: str,
    *,
    log: Callable[[str], None] = lambda _: None,
    store_text: bool = True,
) -> int:
    """Run ``migration`` ``up`` or ``down`` on ``target``; return its duration in milliseconds."""
    section = migration.up if direction == "up" else migration.down
    started = time.monotonic()
    if section.transaction:
        try:
            _pipelined(conn, target, migration, direction, section, store_text, started)
        except psycopg.Error as exc:
            if retry.is_transient(exc):
                raise
            # A pipeline reports an error without saying which statement failed: nothing was kept, so run the
            # migration again one statement at a time to name it (or, if the failure does not repeat, apply it).
            with conn.transaction():
                _settings(conn, target, local=True)
                for statement in section.located():
                    _execute(conn, migration, statement)
                _finish(conn, target, migration, direction, _ms(started), store_text)
    else:
        _non_transactional(conn, target, migration, direction, section, log)
        with conn.transaction():
            _finish(conn, target, migration, direction, _ms(started), store_text)
            recorder.clear_progress(conn, target.name, _progress_key(migration, direction))
    return _ms(started)


def _pipelined(
    conn: psycopg.Connection[Any],
    target: Target,
    migration: files.MigrationFile,
    direction: str,
    section: files.Section,
    store_text: bool,
    started: float,
) -> None:
    """The whole transaction in one round trip (psycopg's pipeline mode): what makes a tenant fan-out cheap."""
    with conn.pipeline(), conn.transaction():
        _settings(conn, target, local=True)
        for statement in section.located():
            conn.execute(statement.sql.encode())
        _finish(conn, target, migration, direction, None, store_text)


def _non_transactional(
    conn: psycopg.Connection[Any],
    target: Target,
    migration: files.MigrationFile,
    direction: str,
    section: files.Section,
    log: Callable[[str], None],
) -> None:
    _settings(conn, target, local=False)
    key = _progress_key(migration, direction)
    done = recorder.progress(conn, target.name, key)
    statements = section.located()
    if done:
        log(f"{target.name}: resuming {migration.path.name} at statement {done + 1} of {len(statements)}")
    for index, statement in enumerate(statements[done:], start=done):
        _drop_invalid_index(conn, statement.sql)
        _execute(conn, migration, statement)
        recorder.set_progress(conn, target.name, key, index + 1)
    _reset(conn)


def _progress_key(migration: files.MigrationFile, direction: str) -> int:
    return migration.version if direction == "up" else -migration.version


def _finish(
    conn: psycopg.Connection[Any],
    target: Target,
    migration: files.MigrationFile,
    direction: str,
    duration_ms: int | None,
    store_text: bool,
) -> None:
    if direction == "up":
        recorder.record(
            conn,
            target.schema,
            version=migration.version,
            name=migration.name,
            checksum=migration.checksum,
            duration_ms=duration_ms,
        )
        if store_text:  # a tenant rollout stores each text once, not once per tenant
            recorder.store_text(
                conn,
                target.scope,
                version=migration.version,
                name=migration.name,
                checksum=migration.checksum,
                body=migration.text,
            )
    else:
        recorder.forget(conn, target.schema, migration.version)


def _settings(conn: psycopg.Connection[Any], target: Target, *, local: bool) -> None:
    """lock_timeout, statement_timeout and, for a tenant, search_path, in one round trip."""
    timeouts = target.repo.timeouts
    path = sql.SQL("{}, public").format(sql.Identifier(target.schema)).as_string(None) if target.tenant else None
    conn.execute(
        "SELECT set_config('lock_timeout', %(lock)s, %(local)s), "
        "set_config('statement_timeout', %(statement)s, %(local)s), "
        "CASE WHEN %(path)s::text IS NULL THEN NULL ELSE set_config('search_path', %(path)s, %(local)s) END",
        {
            "lock": f"{timeouts.lock_timeout_ms}ms",
            "statement": f"{timeouts.statement_timeout_ms}ms",
            "local": local,
            "path": path,
        },
    )


def _reset(conn: psycopg.Connection[Any]) -> None:
    conn.execute("RESET lock_timeout; RESET statement_timeout; RESET search_path")


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
            f"{migration.path}:{statement.line}: {exc.sqlstate or 'error'} {first}\n  statement: {shown}", exc.sqlstate
        ) from None


def _drop_invalid_index(conn: psycopg.Connection[Any], statement: str) -> None:
    """Before retrying CREATE INDEX CONCURRENTLY, drop the INVALID index a failed attempt left behind."""
    match = _CONCURRENT_INDEX.match(statement)
    if not match:
        return
    raw = match.group(1)
    name = raw[1:-1].replace('""', '"') if raw.startswith('"') else raw.lower()
    row = conn.execute(
        "SELECT n.nspname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = %s AND NOT i.indisvalid AND n.nspname = ANY (current_schemas(false))",
        (name,),
    ).fetchone()
    if row:
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(row[0], name)))


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
