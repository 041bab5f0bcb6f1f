"""The one run loop of a target: a repo's database or one tenant schema, whoever asks.

``migrate``, ``rollback`` and ``repair``, global or per tenant, CLI or daemon, dry run or not, all come here:

1. take the target's advisory lock (not for a dry run, which writes nothing);
2. ensure the bookkeeping (``schema_migrations``, the tenant schema);
3. plan under the lock, from what the target has applied (authoritative there);
4. apply, roll back or repair each planned migration, recording it in the same transaction; a dry run emits
   the SQL instead;
5. on a transient error (connection lost or abandoned as silent, lock timeout, deadlock, ...) the whole
   attempt is retried on a new connection with the repo's backoff; what was committed stays, the plan is
   made again, and a ``transaction:false`` migration resumes at its recorded statement. A COMMIT whose answer
   was lost is noticed on the retry (the migration is recorded) and counted as done by this run.

Permanent errors end the run with ``TargetFailed`` (SQLSTATE, file and line when a statement failed), and
the number of attempts it really took. Everything that happens is an event for the caller's sink.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from orchestrator import db
from orchestrator.errors import OrchestratorError
from orchestrator.migrations import events, executor, files, locking, planner, recorder, retry
from orchestrator.migrations.sessions import Conn, Dedicated
from orchestrator.migrations.target import Direction, Scope, Target


class Action(enum.Enum):
    MIGRATE = "migrate"
    ROLLBACK = "rollback"
    REPAIR = "repair"


@dataclass(frozen=True)
class Request:
    """What to do at a target; ``to``/``step``/``strict`` as the CLI flags of the same names."""

    action: Action = Action.MIGRATE
    to: int | None = None
    step: int | None = None
    strict: bool = False
    dry_run: bool = False

    @property
    def direction(self) -> Direction:
        return Direction.DOWN if self.action is Action.ROLLBACK else Direction.UP

    @property
    def writes(self) -> bool:
        return not self.dry_run


@dataclass(frozen=True)
class Source:
    """What a plan is made from: the target's migration files, and the stored texts a rollback may need."""

    migrations: Sequence[files.MigrationFile]
    stored: Mapping[int, tuple[str, str]] = field(default_factory=dict)
    store_texts: bool = True
    """Store each applied migration's text with it (a tenant rollout stores them once, beforehand)."""


@dataclass
class Outcome:
    target: Target
    done: list[files.MigrationFile]
    attempts: int
    ms: int


class TenantFailed(OrchestratorError):
    """This tenant cannot be migrated as it is (missing schema)."""


class TargetFailed(OrchestratorError):
    """The run of one target failed; ``done`` is what it completed before (committed, kept)."""

    def __init__(
        self,
        message: str,
        *,
        error: str,
        attempts: int,
        sqlstate: str | None = None,
        file: str | None = None,
        line: int | None = None,
        done: Sequence[files.MigrationFile] = (),
    ) -> None:
        super().__init__(message)
        self.error, self.attempts, self.sqlstate = error, attempts, sqlstate
        self.file, self.line, self.done = file, line, list(done)


@dataclass
class _Attempts:
    """What survives from one attempt to the next."""

    count: int = 0
    done: list[files.MigrationFile] = field(default_factory=list)
    in_flight: list[files.MigrationFile] = field(default_factory=list)


def run(
    target: Target,
    request: Request,
    source: Source,
    workers: Dedicated,
    sink: events.Sink,
    *,
    adopted: bool = False,
    create_schema: bool = False,
) -> Outcome:
    """Run ``request`` at ``target`` on ``workers``' connection for this thread; raise ``TargetFailed``.

    ``adopted``: the target's ``schema_migrations`` is known to be ours already (skips a query per tenant);
    ``create_schema``: a tenant schema that does not exist is created (else the tenant fails).
    """
    started = time.monotonic()
    state = _Attempts()
    policy = target.repo.retry

    def attempt() -> None:
        state.count += 1
        with workers.connection() as (conn, watched):
            watched.on_abandon = lambda pid, reason: sink(events.Abandoned(target, pid, reason))
            _attempt(conn, target, request, source, sink, state, adopted=adopted, create_schema=create_schema)

    def on_retry(number: int, exc: BaseException) -> None:
        sink(events.Retrying(target, number, describe(exc), getattr(exc, "sqlstate", None)))

    try:
        retry.run(policy, attempt, on_retry=on_retry)
    except (OrchestratorError, psycopg.Error) as exc:
        failure = _failure(target, exc, state, policy.attempts)
        sink(events.Failed(target, failure.error, failure.sqlstate, failure.file, failure.line, failure.attempts))
        raise failure from None
    ms = int((time.monotonic() - started) * 1000)
    if not state.done and request.action is not Action.REPAIR and not request.dry_run:
        sink(events.NothingToDo(target, request.direction))
    return Outcome(target, state.done, state.count, ms)


