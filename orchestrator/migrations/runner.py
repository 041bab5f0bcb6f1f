"""Run migrations for repos: migrate, rollback, repair and status, global or per tenant.

The ``Runner`` chooses the targets and what they are made from (the repo's migration files, the stored texts a
rollback needs); every target then goes through the one run loop (``loop.run``): lock, bookkeeping, plan under
the lock, apply, record, retry. The tenant fan-out (``rollout``) calls the same loop once per tenant. Nothing
here prints: what happens is reported as events to ``sink`` (the CLI renders them, the daemon logs them).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from orchestrator import model, state, tenants
from orchestrator.migrations import bulk, events, files, loop, planner, recorder
from orchestrator.migrations.loop import Action
from orchestrator.migrations.rollout import Options, TenantRollout
from orchestrator.migrations.sessions import Conn, Endpoint, Endpoints
from orchestrator.migrations.target import Scope, Target


@dataclass
class Status:
    """What a target has applied compared with its files."""

    target: str
    applied: list[tuple[int, str, str]] = field(default_factory=list)  # version, name, state
    pending: list[tuple[int, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "applied": [{"version": v, "name": n, "state": s} for v, n, s in self.applied],
            "pending": [{"version": v, "name": n} for v, n in self.pending],
        }


@dataclass
class Runner:
    cfg: model.Config
    root: Path
    sink: events.Sink = events.discard
    state_kind: str = "files"
    endpoints: Endpoints | None = None
    """Shared endpoints (the daemon's, with pooled control planes); by default the runner opens its own."""
    _own: Endpoints | None = None
    _stores: dict[str, state.Store] = field(default_factory=dict)

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.close()

    def close(self) -> None:
        """Close what this runner opened (not shared endpoints)."""
        if self._own is not None:
            self._own.close()
            self._own = None

    def repos(self, name: str | None) -> tuple[model.Repo, ...]:
        return self.cfg.repos if name is None else tuple(r for r in self.cfg.repos if r.name == name)

    def endpoint(self, repo: model.Repo) -> Endpoint:
        if self.endpoints is not None:
            return self.endpoints.get(repo)
        if self._own is None:
            self._own = Endpoints(self.root, sink=self.sink)
        return self._own.get(repo)

    def store(self, repo: model.Repo) -> state.Store:
        """Where the repo's migrations (and the generator's snapshots) are kept: files or the database."""
        if repo.name not in self._stores:
            control = self.endpoint(repo).control if self.state_kind == "database" else None
            self._stores[repo.name] = state.store(self.state_kind, repo, self.root, control=control)
        return self._stores[repo.name]

    def migrations(self, repo: model.Repo) -> list[files.MigrationFile]:
        """The repo's global migrations (the files directly in migrationsPath), by version."""
        return self._collection(repo, repo.migrations_path)

    def tenant_migrations(self, repo: model.Repo) -> list[files.MigrationFile]:
        """The repo's tenant migrations (the files directly in tenantMigrationsPath), by version."""
        return self._collection(repo, repo.tenant_migrations_path)

    def _collection(self, repo: model.Repo, path: str) -> list[files.MigrationFile]:
        directory = path.rstrip("/")
        stored = self.store(repo).read(directory)
        return files.collection({p: t for p, t in stored.items() if p.rpartition("/")[0] == directory})

    # -- global targets ------------------------------------------------------------------------------------

    def migrate(
        self,
        repo: model.Repo,
        *,
        to: int | None = None,
        step: int | None = None,
        strict: bool = False,
        dry_run: bool = False,
    ) -> list[files.MigrationFile]:
        request = loop.Request(Action.MIGRATE, to=to, step=step, strict=strict, dry_run=dry_run)
        return self._run(repo, request).done

    def rollback(
        self, repo: model.Repo, *, step: int | None = None, to: int | None = None, dry_run: bool = False
    ) -> list[files.MigrationFile]:
        return self._run(repo, loop.Request(Action.ROLLBACK, to=to, step=step, dry_run=dry_run)).done

    def repair(self, repo: model.Repo) -> list[int]:
        """Record the current checksum (and text) of applied migrations whose files were edited on purpose."""
        return [m.version for m in self._run(repo, loop.Request(Action.REPAIR)).done]

    def _target(self, repo: model.Repo) -> Target:
        return Target(repo, self.endpoint(repo).database, "public", Scope.GLOBAL)

    def _run(self, repo: model.Repo, request: loop.Request) -> loop.Outcome:
        endpoint = self.endpoint(repo)
        stored: dict[int, tuple[str, str]] = {}
        if request.action is Action.ROLLBACK:
            stored = endpoint.control.run(lambda conn: recorder.stored_texts(conn, Scope.GLOBAL.value))
        workers = endpoint.workers()
        try:
            return loop.run(self._target(repo), request, loop.Source(self.migrations(repo), stored), workers, self.sink)
        finally:
            workers.close()

    def status(self, repo: model.Repo) -> Status:
        migrations = self.migrations(repo)
        target = self._target(repo)

        def read(conn: Conn) -> Status:
            applied = recorder.applied(conn, target.schema)
            changed = {e.migration.version for e in planner.edited(migrations, applied)}
            on_disk = {m.version: m for m in migrations}
            status = Status(target.name)
            for version, row in sorted(applied.items()):
                state_ = "edited" if version in changed else ("applied" if version in on_disk else "file missing")
                name = row.name or (on_disk[version].name if version in on_disk else "")
                status.applied.append((version, name, state_))
            status.pending = [(m.version, m.name) for m in migrations if m.version not in applied]
            return status

        return self.endpoint(repo).control.run(read)

    # -- tenants -------------------------------------------------------------------------------------------

    def tenant_rollout(
        self, repo: model.Repo, *, progress: bool = False, stop: threading.Event | None = None
    ) -> TenantRollout:
        return TenantRollout(self.endpoint(repo), self.store(repo), self.sink, progress, stop)

    def repair_tenants(self, repo: model.Repo) -> list[str]:
        """``repair`` in every tenant (each under its lock, retried): new checksums, stale partial progress."""
        results = self.tenant_rollout(repo).run(Options(action=Action.REPAIR))
        failed = [r for r in results if r.status == "failed"]
        if failed:
            raise loop.TargetFailed(
                f"{repo.name}: repair failed in {len(failed)} tenant(s): "
                + "; ".join(f"{r.tenant}: {r.error}" for r in failed[:5]),
                error=str(failed[0].error),
                attempts=failed[0].attempts,
            )
        return [f"{r.tenant}:{name.partition('_')[0]}" for r in results for name in r.applied]

    def tenant_status(self, repo: model.Repo) -> dict[str, Any]:
        """Per tenant: applied, pending, and the outcome of its last rollout (bulk queries)."""
        migrations = self.tenant_migrations(repo)

        control = self.endpoint(repo).control

        def read(conn: Conn) -> tuple[Sequence[str], dict[str, bulk.TenantState], dict[str, tuple[str, str | None]]]:
            names = tenants.list_tenants(repo, conn).tenants
            return names, bulk.states(conn, names, helper=control.extra), recorder.last_outcomes(conn)

        names, states, outcomes = control.run(read)
        rows = []
        for name in names:
            applied = states[name].applied
            status, error = outcomes.get(name, (None, None))
            edited = [e.migration.version for e in planner.edited(migrations, applied)]
            pending = [m.version for m in migrations if m.version not in applied]
            if status == "failed" and not (pending or edited):
                status, error = "fixed", None  # failed last time, but nothing is wrong any more
            rows.append(
                {
                    "tenant": name,
                    "exists": states[name].exists,
                    "applied": sorted(applied),
                    "pending": pending,
                    "edited": edited,
                    "last_status": status,
                    "last_error": error,
                }
            )
        return {"repo": repo.name, "tenants": rows}
