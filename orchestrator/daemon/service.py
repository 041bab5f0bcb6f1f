"""The daemon's state and jobs: reconcile on change, tenant discovery every interval, ops-triggered rollouts.

Jobs are plain methods; the scheduler (APScheduler) only calls them, one of a kind at a time, and one at a time
overall (a lock), so a reconcile, a tenant pass and a rollout never race each other. An invalid manifest never
stops the service: it keeps the last good configuration (its revision stays the live one), reports the located
errors and applies nothing from the bad one; any later change, a revert to the good content included, is
reconciled again.

What operators rely on lives here: tenant outcomes merged across passes (``book``), the three probes — the
startup gate (every repo's global migrations applied since start), readiness (serving with a loaded config;
what fails after start shows in status and metrics, never here) and liveness (no job stuck past a deadline) —
and the records of ops-triggered rollouts.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from orchestrator import db, model
from orchestrator.daemon import book, drifts, metrics, reconcile
from orchestrator.daemon import rollouts as ops
from orchestrator.errors import ConfigError, OrchestratorError, Problem

if TYPE_CHECKING:
    from orchestrator.migrations.events import Event, Sink
    from orchestrator.migrations.runner import Runner
    from orchestrator.migrations.sessions import Endpoints

RECENT_EVENTS = 50
"""Warnings and errors of the runs (retries, abandoned connections, failures) kept for /status."""

STUCK_AFTER_S = 30 * 60.0
"""A job that has shown no progress (no event: no migration done, no tenant finished) for this long is stuck:
/healthz fails, so the kubelet restarts the sidecar (every step is safe to interrupt)."""


@dataclass
class EventLog:
    """The daemon's sink: every event logged through structlog; warnings and errors also kept for /status."""

    log: Any = None
    last: float = field(default_factory=time.monotonic)  # monotonic time of the last event: a job's progress
    recent: collections.deque[dict[str, Any]] = field(default_factory=lambda: collections.deque(maxlen=RECENT_EVENTS))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, event: Event) -> None:
        from orchestrator.migrations import events as ev

        self.last = time.monotonic()
        if self.log is not None:
            ev.LogSink(self.log)(event)
        if ev.level_of(event) >= ev.WARNING:
            entry = {"at": time.time(), "event": ev.name_of(event), **event.context(), **event.fields()}
            with self._lock:
                self.recent.append(entry)
        if isinstance(event, ev.Abandoned):
            metrics.CONNECTIONS_ABANDONED.labels(repo=event.target.repo.name).inc()
        elif isinstance(event, ev.Retrying):
            metrics.RETRIES.labels(repo=event.target.repo.name).inc()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.recent)


@dataclass
class Job:
    """One kind of job's timings, for /status and liveness."""

    last_started: float | None = None  # wall clock
    last_finished: float | None = None
    last_error: str | None = None
    since: float | None = None  # monotonic start of the running one, else None

    def as_dict(self) -> dict[str, Any]:
        since = self.since  # read once: the job may finish meanwhile
        running = time.monotonic() - since if since is not None else None
        return {
            "last_started": self.last_started,
            "last_finished": self.last_finished,
            "running_for": running,
            "last_error": self.last_error,
        }


