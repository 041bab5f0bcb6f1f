"""Tenant rollouts: apply (or roll back, or repair) tenant migrations in every tenant schema the repo lists.

Where AshPostgres migrates tenants one at a time and stops at the first failure, a rollout here:

* finds which tenants are behind with a few bulk queries (``bulk``), so a no-op costs a handful of queries;
* migrates the ``canary`` tenants first, one at a time; a canary failure stops the rollout before any other
  tenant starts;
* fans the rest out over ``rollout.concurrency`` worker threads with a connection each; every tenant goes
  through the same run loop as a global target (``loop.run``: its own advisory lock, ``search_path`` set to it,
  transient errors retried, a silent connection abandoned and retried); a permanent error fails that tenant
  only, and after ``maxFailures`` failures no new tenant is started;
* records every tenant's outcome in ``orchestrator.rollout_tenants``, so ``status`` shows failures until they
  are fixed and ``--retry-failed`` retries just those. An interrupted rollout needs nothing special: the next
  run finds the tenants still behind.
"""

from __future__ import annotations

import collections
import concurrent.futures as futures
import dataclasses
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator import model, state, tenants
from orchestrator.errors import BadInputError
from orchestrator.migrations import bulk, events, files, loop, planner, recorder
from orchestrator.migrations.loop import Action
from orchestrator.migrations.sessions import Conn, Dedicated, Endpoint
from orchestrator.migrations.target import Scope, Target

Work = dict[str, list[files.MigrationFile]]
_DONE = {Action.MIGRATE: "migrated", Action.ROLLBACK: "rolled back", Action.REPAIR: "repaired"}
RECORD_EVERY_S, RECORD_BATCH = 1.0, 200
"""Outcomes are written at least this often, and at the latest after this many tenants (failures at once)."""


@dataclass
class TenantResult:
    tenant: str
    status: str  # migrated, rolled back, repaired, up to date, failed, skipped, held (see ``Hold``)
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
    action: Action = Action.MIGRATE
    only: Sequence[str] | None = None
    exclude: Sequence[str] = ()
    retry_failed: bool = False
    step: int | None = None
    to: int | None = None
    dry_run: bool = False
    strict: bool = False

    @property
    def request(self) -> loop.Request:
        return loop.Request(self.action, to=self.to, step=self.step, strict=self.strict, dry_run=self.dry_run)

    @property
    def recorded(self) -> bool:
        """Whether outcomes go to ``orchestrator.rollout_tenants`` (not for dry runs and repairs)."""
        return not self.dry_run and self.action is not Action.REPAIR


def select(listed: Sequence[str], only: Sequence[str] | None, exclude: Sequence[str]) -> list[str]:
    """Apply --only-tenants / --except-tenants; a name in --only-tenants the source does not list is an error."""
    if only is not None:
        unknown = [name for name in only if name not in listed]
        if unknown:
            raise BadInputError(f"--only-tenants names tenants the tenant source does not list: {', '.join(unknown)}")
        listed = [name for name in listed if name in set(only)]
    return [name for name in listed if name not in set(exclude)]


@dataclass(frozen=True)
class Hold:
    """Canaries that are behind but not part of this run (failed earlier and waiting to be retried, excluded,
    not selected): every other tenant is migrated only up to ``cap``, below the first migration a lagging
    canary has not applied, so no tenant receives a migration before the canaries have. A tenant left short of
    the newest migration for it ends ``held``."""

    cap: int
    canaries: tuple[str, ...]

    @property
    def reason(self) -> str:
        return f"held back: canary {', '.join(self.canaries)} has not applied {self.cap + 1} or later yet"


@dataclass
class _Plan:
    names: list[str]  # the tenants considered, in the source's order
    work: Work  # tenants that have something to do
    results: dict[str, TenantResult]  # tenants decided without running (invalid name, plan error)


