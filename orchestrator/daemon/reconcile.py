"""One reconcile: load the manifests, generate what changed, migrate every repo, then roll out to tenants.

This is the unit of work of the daemon's reconcile job (and of a one-shot Job run): a plain function that
returns a report and never raises for things that can go wrong in production — invalid manifests, a refused
destructive change, a database that is down, a tenant that fails — so the caller can keep serving, show the
report and try again. ``revision`` names the configuration a report is about (the git commit when the config
is a checkout, else a content hash), and ``fingerprint`` changes whenever a manifest or a migration does, which
is how a ConfigMap's symlink swap or a git-sync pull is noticed.
"""

from __future__ import annotations

import hashlib
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from orchestrator import config, db, model, state
from orchestrator.errors import ConfigError, OrchestratorError, Problem
from orchestrator.generator import generate
from orchestrator.manifests import loader

if TYPE_CHECKING:
    from orchestrator.migrations.events import Sink
    from orchestrator.migrations.rollout import TenantResult
    from orchestrator.migrations.sessions import Endpoints


@dataclass
class Report:
    """What one reconcile did; ``ok`` when the manifests were valid and nothing failed."""

    revision: str
    problems: list[Problem] = field(default_factory=list)
    generated: list[str] = field(default_factory=list)
    applied: dict[str, list[str]] = field(default_factory=dict)
    tenants: dict[str, list[TenantResult]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    repo_errors: dict[str, str] = field(default_factory=dict)  # repo -> what stopped its migrations
    cfg: model.Config | None = None  # the configuration this reconcile loaded and applied (None: invalid)

    @property
    def ok(self) -> bool:
        failed = any(r.status == "failed" for results in self.tenants.values() for r in results)
        return not self.problems and not self.errors and not failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "ok": self.ok,
            "problems": [p.as_dict() for p in self.problems],
            "generated": self.generated,
            "applied": self.applied,
            "tenants": {repo: [r.as_dict() for r in results] for repo, results in self.tenants.items()},
            "errors": self.errors,
        }


def revision(config_dir: Path) -> str:
    """``git:<commit>`` when the config directory is a clean git checkout, ``git:<commit>+dirty.<hash>`` when
    its manifests differ from the commit (an uncommitted edit is not the commit), else ``sha256:<hash>``."""
    head = _git(config_dir, "rev-parse", "HEAD")
    if not head:
        return f"sha256:{_hash(loader.find_files(config_dir), config_dir)[:16]}"
    if _git(config_dir, "status", "--porcelain", "--untracked-files=all", "--", "."):
        return f"git:{head}+dirty.{_hash(loader.find_files(config_dir), config_dir)[:8]}"
    return f"git:{head}"


def _git(directory: Path, *args: str) -> str | None:
    """What a git command prints (stripped), or None when it fails (not a checkout, no git)."""
    try:
        proc = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def manifests_hash(config_dir: Path) -> str:
    """A hash of every manifest's path and content."""
    return _hash(loader.find_files(config_dir), config_dir)


def fingerprint(config_dir: Path, root: Path, cfg: model.Config | None, state_kind: str = "files") -> str:
    """A hash of every manifest and every migration: equal fingerprints mean there is nothing new to do."""
    digest = hashlib.sha256(manifests_hash(config_dir).encode())
    for repo in cfg.repos if cfg else ():
        store = state.store(state_kind, repo, root)
        for path in (repo.migrations_path, repo.tenant_migrations_path):
            for name, text in sorted(store.read(path).items()):
                digest.update(name.encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest()


def _hash(paths: list[Path], base: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:  # sorted by find_files; read through symlinks, so a ConfigMap swap changes the hash
        digest.update(str(path.relative_to(base)).encode() + b"\0")
        try:
            digest.update(path.read_bytes() + b"\0")
        except OSError:
            digest.update(b"<unreadable>\0")
    return digest.hexdigest()


def reconcile(
    config_dir: Path,
    root: Path,
    *,
    state_kind: str = "files",
    generate_migrations: bool = True,
    sink: Sink | None = None,
    stop: threading.Event | None = None,
    endpoints: Endpoints | None = None,
    waiting: Callable[[str], Sequence[str]] | None = None,
) -> Report:
    """Validate, generate (unless told not to), migrate every repo, then every repo's tenants.

    ``sink`` hears the run's events; ``stop``: once set, no new tenant is started (the ones running finish);
    ``endpoints``: the daemon's long-lived connections (pooled control planes), else the run opens its own;
    ``waiting``: per repo, the failed tenants still inside their backoff (left out, as by the tenants job).
    """
    from orchestrator.migrations import events, rollout, runner  # the database side, only when reconciling

    report = Report(revision(config_dir))
    try:
        cfg = config.load(config_dir, base=config_dir.parent)
    except ConfigError as exc:
        report.problems = exc.problems
        return report
    report.cfg = cfg
    if generate_migrations:
        try:
            plan = generate.run(cfg, root, state_kind=state_kind)
            report.generated = [m.path.as_posix() for m in plan.migrations]
        except OrchestratorError as exc:  # a refused destructive change: apply what exists, report it
            report.errors.append(f"generate: {exc}")
    with runner.Runner(cfg, root, sink=sink or events.discard, state_kind=state_kind, endpoints=endpoints) as run:
        for repo in cfg.repos:
            try:
                report.applied[repo.name] = [m.path.name for m in run.migrate(repo)]
                if repo.tenants is not None:
                    options = rollout.Options(exclude=tuple(waiting(repo.name)) if waiting else ())
                    report.tenants[repo.name] = run.tenant_rollout(repo, stop=stop).run(options)
            except (OrchestratorError, psycopg.Error) as exc:  # never raises: the report says it
                report.repo_errors[repo.name] = db.redact(_text(exc))
                report.errors.append(db.redact(f"{repo.name}: {_text(exc)}"))
    return report


def _text(exc: Exception) -> str:
    """What went wrong, located: a configuration error (a URL its environment leaves unset) with each problem."""
    if isinstance(exc, ConfigError):
        return "; ".join(str(problem) for problem in exc.problems)
    return str(exc)
