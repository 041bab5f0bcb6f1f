"""``regen``: the AshPostgres guide's regen script, built in.

While iterating on a change, migrations are generated, applied, then the resources change again. ``regen``
rolls back the migrations git does not track yet, deletes them and the snapshots git does not track, and
generates again — one clean migration instead of a trail of small ones; ``-m`` migrates afterwards (globals,
then every tenant). Tracked (committed) migrations are never touched. Outside a git checkout it refuses: it
could not tell new files from reviewed ones.

Rolling back is the reverse of migrating: every repo is checked first (an untracked migration older than a
committed, applied one is refused before anything runs), then per repo the tenants are rolled back before the
globals, since a new tenant table may reference a new global one. A repo whose tenants fail to roll back keeps
its globals and files, and regen stops there (as after a global down that fails): nothing is deleted, the
caller reports what was rolled back and exits 1.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import model
from orchestrator.errors import BadInputError
from orchestrator.migrations import files, loop, rollout, runner
from orchestrator.migrations.loop import Action


@dataclass(frozen=True)
class Untracked:
    """What git does not track in one repo, and what of it must be rolled back before it is deleted."""

    repo: model.Repo
    files: list[Path]  # migrations and snapshots, to delete
    global_count: int  # the newest applied global migrations that are untracked
    tenant_from: int | None  # the oldest untracked tenant migration (tenants roll back to just below it)


@dataclass
class Rollback:
    """What rolling back one repo's untracked migrations did."""

    repo: str
    files: list[Path]
    rolled_back: list[str] = field(default_factory=list)  # global migration files, newest first
    tenants: list[rollout.TenantResult] = field(default_factory=list)
    error: str | None = None  # why the rollback stopped (a tenant, or a global migration's down, failed)

    @property
    def failed(self) -> bool:
        return self.error is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "rolled_back": self.rolled_back,
            "tenants": [r.as_dict() for r in self.tenants],
            "error": self.error,
        }


def untracked(root: Path, path: str) -> list[Path]:
    """Files under ``root/path`` that git does not track (ignored files excluded)."""
    directory = root / path
    if not directory.exists():
        return []
    proc = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard", "-z", "--", path],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BadInputError(f"regen needs a git checkout: git ls-files failed in {root}: {proc.stderr.strip()}")
    return sorted(root / name for name in proc.stdout.split("\0") if name)


def check_checkout(root: Path) -> None:
    proc = subprocess.run(
        ["git", "rev-parse", "--is-inside-work-tree"], cwd=root, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 or proc.stdout.strip() != "true":
        raise BadInputError(
            f"regen needs a git checkout: {root} is not inside one (it tells new migrations from "
            "committed ones by asking git)"
        )


def roll_back_untracked(run: runner.Runner, repos: tuple[model.Repo, ...]) -> list[Rollback]:
    """Check every repo, then roll back each one's untracked migrations (tenants first); stop after a repo
    whose tenants failed. Return one ``Rollback`` per repo handled."""
    found = [find_untracked(run, repo) for repo in repos]
    done = []
    for item in found:
        done.append(_roll_back(run, item))
        if done[-1].failed:
            break
    return done


def find_untracked(run: runner.Runner, repo: model.Repo) -> Untracked:
    """The repo's untracked files and what of them is applied; refuse (BadInputError) untracked migrations
    older than a committed one, which cannot be rolled back alone."""
    global_files = untracked(run.root, repo.migrations_path)
    tenant_files = untracked(run.root, repo.tenant_migrations_path)
    global_new = _versions(global_files)
    newest_first = sorted((version for version, _, _ in run.status(repo).applied), reverse=True)
    count = 0
    while count < len(newest_first) and newest_first[count] in global_new:
        count += 1
    stranded = [v for v in newest_first[count:] if v in global_new]
    if stranded:
        raise BadInputError(
            f"{repo.name}: untracked migration {stranded[0]} is older than a committed one that "
            "is applied; roll back by hand"
        )
    tenant_new = _versions(tenant_files)
    tracked = [m.version for m in run.tenant_migrations(repo) if m.version not in tenant_new]
    oldest = min(tenant_new) if tenant_new else None
    if oldest is not None and any(version > oldest for version in tracked):
        raise BadInputError(
            f"{repo.name}: untracked tenant migration {oldest} is older than a committed one; roll back by hand"
        )
    snapshots = untracked(run.root, repo.snapshots_path)
    return Untracked(repo, global_files + tenant_files + snapshots, count, oldest)


def _roll_back(run: runner.Runner, item: Untracked) -> Rollback:
    result = Rollback(item.repo.name, item.files)
    if item.tenant_from is not None and item.repo.tenants is not None:
        options = rollout.Options(action=Action.ROLLBACK, to=item.tenant_from - 1)
        result.tenants = run.tenant_rollout(item.repo).run(options)
        failed = [r.tenant for r in result.tenants if r.status == "failed"]
        if failed:
            result.error = f"{item.repo.name}: rolling back untracked tenant migrations failed in {', '.join(failed)}"
            return result
    if item.global_count:
        try:
            result.rolled_back = [m.path.name for m in run.rollback(item.repo, step=item.global_count)]
        except loop.TargetFailed as exc:  # what was rolled back before stays rolled back
            result.rolled_back = [m.path.name for m in exc.done]
            result.error = str(exc)
    return result


def _versions(paths: list[Path]) -> set[int]:
    return {files.parse(p).version for p in paths if p.suffix == ".sql"}