@dataclass
class Service:
    config_dir: Path
    root: Path
    state_kind: str = "files"
    generate: bool = True
    log: Any = None
    stuck_after_s: float = STUCK_AFTER_S
    scheduler: Any = None
    """Runs ops-triggered rollouts as jobs (serve sets it); without one a rollout runs in the caller."""
    cfg: model.Config | None = None
    report: reconcile.Report | None = None
    report_at: float | None = None
    report_seconds: float | None = None
    problems: list[Problem] = field(default_factory=list)
    fingerprint: str = ""
    revision: str | None = None
    """The live revision: the configuration last loaded and applied (an invalid edit does not replace it)."""
    rejected_revision: str | None = None
    started: bool = False
    """The startup gate: every repo's global migrations have been applied since the daemon started."""
    last_success: float | None = None
    tenants: book.Book = field(default_factory=book.Book)
    rollouts: ops.Registry = field(default_factory=ops.Registry)
    stopping: threading.Event = field(default_factory=threading.Event)
    events: EventLog = field(default_factory=EventLog)
    repos: dict[str, dict[str, Any]] = field(default_factory=dict)
    """repo -> latest versions, database name, applied global version, last error: what jobs saw last."""
    drift: drifts.Book = field(default_factory=drifts.Book)
    """Per repo the last drift check: what drifted, or why the check failed."""
    jobs: dict[str, Job] = field(
        default_factory=lambda: {n: Job() for n in ("reconcile", "tenants", "rollout", "drift")}
    )
    _endpoints: Endpoints | None = None
    _gauged: set[str] = field(default_factory=set)  # repos with tenant gauges exported
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoints(self) -> Endpoints:
        """Connections that outlive passes: per repo a watched control-plane pool (psycopg_pool)."""
        if self._endpoints is None:
            from orchestrator.migrations.sessions import Endpoints

            self._endpoints = Endpoints(self.root, pooled=True, sink=self.events)
        return self._endpoints

    def runner(self, sink: Sink | None = None) -> Runner:
        from orchestrator.migrations import runner

        cfg = self.cfg or model.Config((), ())
        return runner.Runner(
            cfg, self.root, sink=sink or self.events, state_kind=self.state_kind, endpoints=self.endpoints
        )

    def close(self) -> None:
        if self._endpoints is not None:
            self._endpoints.close()

    def close_when_idle(self, *, timeout: float) -> bool:
        """Wait until no job runs (``stopping`` makes them start nothing new), then close the connections while
        still holding the jobs' lock, so no job starts on closed ones; False if a job still runs."""
        self.rollouts.each_pending(_stopped_before_start)
        if not self._lock.acquire(timeout=timeout):
            return False
        try:
            self.close()
        finally:
            self._lock.release()
        return True

    # -- probes --------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Steady readiness: serving, with a configuration loaded."""
        return self.cfg is not None and not self.stopping.is_set()

    def ready_reason(self) -> str | None:
        if self.stopping.is_set():
            return "stopping"
        if self.cfg is None:
            first = f": {self.problems[0]}" if self.problems else ""
            return f"no valid configuration loaded yet{first}"
        return None

    def startup_reason(self) -> str | None:
        """Why the startup gate is still closed (None once open)."""
        if self.started:
            return None
        if self.cfg is None:
            return self.ready_reason()
        failing = {name: info["last_error"] for name, info in dict(self.repos).items() if info.get("last_error")}
        if failing:
            return "global migrations not applied: " + "; ".join(f"{k}: {v}" for k, v in failing.items())
        return "the first reconcile has not finished"

    def stuck(self) -> str | None:
        """Liveness: the job that has shown no progress for ``stuck_after_s``, if any."""
        now = time.monotonic()
        for name, job in self.jobs.items():
            since = job.since  # read once: the job may finish meanwhile
            if since is None:
                continue
            quiet = now - max(since, self.events.last, self._working())
            if quiet > self.stuck_after_s:
                return f"the {name} job has shown no progress for {int(quiet)} s"
        return None

    def _working(self) -> float:
        """When a watched session was last seen executing (not waiting for a lock): a long statement is
        progress, though it emits no event."""
        endpoints = self._endpoints
        return endpoints.last_working() if endpoints is not None else 0.0

    # -- jobs ----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _exclusive(self, name: str) -> Iterator[bool]:
        """Run as job ``name``: one job at a time, none once stopping (yields False then)."""
        if self.stopping.is_set():
            yield False
            return
        with self._lock:
            if self.stopping.is_set():  # SIGTERM came while this job waited for the other one
                yield False
                return
            job = self.jobs[name]
            job.since, job.last_started = time.monotonic(), time.time()
            try:
                yield True
                job.last_error = None
            except Exception as exc:
                job.last_error = db.redact(f"{type(exc).__name__}: {exc}")
                raise
            finally:
                job.since, job.last_finished = None, time.time()

    def reconcile_job(self) -> None:
        """Full reconcile when the manifests or migrations changed, or the last one did not succeed."""
        with self._exclusive("reconcile") as go:
            if not go:
                return
            current = reconcile.fingerprint(self.config_dir, self.root, self.cfg, self.state_kind)
            if current == self.fingerprint and self.report is not None and not self.report.errors:
                return  # nothing new (a bad edit is not validated again); failed tenants are the tenants job's
            manifests = reconcile.manifests_hash(self.config_dir)
            # something changed: every tenant is tried (the change may be the fix); a re-run after an error
            # leaves failed tenants to their backoff, as the tenants job does
            again = current == self.fingerprint and self.cfg is not None
            waits = (
                {repo.name: self.tenants.waiting(repo.name) for repo in self.cfg.repos} if again and self.cfg else {}
            )
            started = time.monotonic()
            report = reconcile.reconcile(
                self.config_dir,
                self.root,
                state_kind=self.state_kind,
                generate_migrations=self.generate,
                sink=self.events,
                stop=self.stopping,
                endpoints=self.endpoints,
                waiting=lambda name: waits.get(name, ()),
            )
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
            self._record(report, time.monotonic() - started)
            if report.cfg is None:
                self.fingerprint = current  # any change from here, a revert to the good content too, reconciles
                return
            self.cfg = report.cfg  # what was applied, even if the manifests changed meanwhile
            self.revision, self.rejected_revision = report.revision, None
            for repo in self.cfg.repos:
                if repo.name in report.tenants:
                    self.tenants.merge(
                        repo, report.tenants[repo.name], complete=True, left_out=waits.get(repo.name, ())
                    )
            self.started = self.started or all(r.name in report.applied for r in self.cfg.repos)
            self._remember(report)
            changed_meanwhile = reconcile.manifests_hash(self.config_dir) != manifests
            self.fingerprint = (
                ""
                if changed_meanwhile
                else reconcile.fingerprint(self.config_dir, self.root, self.cfg, self.state_kind)
            )

    def tenants_job(self) -> None:
        """Tenant discovery and retry: every tenant that is behind (new, or failed and due) is migrated."""
        if self.cfg is None:
            return
        with self._exclusive("tenants") as go:
            if not go or self.cfg is None:
                return
            from orchestrator.migrations import rollout

            run = self.runner()
            for repo in self.cfg.repos:
                if repo.tenants is None:
                    continue
                waiting = self.tenants.waiting(repo.name)  # a canary among them holds the others (rollout.Hold)
                try:
                    results = run.tenant_rollout(repo, stop=self.stopping).run(rollout.Options(exclude=waiting))
                except (OrchestratorError, psycopg.Error) as exc:
                    self._repo_failed(repo.name, db.redact(str(exc)), job="tenants")
                    continue
                self.repos.setdefault(repo.name, {})["last_error"] = None
                self.tenants.merge(repo, results, complete=True, left_out=waiting)
                metrics.count_tenants(repo.name, results)
            self._gauge_tenants()

    def drift_job(self) -> None:
        """Compare every target's live catalog with the model of its applied version (``drift``); the first run,
        at start, waits for the first reconcile (the jobs' lock) and checks what it left."""
        with self._exclusive("drift") as go:
            if not go or self.cfg is None:
                return
            run = self.runner()
            for repo in self.cfg.repos:
                if self.stopping.is_set():
                    return
                self._check_drift(run, repo)
            self.drift.retain({repo.name for repo in self.cfg.repos})

    def _check_drift(self, run: Runner, repo: model.Repo) -> None:
        from orchestrator import drift

        started = time.time()
        try:
            reports = [drift.check(run, repo, tenant_scope=False)]
            if repo.tenants is not None:
                reports.append(drift.check(run, repo, tenant_scope=True))
        except (OrchestratorError, psycopg.Error) as exc:
            error = db.redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            self.drift.failed(repo.name, error, started)
            self._event("drift.error", level="error", repo=repo.name, error=error)
            return
        found = self.drift.record(repo.name, reports, started)
        metrics.DRIFT_TARGETS.labels(repo=repo.name).set(found)
        for report in reports:
            for target in report.drifted:
                self._event(
                    "drift.found",
                    level="warning",
                    repo=repo.name,
                    tenant=target.schema,
                    version=target.version,
                    differences=list(target.differences),
                )

    # -- ops-triggered rollouts ----------------------------------------------------------------------------

    def start_rollout(self, body: Any) -> ops.Rollout:
        """Check ``body`` (``rollouts.BadRollout`` says why not), record the rollout and schedule it."""
        if self.stopping.is_set():
            raise ops.BadRollout("the daemon is stopping")
        cfg = self.cfg  # one configuration for the whole check, whatever a job loads meanwhile
        request = ops.parse(body, cfg)
        if request.tenants is not None and cfg is not None:
            repo = next(r for r in cfg.repos if r.name == request.repo)
            ops.check_tenants(request, self._listed(repo))
        record = self.rollouts.add(request)
        if self.scheduler is None:
            self._run_rollout(record)
        else:
            self.scheduler.add_job(
                self._run_rollout, args=(record,), id=f"rollout-{record.id}", misfire_grace_time=None
            )
        return record

    def _listed(self, repo: model.Repo) -> list[str]:
        """The repo's tenants, on a connection of the request's own (the jobs' pools are the jobs')."""
        from orchestrator import tenants

        if repo.tenants is not None and repo.tenants.kind == "static":
            return list(repo.tenants.static)
        with db.connect_to(db.conninfo(repo, self.root), repo) as conn:
            conn.execute("SET statement_timeout = '10s'")
            return list(tenants.list_tenants(repo, conn).tenants)

    def _run_rollout(self, record: ops.Rollout) -> None:
        with self._exclusive("rollout") as go:
            if not go:
                _stopped_before_start(record)
                return
            record.status, record.started = "running", time.time()
            try:
                self._roll_out(record)
            except Exception as exc:  # whatever it is, the record must not stay "running"
                record.status, record.error = "failed", db.redact(str(exc) or type(exc).__name__)
                self._event("rollout.failed", level="error", id=record.id, error=record.error)
                if not isinstance(exc, (OrchestratorError, ConfigError, psycopg.Error)):
                    raise
            finally:
                record.finished = time.time()

    def _roll_out(self, record: ops.Rollout) -> None:
        from orchestrator.migrations import events as ev
        from orchestrator.migrations import rollout

        if self.cfg is None:
            raise OrchestratorError("no valid configuration loaded yet")

        def sink(event: ev.Event) -> None:
            self.events(event)
            if isinstance(event, ev.Planned):
                record.plan.append({"target": event.target.name, **event.fields()})

        run = self.runner(sink)
        statuses: list[str] = []
        for repo in run.repos(record.repo):
            entry: dict[str, Any] = {"applied": [m.path.name for m in run.migrate(repo, dry_run=record.dry_run)]}
            if repo.tenants is not None:
                options = rollout.Options(only=record.tenants, dry_run=record.dry_run)
                results = run.tenant_rollout(repo, stop=self.stopping).run(options)
                entry["tenants"] = [r.as_dict() for r in results]
                statuses += [r.status for r in results]
                if not record.dry_run:
                    self.tenants.merge(repo, results, complete=record.tenants is None)
            record.result[repo.name] = entry
        self._gauge_tenants()
        if self.stopping.is_set() and "skipped" in statuses:
            record.status, record.error = "stopped", "the daemon stopped before every tenant was started"
        elif "failed" in statuses or ("held" in statuses and not record.dry_run):
            record.status = "failed"
            record.error = f"{statuses.count('failed')} failed, {statuses.count('held')} held back by a canary"
        else:
            record.status = "done"
        self._event(
            "rollout.finished", level="info" if record.status == "done" else "error", **record.as_dict(full=False)
        )

    # -- state ---------------------------------------------------------------------------------------------

    def _record(self, report: reconcile.Report, seconds: float) -> None:
        self.report, self.report_at, self.report_seconds = report, time.time(), seconds
        self.problems = report.problems
        metrics.CONFIG_VALID.set(0 if report.problems else 1)
        metrics.RECONCILES.labels(result="ok" if report.ok else "failed").inc()
        for repo, applied in report.applied.items():
            metrics.MIGRATIONS_APPLIED.labels(repo=repo).inc(len(applied))
        for repo, results in report.tenants.items():
            metrics.count_tenants(repo, results)
        if report.ok:
            self.last_success = time.time()
            metrics.LAST_SUCCESS.set(self.last_success)
        if report.problems:
            self.rejected_revision = report.revision
            self._event(
                "config.invalid",
                level="error",
                revision=report.revision,
                live_revision=self.revision,
                problems=[str(p) for p in report.problems],
                kept="the last good configuration stays applied" if self.cfg else "nothing is applied",
            )
            return
        failed = {
            repo: [f"{r.tenant}: {r.error}" for r in results if r.status == "failed"]
            for repo, results in report.tenants.items()
            if any(r.status == "failed" for r in results)
        }
        self._event(
            "reconcile.done",
            level="info" if report.ok else "error",
            revision=report.revision,
            ok=report.ok,
            reason=None
            if report.ok
            else "; ".join([*report.errors, *(f"{k}: {len(v)} tenant(s) failed" for k, v in failed.items())]),
            generated=report.generated,
            errors=[db.redact(e) for e in report.errors],
            tenants_failed=failed,
        )

    def _repo_failed(self, repo: str, error: str, *, job: str) -> None:
        self.repos.setdefault(repo, {})["last_error"] = error
        self._event(f"{job}.error", level="error", repo=repo, error=error)

    def _gauge_tenants(self) -> None:
        for gone in self._gauged - {r.name for r in self.cfg.repos if r.tenants is not None} if self.cfg else set():
            with contextlib.suppress(KeyError):  # a removed repo's alert clears
                metrics.TENANTS_FAILED.remove(gone)
                metrics.TENANTS_BEHIND.remove(gone)
        self._gauged = {r.name for r in self.cfg.repos if r.tenants is not None} if self.cfg else set()
        for repo in self.cfg.repos if self.cfg else ():
            if repo.tenants is not None:
                _, behind, failed = self.tenants.counts(repo.name)
                metrics.TENANTS_FAILED.labels(repo=repo.name).set(failed)
                metrics.TENANTS_BEHIND.labels(repo=repo.name).set(behind)

    def _event(self, name: str, *, level: str = "info", **fields: Any) -> None:
        if self.log is not None:
            getattr(self.log, level)(name, **fields)

    def _remember(self, report: reconcile.Report) -> None:
        """Per repo: the latest migration versions (what every target should be at), the database's name, the
        applied global version and the last error, recorded by the job that holds the lock, so /status never
        touches files or the database itself."""
        if self.cfg is None:
            return
        run = self.runner()
        names = {repo.name for repo in self.cfg.repos}
        for gone in [name for name in self.repos if name not in names]:
            del self.repos[gone]
        for repo in self.cfg.repos:
            info = self.repos.setdefault(repo.name, {})
            info["last_error"] = report.repo_errors.get(repo.name)
            try:
                info["database"] = run.endpoint(repo).database
                info["latest_version"] = max((m.version for m in run.migrations(repo)), default=None)
                info["latest_tenant_version"] = max((m.version for m in run.tenant_migrations(repo)), default=None)
            except (OrchestratorError, psycopg.Error):
                continue  # the report says what failed; the last versions known stay
            if repo.name in report.applied:
                info["global_version"] = info["latest_version"]
        self.tenants.retain(names)
        self.endpoints.retain(names)
        self._gauge_tenants()

    def _repo_status(self, repo: model.Repo) -> dict[str, Any]:
        info = self.repos.get(repo.name, {})
        shown = {
            "name": repo.name,
            "database": info.get("database"),
            "tenant_source": repo.tenants.kind if repo.tenants else None,
            "latest_version": info.get("latest_version"),
            "global_version": info.get("global_version"),
            "latest_tenant_version": info.get("latest_tenant_version"),
            "last_error": info.get("last_error"),
        }
        return shown | self.tenants.summary(repo) | {"drift": self.drift.get(repo.name)}

    def status(self) -> dict[str, Any]:
        report = self.report
        last = None
        if report is not None:
            last = {k: v for k, v in report.as_dict().items() if k != "problems"}
            last |= {"at": self.report_at, "seconds": self.report_seconds}
        return {
            "revision": self.revision,
            "rejected_revision": self.rejected_revision,
            "config_valid": not self.problems,
            "problems": [p.as_dict() for p in self.problems],
            "started": self.started,
            "ready": self.ready,
            "ready_reason": self.ready_reason(),
            "last_success": self.last_success,
            "last_reconcile": last,
            "repos": [self._repo_status(r) for r in (self.cfg.repos if self.cfg else ())],
            "rollouts": [r.as_dict(full=False) for r in self.rollouts.recent()],
            "recent_events": self.events.snapshot(),
            "jobs": {name: job.as_dict() for name, job in self.jobs.items()},
        }


def _stopped_before_start(record: ops.Rollout) -> None:
    if record.status == "pending":
        record.status, record.error, record.finished = "stopped", "the daemon stopped before it started", time.time()
