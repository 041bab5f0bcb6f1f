"""The daemon's state and jobs: reconcile on change, tenant discovery every interval, ops-triggered rollouts.

Jobs are plain methods; the scheduler (APScheduler) only calls them, one of a kind at a time, and one at a time
overall (a lock), so a reconcile and a tenant pass never race each other. An invalid manifest never stops the
service: it keeps the last good configuration, reports the located errors and applies nothing from the bad one.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from orchestrator import config, db, model
from orchestrator.daemon import metrics, reconcile
from orchestrator.errors import ConfigError, OrchestratorError, Problem

if TYPE_CHECKING:
    from orchestrator.migrations import events
    from orchestrator.migrations.rollout import TenantResult
    from orchestrator.migrations.runner import Runner
    from orchestrator.migrations.sessions import Endpoints

RECENT_EVENTS = 50
"""Warnings and errors of the runs (retries, abandoned connections, failures) kept for /status."""


@dataclass
class EventLog:
    """The daemon's sink: every event logged through structlog; warnings and errors also kept for /status."""

    log: Any = None
    recent: collections.deque[dict[str, Any]] = field(default_factory=lambda: collections.deque(maxlen=RECENT_EVENTS))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, event: events.Event) -> None:
        from orchestrator.migrations import events as ev

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
class Rollout:
    id: str
    repo: str | None
    tenants: list[str] | None
    dry_run: bool
    status: str = "pending"
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Service:
    config_dir: Path
    root: Path
    state_kind: str = "files"
    generate: bool = True
    log: Any = None
    cfg: model.Config | None = None
    report: reconcile.Report | None = None
    problems: list[Problem] = field(default_factory=list)
    fingerprint: str = ""
    ready: bool = False
    last_success: float | None = None
    rollouts: dict[str, Rollout] = field(default_factory=dict)
    backoff: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)
    """(repo, tenant) -> (consecutive failures, when to try again): the retry of failed tenants."""
    stopping: threading.Event = field(default_factory=threading.Event)
    events: EventLog = field(default_factory=EventLog)
    latest: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    """repo -> latest global and tenant migration versions, as of the last job."""
    _endpoints: Endpoints | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoints(self) -> Endpoints:
        """Connections that outlive passes: per repo a watched control-plane pool (psycopg_pool)."""
        if self._endpoints is None:
            from orchestrator.migrations.sessions import Endpoints

            self._endpoints = Endpoints(self.root, pooled=True, sink=self.events)
        return self._endpoints

    def runner(self) -> Runner:
        from orchestrator.migrations import runner

        cfg = self.cfg or model.Config((), ())
        return runner.Runner(cfg, self.root, sink=self.events, state_kind=self.state_kind, endpoints=self.endpoints)

    def close(self) -> None:
        if self._endpoints is not None:
            self._endpoints.close()

    def close_when_idle(self, *, timeout: float) -> bool:
        """Wait until no job runs (``stopping`` makes them start nothing new), then close the connections while
        still holding the jobs' lock, so no job starts on closed ones; False if a job still runs."""
        if not self._lock.acquire(timeout=timeout):
            return False
        try:
            self.close()
        finally:
            self._lock.release()
        return True

    # -- jobs ----------------------------------------------------------------------------------------------

    def reconcile_job(self) -> None:
        """Full reconcile when the manifests or migrations changed, or the last one did not succeed."""
        if self.stopping.is_set():
            return
        with self._lock:
            if self.stopping.is_set():  # SIGTERM came while this job waited for the other one
                return
            current = reconcile.fingerprint(self.config_dir, self.root, self.cfg, self.state_kind)
            if current == self.fingerprint and self.report is not None and not self.report.errors:
                return  # nothing new; failed tenants are the tenants job's, with backoff
            started = time.monotonic()
            report = reconcile.reconcile(
                self.config_dir,
                self.root,
                state_kind=self.state_kind,
                generate_migrations=self.generate,
                sink=self.events,
                stop=self.stopping,
                endpoints=self.endpoints,
            )
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
            self._record(report)
            if not report.problems:
                self.cfg = config.load(self.config_dir, base=self.config_dir.parent)
                for repo in self.cfg.repos:
                    self._note_failures(repo, report.tenants.get(repo.name, []))
                self._remember_versions()
                self.fingerprint = reconcile.fingerprint(self.config_dir, self.root, self.cfg, self.state_kind)

    def tenants_job(self) -> None:
        """Tenant discovery and retry: every tenant that is behind (new, or failed before) is migrated."""
        if self.stopping.is_set() or self.cfg is None:
            return
        with self._lock:
            from orchestrator.migrations import rollout

            if self.stopping.is_set():
                return
            run = self.runner()
            failed = False
            for repo in self.cfg.repos:
                if repo.tenants is None:
                    continue
                waiting = self._waiting(repo.name)
                try:
                    results = run.tenant_rollout(repo, stop=self.stopping).run(rollout.Options(exclude=waiting))
                except (OrchestratorError, psycopg.Error) as exc:
                    self._event("tenants.error", level="error", repo=repo.name, error=db.redact(str(exc)))
                    failed = True
                    continue
                self._note_failures(repo, results)
                metrics.count_tenants(repo.name, results)
                failed = failed or bool(waiting) or any(r.status == "failed" for r in results)
                if self.report is not None:
                    self.report.tenants[repo.name] = results
            self.ready = bool(self.report and not self.report.problems and not self.report.errors and not failed)

    def _waiting(self, repo: str) -> list[str]:
        """Failed tenants still inside their backoff: left out of this pass."""
        now = time.monotonic()
        return sorted(
            tenant for (name, tenant), (_, retry_at) in self.backoff.items() if name == repo and retry_at > now
        )

    def _note_failures(self, repo: model.Repo, results: list[TenantResult]) -> None:
        """A tenant that fails again waits twice as long before the next try (from the repo's retry.initialDelay,
        up to 10 minutes); one that succeeds is forgotten."""
        for result in results:
            key = (repo.name, result.tenant)
            if result.status == "failed":
                failures = self.backoff.get(key, (0, 0.0))[0] + 1
                delay = min(repo.retry.initial_delay_ms / 1000 * 2**failures, 600.0)
                self.backoff[key] = (failures, time.monotonic() + delay)
            elif result.status in ("migrated", "up to date"):
                self.backoff.pop(key, None)

    def start_rollout(self, repo: str | None, tenants: list[str] | None, dry_run: bool) -> Rollout:
        record = Rollout(uuid.uuid4().hex[:12], repo, tenants, dry_run)
        self.rollouts[record.id] = record
        threading.Thread(target=self._run_rollout, args=(record,), name=f"rollout-{record.id}", daemon=True).start()
        return record

    def _run_rollout(self, record: Rollout) -> None:
        from orchestrator.migrations import rollout

        record.status = "running"
        with self._lock:
            try:
                if self.stopping.is_set():
                    raise OrchestratorError("the daemon is stopping")
                if self.cfg is None:
                    raise OrchestratorError("no valid configuration loaded yet")
                run = self.runner()
                for repo in run.repos(record.repo):
                    applied = run.migrate(repo, dry_run=record.dry_run)
                    entry: dict[str, Any] = {"applied": [m.path.name for m in applied]}
                    if repo.tenants is not None:
                        options = rollout.Options(only=record.tenants, dry_run=record.dry_run)
                        entry["tenants"] = [
                            r.as_dict() for r in run.tenant_rollout(repo, stop=self.stopping).run(options)
                        ]
                    record.result[repo.name] = entry
                failed = any(t["status"] == "failed" for e in record.result.values() for t in e.get("tenants", []))
                record.status = "failed" if failed else "done"
            except (OrchestratorError, ConfigError, psycopg.Error) as exc:
                record.status, record.error = "failed", db.redact(str(exc))

    # -- state ---------------------------------------------------------------------------------------------

    def _record(self, report: reconcile.Report) -> None:
        self.report = report
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
        self.ready = report.ok
        self._event(
            "reconcile.done",
            level="info" if report.ok else "error",
            revision=report.revision,
            ok=report.ok,
            problems=[str(p) for p in report.problems],
            generated=report.generated,
            errors=[db.redact(e) for e in report.errors],
            tenants_failed={
                repo: [f"{r.tenant}: {r.error}" for r in results if r.status == "failed"]
                for repo, results in report.tenants.items()
                if any(r.status == "failed" for r in results)
            },
        )

    def _event(self, name: str, *, level: str = "info", **fields: Any) -> None:
        if self.log is not None:
            getattr(self.log, level)(name, **fields)

    def _remember_versions(self) -> None:
        """The latest migration versions of every repo (what every target should be at), read by the job that
        holds the lock, so /status never touches files or the database itself."""
        if self.cfg is None:
            return
        run = self.runner()
        for repo in self.cfg.repos:
            try:
                latest = (
                    max((m.version for m in run.migrations(repo)), default=None),
                    max((m.version for m in run.tenant_migrations(repo)), default=None),
                )
            except (OrchestratorError, psycopg.Error):
                continue  # the report says what failed; the last versions known stay
            self.latest[repo.name] = latest
        self.endpoints.retain({repo.name for repo in self.cfg.repos})

    def _repo_status(self, repo: model.Repo) -> dict[str, Any]:
        """The latest versions and the last tenant outcomes, from what the jobs recorded."""
        latest_global, latest_tenant = self.latest.get(repo.name, (None, None))
        results = self.report.tenants.get(repo.name, []) if self.report else []
        return {
            "name": repo.name,
            "tenant_source": repo.tenants.kind if repo.tenants else None,
            "latest_version": latest_global,
            "latest_tenant_version": latest_tenant,
            "tenants": len(results),
            "tenants_failed": [r.tenant for r in results if r.status == "failed"],
        }

    def status(self) -> dict[str, Any]:
        report = self.report
        return {
            "revision": report.revision if report else None,
            "ready": self.ready,
            "config_valid": not self.problems,
            "problems": [p.as_dict() for p in self.problems],
            "last_success": self.last_success,
            "repos": [self._repo_status(r) for r in (self.cfg.repos if self.cfg else ())],
            "last_reconcile": {k: v for k, v in report.as_dict().items() if k != "problems"} if report else None,
            "rollouts": [vars(r) for r in self.rollouts.values()],
            "recent_events": self.events.snapshot(),
        }