@dataclass
class TenantRollout:
    endpoint: Endpoint
    store: state.Store
    sink: events.Sink = events.discard
    progress: bool = False
    stop: threading.Event | None = None
    """Set by the daemon on SIGTERM: no new tenant is started; running ones finish."""
    _migrations: list[files.MigrationFile] = field(default_factory=list)
    _adopted: set[str] = field(default_factory=set)  # tenants whose schema_migrations is known to be ours
    _texts: dict[int, tuple[str, str]] = field(default_factory=dict)  # stored texts, for rollbacks
    _hold: Hold | None = None
    _held: set[str] = field(default_factory=set)  # tenants this run takes only as far as the hold allows
    _unrecorded: list[TenantResult] = field(default_factory=list)  # outcomes not yet in rollout_tenants
    _recorded_at: float = 0.0

    @property
    def repo(self) -> model.Repo:
        return self.endpoint.repo

    def run(self, options: Options) -> list[TenantResult]:
        """Run the rollout; return one result per selected tenant."""
        control = self.endpoint.control
        plan = control.run(lambda conn: self._prepare(conn, options))
        results = dict(plan.results)
        if not plan.work and not results:
            return [TenantResult(n, "up to date") for n in plan.names]
        rollout = None
        if options.recorded:
            control.run(lambda conn: self._store_texts(conn, plan.work, options))
            total = len(plan.work) + len(results)
            rollout = control.run(lambda conn: recorder.start_rollout(conn, options.request.direction.value, total))
            for failure in results.values():  # planning failures (an edited migration): visible in status too
                if failure.status == "failed":  # a held tenant keeps its last outcome (a failure stays one)
                    self._unrecorded.append(failure)
            self._flush(rollout)
        results.update(self._fan_out(rollout, plan.work, options) if plan.work else {})
        if rollout is not None:
            self._flush(rollout)
            failed = sum(r.status == "failed" for r in results.values())
            control.run(lambda conn: recorder.finish_rollout(conn, rollout, failed))
        return [results.get(n) or TenantResult(n, "up to date") for n in plan.names] + [
            r for n, r in results.items() if n not in plan.names
        ]

    def _prepare(self, control: Conn, options: Options) -> _Plan:
        """List the tenants and find the work; read-only and repeatable, so a lost connection just re-runs it."""
        recorder.ensure_shared(control)
        listed = tenants.list_tenants(self.repo, control)
        names = select(listed.tenants, options.only, options.exclude)
        results = {name: TenantResult(name, "failed", error="invalid tenant name") for name in listed.invalid}
        work, names = self._plan(control, names, listed.tenants, options, results)
        return _Plan(names, work, results)

    # -- planning ------------------------------------------------------------------------------------------

    def _plan(
        self,
        control: Conn,
        names: list[str],
        listed: Sequence[str],
        options: Options,
        results: dict[str, TenantResult],
    ) -> tuple[Work, list[str]]:
        """Return the work per tenant that has any, and the tenants considered (--retry-failed narrows them).

        The plan here only picks the tenants to visit; each tenant's run plans again under its lock.
        """
        directory = self.repo.tenant_migrations_path.rstrip("/")
        stored = self.store.read(directory)
        self._migrations = files.collection({p: t for p, t in stored.items() if p.rpartition("/")[0] == directory})
        rolling_back = options.action is Action.ROLLBACK
        self._texts = recorder.stored_texts(control, "tenant") if rolling_back else {}
        if options.retry_failed:
            failed = {t for t, (status, _) in recorder.last_outcomes(control).items() if status == "failed"}
            names = [n for n in names if n in failed]
        outside = [c for c in self.repo.rollout.canary if c in listed and c not in names]
        states = bulk.states(control, [*names, *outside], helper=self.endpoint.control.extra)
        self._adopted = {name for name, found in states.items() if found.adopted}
        stale = _stale_progress(control, self.repo.name, self._migrations) if options.action is Action.REPAIR else set()
        inside = [c for c in self.repo.rollout.canary if c in names]
        self._hold = self._canary_hold(outside, inside, states) if options.action is Action.MIGRATE else None
        self._held = set()
        work: Work = {}
        for name in names:
            found = states[name]
            try:
                todo = loop.plan(options.request, loop.Source(self._migrations, self._texts), found.applied)
            except planner.PlanError as exc:
                results[name] = TenantResult(name, "failed", error=str(exc))
                continue
            todo = self._within_hold(name, todo, results)
            needs_schema = not found.exists and options.action is Action.MIGRATE
            repairs = options.action is Action.REPAIR and (
                name in stale or bool(planner.edited(self._migrations, found.applied))
            )
            if todo or needs_schema or repairs:
                work[name] = todo
        return work, names

    def _canary_hold(self, outside: list[str], inside: list[str], states: dict[str, bulk.TenantState]) -> Hold | None:
        """The hold put by canaries that are behind and not in this run, if any. A canary that cannot even be
        planned (an edited migration, another tool's bookkeeping table) holds everything, in the run or not:
        nothing it would run is known to work. (A canary in the run with work runs first, and its failure stops
        the rest: ``_fan_out``.)"""
        firsts: dict[str, int] = {}
        source = loop.Source(self._migrations, self._texts)
        for canary in [*outside, *inside]:
            try:
                todo = loop.plan(loop.Request(), source, states[canary].applied)
            except planner.PlanError:
                firsts[canary] = 0
                continue
            if todo and canary in outside:
                firsts[canary] = todo[0].version
        if not firsts:
            return None
        return Hold(min(firsts.values()) - 1, tuple(sorted(firsts)))

    def _within_hold(
        self, name: str, todo: list[files.MigrationFile], results: dict[str, TenantResult]
    ) -> list[files.MigrationFile]:
        """``todo`` cut at the hold (a canary's own plan is not); a tenant left with nothing is ``held``."""
        hold = self._hold
        if hold is None or name in self.repo.rollout.canary or not todo:
            return todo
        allowed = [m for m in todo if m.version <= hold.cap]
        if len(allowed) < len(todo):
            self._held.add(name)
            if not allowed:
                results[name] = TenantResult(name, "held", error=hold.reason)
        return allowed

    def _store_texts(self, control: Conn, work: Work, options: Options) -> None:
        if options.action is not Action.MIGRATE:
            return
        unique = {m.version: m for todo in work.values() for m in todo}
        with control.transaction():
            for m in unique.values():
                recorder.store_text(control, "tenant", version=m.version, name=m.name, checksum=m.checksum, body=m.text)

    # -- running -------------------------------------------------------------------------------------------

    def _fan_out(self, rollout: int | None, work: Work, options: Options) -> dict[str, TenantResult]:
        canaries = [t for t in self.repo.rollout.canary if t in work]
        rest = [t for t in work if t not in canaries]
        sequential = options.dry_run  # a dry run prints each tenant's SQL in order
        concurrency = 1 if sequential else max(1, min(self.repo.rollout.concurrency, len(rest) or 1))
        limit = self.repo.rollout.max_failures
        results: dict[str, TenantResult] = {}
        bar = _Progress(len(work), self.progress and not options.dry_run, self.repo.name)
        workers = self.endpoint.workers()
        try:
            with futures.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="tenant") as pool:
                for tenant in canaries:  # one at a time; any failure stops the rollout
                    result = pool.submit(self._tenant, workers, tenant, options).result()
                    self._done(rollout, result, results, bar)
                    if result.status == "failed":
                        self._note(f"canary {tenant} failed; no other tenant was started")
                        rest = []
                        break
                queue = collections.deque(rest)
                running: dict[futures.Future[TenantResult], str] = {}
                failed = 0
                while queue or running:
                    stopping = self.stop is not None and self.stop.is_set()
                    while queue and not stopping and len(running) < concurrency and (limit is None or failed < limit):
                        tenant = queue.popleft()
                        running[pool.submit(self._tenant, workers, tenant, options)] = tenant
                    if not running:
                        break
                    finished, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
                    for future in finished:
                        running.pop(future)
                        result = future.result()
                        failed += result.status == "failed"
                        self._done(rollout, result, results, bar)
            for tenant in rest:
                results.setdefault(tenant, TenantResult(tenant, "skipped", error="not started: the rollout stopped"))
            if limit is not None and queue:
                self._note(f"stopped after {limit} failed tenants (rollout.maxFailures); {len(queue)} not started")
        finally:
            workers.close()
            bar.close()
        for tenant in work:
            results.setdefault(tenant, TenantResult(tenant, "skipped", error="not started: a canary failed"))
        return results

    def _note(self, message: str) -> None:
        target = Target(self.repo, self.endpoint.database, "public", Scope.GLOBAL)
        self.sink(events.RolloutNote(target, message))

    def _done(
        self, rollout: int | None, result: TenantResult, results: dict[str, TenantResult], bar: _Progress
    ) -> None:
        results[result.tenant] = result
        if rollout is not None:
            self._unrecorded.append(result)
            due = time.monotonic() - self._recorded_at >= RECORD_EVERY_S or len(self._unrecorded) >= RECORD_BATCH
            if result.status == "failed" or due:  # a failure is written at once
                self._flush(rollout)
        bar.update(result)
        target = Target(self.repo, self.endpoint.database, result.tenant, Scope.TENANT)
        self.sink(events.TenantFinished(target, result))

    def _flush(self, rollout: int | None) -> None:
        """Write the outcomes gathered so far, in one round trip: written one by one, the fan-out's thread
        waited for each before it gave the finished worker its next tenant."""
        batch, self._unrecorded = self._unrecorded, []
        self._recorded_at = time.monotonic()
        if rollout is None or not batch:
            return
        outcomes = [recorder.Outcome(r.tenant, r.status, r.attempts, r.applied, r.error) for r in batch]
        self.endpoint.control.run(lambda conn: recorder.record_tenants(conn, rollout, outcomes))

    def _tenant(self, workers: Dedicated, tenant: str, options: Options) -> TenantResult:
        """Run one tenant through the run loop; never raises."""
        started = time.monotonic()
        target = Target(self.repo, self.endpoint.database, tenant, Scope.TENANT)
        source = loop.Source(self._migrations, self._texts, store_texts=False)
        source_cfg = self.repo.tenants
        request, hold = options.request, self._hold
        if hold is not None and tenant not in self.repo.rollout.canary:
            request = dataclasses.replace(request, to=min(hold.cap, request.to if request.to is not None else hold.cap))
        try:
            outcome = loop.run(
                target,
                request,
                source,
                workers,
                self.sink,
                adopted=tenant in self._adopted,
                create_schema=source_cfg is not None and source_cfg.create_schemas,
            )
        except loop.TargetFailed as exc:
            return TenantResult(tenant, "failed", _names(exc.done), exc.attempts, exc.error, _ms(started))
        if tenant in self._held and hold is not None:  # as far as the canaries allow, and no further
            return TenantResult(tenant, "held", _names(outcome.done), outcome.attempts, hold.reason, _ms(started))
        if options.dry_run:
            status = "up to date" if not outcome.done else "planned"
        else:
            status = "up to date" if not outcome.done else _DONE[options.action]
        return TenantResult(tenant, status, _names(outcome.done), outcome.attempts, None, _ms(started))