def _attempt(
    conn: Conn,
    target: Target,
    request: Request,
    source: Source,
    sink: events.Sink,
    state: _Attempts,
    *,
    adopted: bool,
    create_schema: bool,
) -> None:
    if not request.writes:
        todo = plan(request, source, recorder.applied(conn, target.schema))
        for migration in todo:
            sink(events.Planned(target, migration, request.direction))
        state.done = todo
        return
    key = locking.key(target.database, target.schema)
    waited = lambda ms: sink(events.LockWaited(target, ms))  # noqa: E731
    with locking.advisory_lock(conn, key, target.repo.timeouts.lock_wait_ms, target.name, on_wait=waited):
        _ensure(conn, target, adopted=adopted, create_schema=create_schema)
        applied = _applied(conn, target)  # under the lock: authoritative
        for migration in state.in_flight:  # the connection was lost after its COMMIT reached the server
            if (migration.version in applied) == (request.direction is Direction.UP):
                state.done.append(migration)
        state.in_flight.clear()
        if request.action is Action.REPAIR:
            state.done.extend(_repair(conn, target, source, applied, sink))
            return
        for migration in plan(_remaining(request, len(state.done)), source, applied):
            state.in_flight.append(migration)
            ms = executor.apply(conn, target, migration, request.direction, store_text=source.store_texts, sink=sink)
            state.in_flight.clear()
            state.done.append(migration)
            sink(events.MigrationDone(target, migration, request.direction, ms))


def plan(request: Request, source: Source, applied: Mapping[int, recorder.Applied]) -> list[files.MigrationFile]:
    """What ``request`` runs at a target that has ``applied`` these (nothing for a repair: it plans itself)."""
    if request.action is Action.ROLLBACK:
        return planner.rollback(source.migrations, applied, source.stored, step=request.step, to=request.to)
    if request.action is Action.REPAIR:
        return []
    return planner.pending(source.migrations, applied, to=request.to, step=request.step, strict=request.strict)


def _remaining(request: Request, done: int) -> Request:
    """The request for a retry after ``done`` migrations were completed by earlier attempts: ``--step N`` (and
    a rollback's default single step) counts those, or a retry would run more than asked."""
    if not done:
        return request
    default = 1 if request.action is Action.ROLLBACK and request.to is None else None
    step = request.step if request.step is not None else default
    if step is None:
        return request
    return dataclasses.replace(request, step=max(step - done, 0))


def _ensure(conn: Conn, target: Target, *, adopted: bool, create_schema: bool) -> None:
    """The bookkeeping of the target, created or adopted (nothing when known to be there)."""
    lock_timeout = target.repo.timeouts.lock_timeout_ms
    if target.scope is Scope.GLOBAL:
        recorder.ensure(conn, target.schema, lock_timeout_ms=lock_timeout)
        return
    if create_schema:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(target.schema)))
    elif not adopted and not _schema_exists(conn, target.schema):  # adopted: _applied finds out, no extra query
        raise _no_schema(target)
    if not adopted:
        recorder.ensure_target(conn, target.schema, lock_timeout_ms=lock_timeout)


def _applied(conn: Conn, target: Target) -> dict[int, recorder.Applied]:
    """What the target has applied; a tenant whose schema was dropped fails with that said (the read fails in
    autocommit, so the connection can still ask why)."""
    try:
        return recorder.applied(conn, target.schema, adopted=True)
    except psycopg.errors.UndefinedTable:
        if target.scope is Scope.TENANT and not _schema_exists(conn, target.schema):
            raise _no_schema(target) from None
        raise


def _schema_exists(conn: Conn, schema: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is not None


def _no_schema(target: Target) -> TenantFailed:
    return TenantFailed(f"schema {target.schema} does not exist (set tenants.createSchemas to create it)")


def _repair(
    conn: Conn,
    target: Target,
    source: Source,
    applied: Mapping[int, recorder.Applied],
    sink: events.Sink,
) -> list[files.MigrationFile]:
    """Record the new checksum (and text) of migrations edited on purpose; forget stale partial progress."""
    fixed = []
    scope = target.scope.value
    for item in planner.edited(source.migrations, applied):
        m = item.migration
        with conn.transaction():
            recorder.set_checksum(conn, target.schema, m.version, m.checksum)
            recorder.store_text(conn, scope, version=m.version, name=m.name, checksum=m.checksum, body=m.text)
        sink(events.Repaired(target, m, "checksum"))
        fixed.append(m)
    for m in source.migrations:
        if recorder.forget_stale_progress(conn, target.name, m.version, m.checksum):
            sink(events.Repaired(target, m, "progress"))
            fixed.append(m)
    return fixed


def _failure(target: Target, exc: BaseException, state: _Attempts, limit: int) -> TargetFailed:
    """The failure as the user sees it: "gave up after N attempts" only when N attempts were really made."""
    error = describe(exc)
    sqlstate = getattr(exc, "sqlstate", None)
    path = getattr(exc, "path", None)
    if retry.is_transient(exc) and state.count >= limit:
        message = f"{target.name}: gave up after {state.count} attempts: {error}"
    elif isinstance(exc, OrchestratorError):
        message = db.redact(str(exc))  # already names the target or the file and line
    else:
        message = f"{target.name}: {error}"
    return TargetFailed(
        message,
        error=error,
        attempts=state.count,
        sqlstate=sqlstate,
        file=str(path) if path is not None else None,
        line=getattr(exc, "line", None),
        done=state.done,
    )


def describe(exc: BaseException) -> str:
    """One redacted line: the SQLSTATE (when there is one and the text lacks it) and the first line of text."""
    text = str(exc).strip()
    first = db.redact(text.splitlines()[0] if text else type(exc).__name__)
    sqlstate = getattr(exc, "sqlstate", None)
    return f"{sqlstate} {first}" if sqlstate and sqlstate not in first else first
