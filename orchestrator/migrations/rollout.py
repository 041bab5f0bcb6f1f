"""Tenant rollouts: apply (or roll back) tenant migrations in every tenant schema the repo's source lists.

Where AshPostgres migrates tenants one at a time and stops at the first failure, a rollout here:

* finds which tenants are behind with a few bulk queries (``bulk``), so a no-op costs a handful of queries;
* migrates the ``canary`` tenants first, one at a time; a canary failure stops the rollout before any other
  tenant starts;
* fans the rest out over ``rollout.concurrency`` worker threads with a connection each, each tenant under its
  own advisory lock with ``search_path`` set to it, retrying transient errors per tenant; a permanent error
  fails that tenant only, and after ``maxFailures`` failures no new tenant is started;
* records every tenant's outcome in ``orchestrator.rollout_tenants``, so ``status`` shows failures until they
  are fixed and ``--retry-failed`` retries just those. An interrupted rollout needs nothing special: the next
  run finds the tenants still behind.
"""

from __future__ import annotations

import collections
import concurrent.futures as futures
import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from orchestrator import db, logs, model, state, tenants
from orchestrator.errors import BadInputError, OrchestratorError
from orchestrator.migrations import bulk, executor, files, locking, planner, recorder, retry

Out = Callable[[str], None]
T = TypeVar("T")


@dataclass
class TenantResult:
    tenant: str
    status: str  # migrated, rolled back, up to date, failed, skipped
    applied: list[str] = field(default_factory=list)
    attempts: int = 0
    error: str | None = None
    ms: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "status": self.status,
            "applied": self.applied,
            "attempts": self.attempts,
            "error": self.error,
            "ms": self.ms,
        }


@dataclass(frozen=True)
class Options:
    direction: str = "up"
    only: Sequence[str] | None = None
    exclude: Sequence[str] = ()
    retry_failed: bool = False
    step: int | None = None
    to: int | None = None
    dry_run: bool = False
    strict: bool = False


class TenantFailed(OrchestratorError):
    """This tenant cannot be migrated as it is (missing schema, edited migration)."""


def select(listed: Sequence[str], only: Sequence[str] | None, exclude: Sequence[str]) -> list[str]:
    """Apply --only-tenants / --except-tenants; a name in --only-tenants the source does not list is an error."""
    if only is not None:
        unknown = [name for name in only if name not in listed]
        if unknown:
            raise BadInputError(f"--only-tenants names tenants the tenant source does not list: {', '.join(unknown)}")
        listed = [name for name in listed if name in set(only)]
    return [name for name in listed if name not in set(exclude)]


