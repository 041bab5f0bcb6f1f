"""``regen``: the AshPostgres guide's regen script, built in.

While iterating on a change, migrations are generated, applied, then the resources change again. ``regen``
rolls back the migrations git does not track yet (per repo, newest first; tenant ones in every tenant), deletes
them and the snapshots git does not track, and generates again — one clean migration instead of a trail of
small ones; ``-m`` migrates afterwards. Tracked (committed) migrations are never touched. Outside a git
checkout it refuses: it could not tell new files from reviewed ones.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from orchestrator import model
from orchestrator.errors import BadInputError
from orchestrator.migrations import files, runner


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


def roll_back_untracked(run: runner.Runner, repo: model.Repo) -> list[Path]:
    """Roll back the applied migrations git does not track; return the untracked files to delete."""
    new_files = untracked(run.root, repo.migrations_path) + untracked(run.root, repo.tenant_migrations_path)
    global_new = {files.parse(p).version for p in untracked(run.root, repo.migrations_path) if p.suffix == ".sql"}
    applied = [version for version, _, _ in run.status(repo).applied]
    newest_first = sorted(applied, reverse=True)
    count = 0
    while count < len(newest_first) and newest_first[count] in global_new:
        count += 1
    stranded = [v for v in newest_first[count:] if v in global_new]
    if stranded:
        raise BadInputError(
            f"{repo.name}: untracked migration {stranded[0]} is older than a committed one that "
            "is applied; roll back by hand"
        )
    if count:
        run.rollback(repo, step=count)
    tenant_new = [
        files.parse(p).version for p in untracked(run.root, repo.tenant_migrations_path) if p.suffix == ".sql"
    ]
    tracked = [m.version for m in run.tenant_migrations(repo) if m.version not in set(tenant_new)]
    if tenant_new and any(version > min(tenant_new) for version in tracked):
        raise BadInputError(
            f"{repo.name}: untracked tenant migration {min(tenant_new)} is older than a committed one; "
            "roll back by hand"
        )
    if tenant_new and repo.tenants is not None:
        from orchestrator.migrations import rollout
        from orchestrator.migrations.loop import Action

        results = run.tenant_rollout(repo).run(rollout.Options(action=Action.ROLLBACK, to=min(tenant_new) - 1))
        failed = [r.tenant for r in results if r.status == "failed"]
        if failed:
            raise BadInputError(f"{repo.name}: rolling back untracked tenant migrations failed in {', '.join(failed)}")
    return new_files + untracked(run.root, repo.snapshots_path)