def _stale_progress(control: Conn, repo: str, migrations: Sequence[files.MigrationFile]) -> set[str]:
    """Tenants with partial progress recorded for an older text of a migration (what ``repair`` forgets)."""
    checksums = {m.version: m.checksum for m in migrations}
    if not control.execute("SELECT to_regclass('orchestrator.progress') IS NOT NULL").fetchone()[0]:  # type: ignore[index]
        return set()
    rows = control.execute(
        "SELECT target, abs(version), checksum FROM orchestrator.progress WHERE starts_with(target, %s)",
        (f"{repo}/",),
    ).fetchall()
    return {
        str(target).partition("/")[2]
        for target, version, checksum in rows
        if int(version) in checksums and checksum != checksums[int(version)]
    }


def _names(done: Sequence[files.MigrationFile]) -> list[str]:
    return [m.path.name for m in done]


class _Progress:
    """A progress bar on a terminal (done, failed, rate, ETA); nothing otherwise (the sink logs each tenant)."""

    def __init__(self, total: int, on_terminal: bool, repo: str) -> None:
        self.failed = 0
        self.bar: Any = None
        if on_terminal:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="tenant", desc=f"{repo} tenants", file=sys.stderr, leave=True)

    def update(self, result: TenantResult) -> None:
        self.failed += result.status == "failed"
        if self.bar is not None:
            self.bar.set_postfix(failed=self.failed, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