@dataclass
class TenantRollout:
    repo: model.Repo
    info: str
    store: state.Store
    out: Out = print
    progress: bool = False
    stop: threading.Event | None = None
    """Set by the daemon on SIGTERM: no new tenant is started; running ones finish."""
    _migrations: list[files.MigrationFile] = field(default_factory=list)
    _adopted: set[str] = field(default_factory=set)  # tenants whose schema_migrations is known to be ours
    _texts: dict[int, tuple[str, str]] = field(default_factory=dict)  # stored texts, for rollbacks

    def run(self, options: Options) -> list[TenantResult]:
        """Run the rollout; return one result per selected tenant."""
        control = Control(self.info, self.repo.retry)
        try:
            return self._run(control, options)
        finally:
            control.close()

    def _run(self, control: Control, options: Options) -> list[TenantResult]:
        names, work, results = control.run(lambda conn: self._prepare(conn, options))
        if options.dry_run:
            self._show(work, options.direction)
            return list(results.values())
        if not work and not results:
            return [TenantResult(n, "up to date") for n in names]
        control.run(lambda conn: self._store_texts(conn, work, options.direction))
        rollout = control.run(lambda conn: recorder.start_rollout(conn, options.direction, len(work) + len(results)))
        for failure in results.values():  # planning failures (an edited migration): visible in status too
            self._record(control, rollout, failure)
        done = self._fan_out(control, rollout, work, options) if work else {}
        results.update(done)
        failed = sum(r.status == "failed" for r in results.values())
        control.run(lambda conn: recorder.finish_rollout(conn, rollout, failed))
        return [results.get(n) or TenantResult(n, "up to date") for n in names] + [
            r for n, r in results.items() if n not in names
        ]

    def _prepare(
        self, control: psycopg.Connection[Any], options: Options
    ) -> tuple[list[str], dict[str, list[files.MigrationFile]], dict[str, TenantResult]]:
        """List the tenants and find the work; read-only and repeatable, so a lost connection just re-runs it."""
        recorder.ensure_shared(control)
        listed = tenants.list_tenants(self.repo, control)
        names = select(listed.tenants, options.only, options.exclude)
        results = {name: TenantResult(name, "failed", error="invalid tenant name") for name in listed.invalid}
        work, names = self._plan(control, names, options, results)
        return names, work, results

    # -- planning ------------------------------------------------------------------------------------------

    def _plan(
        self, control: psycopg.Connection[Any], names: list[str], options: Options, results: dict[str, TenantResult]
    ) -> tuple[dict[str, list[files.MigrationFile]], list[str]]:
        """Return the work per tenant that is behind, and the tenants considered (--retry-failed narrows them)."""
        directory = self.repo.tenant_migrations_path.rstrip("/")
        stored = self.store.read(directory)
        self._migrations = files.collection({p: t for p, t in stored.items() if p.rpartition("/")[0] == directory})
        texts = self._texts = recorder.stored_texts(control, "tenant") if options.direction == "down" else {}
        states = bulk.states(control, names)
        self._adopted = {name for name, found in states.items() if found.adopted}
        if options.retry_failed:
            failed = {t for t, (status, _) in recorder.last_outcomes(control).items() if status == "failed"}
            names = [n for n in names if n in failed]
        work: dict[str, list[files.MigrationFile]] = {}
        for name in names:
            tenant_state = states[name]
            try:
                if options.direction == "up":
                    todo = planner.pending(
                        self._migrations, tenant_state.applied, to=options.to, step=options.step, strict=options.strict
                    )
                else:
                    todo = planner.rollback(
                        self._migrations, tenant_state.applied, texts, step=options.step, to=options.to
                    )
            except planner.PlanError as exc:
                results[name] = TenantResult(name, "failed", error=str(exc))
                continue
            if todo or (not tenant_state.exists and options.direction == "up"):
                work[name] = todo
        return work, names

    def _store_texts(
        self, control: psycopg.Connection[Any], work: dict[str, list[files.MigrationFile]], direction: str
    ) -> None:
        if direction != "up":
            return
        unique = {m.version: m for todo in work.values() for m in todo}
        with control.transaction():
            for m in unique.values():
                recorder.store_text(control, "tenant", version=m.version, name=m.name, checksum=m.checksum, body=m.text)

    # -- running -------------------------------------------------------------------------------------------

    def _fan_out(
        self,
        control: Control,
        rollout: int,
        work: dict[str, list[files.MigrationFile]],
        options: Options,
    ) -> dict[str, TenantResult]:
        canaries = [t for t in self.repo.rollout.canary if t in work]
        rest = [t for t in work if t not in canaries]
        concurrency = max(1, min(self.repo.rollout.concurrency, len(rest) or 1))
        limit = self.repo.rollout.max_failures
        results: dict[str, TenantResult] = {}
        bar = _Progress(len(work), self.progress, self.repo.name)
        connections = Connections(self.info)
        try:
            with futures.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="tenant") as executor_:
                for tenant in canaries:  # one at a time; any failure stops the rollout
                    result = executor_.submit(self._tenant, connections, tenant, options).result()
                    self._done(control, rollout, result, results, bar)
                    if result.status == "failed":
                        self.out(f"{self.repo.name}: canary {tenant} failed; no other tenant was started")
                        rest = []
                        break
                queue = collections.deque(rest)
                running: dict[futures.Future[TenantResult], str] = {}
                while queue or running:
                    failed = sum(r.status == "failed" for r in results.values())
                    stopping = self.stop is not None and self.stop.is_set()
                    while queue and not stopping and len(running) < concurrency and (limit is None or failed < limit):
                        tenant = queue.popleft()
                        running[executor_.submit(self._tenant, connections, tenant, options)] = tenant
                    if not running:
                        break
                    finished, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
                    for future in finished:
                        running.pop(future)
                        self._done(control, rollout, future.result(), results, bar)
            for tenant in rest:
                results.setdefault(tenant, TenantResult(tenant, "skipped", error="not started: the rollout stopped"))
            if limit is not None and queue:
                self.out(
                    f"{self.repo.name}: stopped after {limit} failed tenants (rollout.maxFailures); "
                    f"{len(queue)} not started"
                )
        finally:
            connections.close()
            bar.close()
        for tenant in work:
            results.setdefault(tenant, TenantResult(tenant, "skipped", error="not started: a canary failed"))
        return results

    def _done(
        self,
        control: Control,
        rollout: int,
        result: TenantResult,
        results: dict[str, TenantResult],
        bar: _Progress,
    ) -> None:
        results[result.tenant] = result
        self._record(control, rollout, result)
        bar.update(result)

    def _record(self, control: Control, rollout: int, result: TenantResult) -> None:
        """Write the tenant's outcome (an upsert: re-running it after a lost connection changes nothing)."""
        control.run(
            lambda conn: recorder.record_tenant(
                conn,
                rollout,
                result.tenant,
                status=result.status,
                attempts=result.attempts,
                applied=result.applied,
                error=result.error,
            )
        )

    def _tenant(self, connections: Connections, tenant: str, options: Options) -> TenantResult:
        """Migrate one tenant, retrying transient errors; never raises."""
        started = time.monotonic()
        attempts = 0
        done: list[str] = []  # what this rollout applied to the tenant, over all attempts
        in_flight: list[files.MigrationFile] = []  # what an attempt was applying when it failed

        def attempt() -> None:
            nonlocal attempts
            attempts += 1
            with connections.connection() as conn:
                self._migrate_tenant(conn, tenant, options, done, in_flight)

        try:
            retry.run(self.repo.retry, attempt)
        except (OrchestratorError, psycopg.Error) as exc:
            message = db.redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            state_ = getattr(exc, "sqlstate", None)
            error = f"{state_} {message}" if state_ and state_ not in message else message
            return TenantResult(tenant, "failed", done, attempts, error, _ms(started))
        status = "up to date" if not done else ("migrated" if options.direction == "up" else "rolled back")
        return TenantResult(tenant, status, done, attempts, None, _ms(started))

    def _migrate_tenant(
        self,
        conn: psycopg.Connection[Any],
        tenant: str,
        options: Options,
        done: list[str],
        in_flight: list[files.MigrationFile],
    ) -> None:
        target = executor.Target(self.repo, db.database_name(self.info), tenant, "tenant")
        key = locking.key(target.database, tenant)
        with locking.advisory_lock(conn, key, self.repo.timeouts.lock_wait_ms, target.name):
            source = self.repo.tenants
            if source is not None and source.create_schemas:
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(tenant)))
            elif not conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (tenant,)).fetchone():
                raise TenantFailed(f"schema {tenant} does not exist (set tenants.createSchemas to create it)")
            if tenant not in self._adopted:
                recorder.ensure_target(conn, tenant, lock_timeout_ms=self.repo.timeouts.lock_timeout_ms)
            applied = recorder.applied(conn, tenant, adopted=True)  # under the lock: authoritative
            for migration in in_flight:  # the connection was lost after its COMMIT reached the server
                if (migration.version in applied) == (options.direction == "up"):
                    done.append(migration.path.name)
            in_flight.clear()
            if options.direction == "up":
                todo = planner.pending(
                    self._migrations, applied, to=options.to, step=options.step, strict=options.strict
                )
            else:
                todo = planner.rollback(self._migrations, applied, self._texts, step=options.step, to=options.to)
            for migration in todo:
                in_flight.append(migration)
                executor.apply(conn, target, migration, options.direction, store_text=False)
                in_flight.clear()
                done.append(migration.path.name)

    def _show(self, work: dict[str, list[files.MigrationFile]], direction: str) -> None:
        for tenant, todo in work.items():
            for migration in todo:
                section = migration.up if direction == "up" else migration.down
                self.out(f"-- {self.repo.name}/{tenant}: {migration.path.name} ({direction})")
                self.out(f"SET search_path TO {sql.Identifier(tenant).as_string(None)}, public;")
                for statement in section.statements:
                    self.out(f"{statement};")


