"""Run migrations for repos: migrate, rollback, status, repair, each over one target per repo.

A *session* is one connection holding the target's advisory lock, with the bookkeeping ensured; the work runs
inside it. A transient error anywhere in a session (connection lost, lock_timeout, deadlock, ...) ends it and
the whole session is retried with backoff: what was committed stays, the plan is recomputed, a
``transaction:false`` migration resumes at its recorded statement. Permanent errors end the run at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from orchestrator import db, model, state
from orchestrator.errors import DatabaseError
from orchestrator.migrations import executor, files, locking, planner, recorder, retry

T = TypeVar("T")
Out = Callable[[str], None]


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
    out: Out = print
    state_kind: str = "files"
    _stores: dict[str, state.Store] = field(default_factory=dict)

    def repos(self, name: str | None) -> tuple[model.Repo, ...]:
        return self.cfg.repos if name is None else tuple(r for r in self.cfg.repos if r.name == name)

    def store(self, repo: model.Repo) -> state.Store:
        """Where the repo's migrations (and the generator's snapshots) are kept: files or the database."""
        if repo.name not in self._stores:
            self._stores[repo.name] = state.store(self.state_kind, repo, self.root)
        return self._stores[repo.name]

    def migrations(self, repo: model.Repo) -> list[files.MigrationFile]:
        """The repo's global migrations (the files directly in migrationsPath), by version."""
        directory = repo.migrations_path.rstrip("/")
        stored = self.store(repo).read(directory)
        return files.collection({p: t for p, t in stored.items() if p.rpartition("/")[0] == directory})

    # -- commands ------------------------------------------------------------------------------------------

    def migrate(
        self,
        repo: model.Repo,
        *,
        to: int | None = None,
        step: int | None = None,
        strict: bool = False,
        dry_run: bool = False,
    ) -> list[files.MigrationFile]:
        def plan(conn: psycopg.Connection[Any], target: executor.Target) -> list[files.MigrationFile]:
            applied = recorder.applied(conn, target.schema)
            return planner.pending(self.migrations(repo), applied, to=to, step=step, strict=strict)

        return self._run(repo, "up", plan, dry_run)

    def rollback(
        self, repo: model.Repo, *, step: int | None = None, to: int | None = None, dry_run: bool = False
    ) -> list[files.MigrationFile]:
        def plan(conn: psycopg.Connection[Any], target: executor.Target) -> list[files.MigrationFile]:
            stored = recorder.stored_texts(conn, target.scope)
            applied = recorder.applied(conn, target.schema)
            return planner.rollback(self.migrations(repo), applied, stored, step=step, to=to)

        return self._run(repo, "down", plan, dry_run)

    def _run(
        self,
        repo: model.Repo,
        direction: str,
        plan: Callable[[psycopg.Connection[Any], executor.Target], list[files.MigrationFile]],
        dry_run: bool,
    ) -> list[files.MigrationFile]:
        """Plan under the lock, then apply each migration in ``direction`` (or only print them)."""
        verb = "applied" if direction == "up" else "rolled back"

        def work(conn: psycopg.Connection[Any], target: executor.Target) -> list[files.MigrationFile]:
            todo = plan(conn, target)
            if dry_run:
                self._show(target, todo, direction)
                return todo
            for migration in todo:
                ms = executor.apply(conn, target, migration, direction, log=self.out)
                self.out(f"{target.name}: {verb} {migration.path.name} ({ms} ms)")
            return todo

        done = self._session(repo, work, write=not dry_run)
        if not done and not dry_run:
            self.out(f"{repo.name}: {'up to date' if direction == 'up' else 'nothing to roll back'}")
        return done

    def status(self, repo: model.Repo) -> Status:
        migrations = self.migrations(repo)

        def work(conn: psycopg.Connection[Any], target: executor.Target) -> Status:
            applied = recorder.applied(conn, target.schema)
            changed = {e.migration.version for e in planner.edited(migrations, applied)}
            on_disk = {m.version: m for m in migrations}
            status = Status(target.name)
            for version, row in sorted(applied.items()):
                state = "edited" if version in changed else ("applied" if version in on_disk else "file missing")
                status.applied.append(
                    (version, row.name or (on_disk[version].name if version in on_disk else ""), state)
                )
            status.pending = [(m.version, m.name) for m in migrations if m.version not in applied]
            return status

        return self._session(repo, work, write=False)

    def repair(self, repo: model.Repo) -> list[int]:
        """Record the current checksum (and text) of applied migrations whose files were edited on purpose."""
        migrations = self.migrations(repo)

        def work(conn: psycopg.Connection[Any], target: executor.Target) -> list[int]:
            fixed = []
            for item in planner.edited(migrations, recorder.applied(conn, target.schema)):
                m = item.migration
                with conn.transaction():
                    recorder.set_checksum(conn, target.schema, m.version, m.checksum)
                    recorder.store_text(
                        conn, target.scope, version=m.version, name=m.name, checksum=m.checksum, body=m.text
                    )
                self.out(f"{target.name}: recorded the new checksum of {m.path.name}")
                fixed.append(m.version)
            for m in migrations:
                if recorder.forget_stale_progress(conn, target.name, m.version, m.checksum):
                    self.out(f"{target.name}: forgot the partial progress of an older text of {m.path.name}")
                    fixed.append(m.version)
            return fixed

        return self._session(repo, work, write=True)

    def repair_tenants(self, repo: model.Repo) -> list[str]:
        """``repair`` for every tenant: new checksums of edited tenant migrations, stale partial progress."""
        from orchestrator import tenants
        from orchestrator.migrations import bulk

        migrations = self.tenant_migrations(repo)
        fixed = []
        with db.connect_to(db.conninfo(repo, self.root), repo) as conn:
            names = tenants.list_tenants(repo, conn).tenants
            for name, found in bulk.states(conn, names).items():
                target = f"{repo.name}/{name}"
                for item in planner.edited(migrations, found.applied):
                    m = item.migration
                    with conn.transaction():
                        recorder.set_checksum(conn, name, m.version, m.checksum)
                        recorder.store_text(
                            conn, "tenant", version=m.version, name=m.name, checksum=m.checksum, body=m.text
                        )
                    self.out(f"{target}: recorded the new checksum of {m.path.name}")
                    fixed.append(f"{name}:{m.version}")
                for m in migrations:
                    if recorder.forget_stale_progress(conn, target, m.version, m.checksum):
                        self.out(f"{target}: forgot the partial progress of an older text of {m.path.name}")
                        fixed.append(f"{name}:{m.version}")
        return fixed

    def tenant_migrations(self, repo: model.Repo) -> list[files.MigrationFile]:
        """The repo's tenant migrations (the files directly in tenantMigrationsPath), by version."""
        directory = repo.tenant_migrations_path.rstrip("/")
        stored = self.store(repo).read(directory)
        return files.collection({p: t for p, t in stored.items() if p.rpartition("/")[0] == directory})

    # -- tenants -------------------------------------------------------------------------------------------

    def tenant_rollout(self, repo: model.Repo, *, progress: bool = False, stop: Any = None) -> Any:
        from orchestrator.migrations import rollout

        return rollout.TenantRollout(repo, db.conninfo(repo, self.root), self.store(repo), self.out, progress, stop)

    def tenant_status(self, repo: model.Repo) -> dict[str, Any]:
        """Per tenant: applied, pending, and the outcome of its last rollout (bulk queries)."""
        from orchestrator import tenants
        from orchestrator.migrations import bulk

        migrations = self.tenant_migrations(repo)
        with db.connect_to(db.conninfo(repo, self.root), repo) as conn:
            names = tenants.list_tenants(repo, conn).tenants
            states = bulk.states(conn, names)
            outcomes = recorder.last_outcomes(conn)
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

    # -- sessions ------------------------------------------------------------------------------------------

    def _session(
        self, repo: model.Repo, work: Callable[[psycopg.Connection[Any], executor.Target], T], *, write: bool
    ) -> T:
        """Run ``work`` on the repo's database; under the target's lock when it writes; retried when transient."""
        info = db.conninfo(repo, self.root)
        target = executor.Target(repo, db.database_name(info), "public", "global")

        def attempt() -> T:
            with db.open_connection(info) as conn:
                db.watch_client(conn)
                if not write:
                    return work(conn, target)
                lock = locking.key(target.database, target.schema)
                with locking.advisory_lock(conn, lock, repo.timeouts.lock_wait_ms, target.name):
                    recorder.ensure(conn, target.schema, lock_timeout_ms=repo.timeouts.lock_timeout_ms)
                    return work(conn, target)

        def on_retry(attempt_number: int, exc: BaseException) -> None:
            self.out(f"{target.name}: attempt {attempt_number} failed ({_describe(exc)}); retrying")

        try:
            return retry.run(repo.retry, attempt, on_retry=on_retry)
        except psycopg.Error as exc:
            raise DatabaseError(
                f"{target.name}: gave up after {repo.retry.attempts} attempts: {db.redact(_describe(exc))}"
            ) from None

    def _show(self, target: executor.Target, todo: list[files.MigrationFile], direction: str) -> None:
        for migration in todo:
            section = migration.up if direction == "up" else migration.down
            mode = "" if section.transaction else ", outside a transaction"
            self.out(f"-- {target.name}: {migration.path.name} ({direction}{mode})")
            for statement in section.statements:
                self.out(f"{statement};")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    state = getattr(exc, "sqlstate", None)
    return f"{state} {text}" if state else text