class Control:
    """The rollout's own connection (tenant list, plan, outcome records), re-opened when it is lost.

    Every call made through ``run`` is repeatable (reads, upserts), so a transient error closes the connection
    and the call is retried on a new one with the repo's retry policy; tenants' work is not affected.
    """

    def __init__(self, info: str, policy: model.Retry) -> None:
        self.info, self.policy = info, policy
        self._conn: psycopg.Connection[Any] | None = None

    def run(self, call: Callable[[psycopg.Connection[Any]], T]) -> T:
        def attempt() -> T:
            try:
                return call(self._connection())
            except psycopg.Error as exc:
                if retry.is_transient(exc):
                    self.close()
                raise

        return retry.run(self.policy, attempt)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = db.open_connection(self.info)
            self._conn.execute("SET synchronous_commit TO off")  # outcome records: cheap commits
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Connections:
    """One connection per worker thread, opened on first use and opened again after it is lost.

    psycopg_pool was used here first; under injected connection faults its background reconnection, with a
    backoff of its own that doubles from one second, left workers waiting for a connection for tens of
    seconds. Here a lost connection is simply dropped, and the tenant's retry policy alone decides when the
    next attempt (on a new connection) happens.
    """

    def __init__(self, info: str) -> None:
        self.info = info
        self._local = threading.local()
        self._opened: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = db.open_connection(self.info)
            with self._lock:  # the lost ones are closed already; keep only what close() still has to close
                self._opened = [c for c in self._opened if not c.closed] + [conn]
            db.watch_client(conn)
            self._local.conn = conn
        try:
            yield conn
        except BaseException:
            if conn.broken or conn.info.transaction_status != TransactionStatus.IDLE:
                conn.close()  # lost, or left in a state nobody should inherit: the next attempt opens a new one
            raise

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()


class _Progress:
    """A progress bar on a terminal (done, failed, rate, ETA); a structured log line per tenant otherwise."""

    def __init__(self, total: int, on_terminal: bool, repo: str) -> None:
        self.repo = repo
        self.failed = 0
        self.bar: Any = None
        if on_terminal:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="tenant", desc=f"{repo} tenants", file=sys.stderr, leave=True)
        else:
            logs.configure()
            self.log = logs.get("rollout")

    def update(self, result: TenantResult) -> None:
        self.failed += result.status == "failed"
        if self.bar is not None:
            self.bar.set_postfix(failed=self.failed, refresh=False)
            self.bar.update(1)
        else:
            self.log.info(
                "tenant." + result.status.replace(" ", "_"),
                repo=self.repo,
                tenant=result.tenant,
                applied=result.applied,
                attempts=result.attempts,
                error=result.error,
                ms=result.ms,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
