"""Plan what to run: a pure function of the migration files and what a target has applied.

Ecto's order semantics by default: every pending migration is applied in version order, including one older
than the newest applied (a branch merged late); ``strict`` refuses that instead. A file whose checksum differs
from the one recorded when it was applied blocks ``migrate`` until it is restored or ``repair`` records the new
sum. Rollback takes the newest applied migrations, from their files or, when a file is gone, from the text
stored when it was applied.

A row recorded under another name than the file of its version is not an edit but a *version conflict*: two
migrations (typically of two repos sharing one database, hence one ``schema_migrations``) got the same version.
Nothing is planned and nothing is repaired while one exists: ``repair`` would otherwise record this file's
checksum onto the other migration's row and mark a migration that never ran as applied. A target whose
``schema_migrations`` is another tool's (``recorder.ForeignTable``) is refused the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import OrchestratorError
from orchestrator.migrations import files
from orchestrator.migrations.recorder import Applied, ForeignTable


class PlanError(OrchestratorError):
    """The files and the database disagree in a way that needs a person (edited file, order, missing text)."""


@dataclass(frozen=True)
class Edited:
    migration: files.MigrationFile
    recorded: str


@dataclass(frozen=True)
class Conflict:
    migration: files.MigrationFile
    recorded: str  # the name the version's row was recorded under


def conflicts(migrations: Sequence[files.MigrationFile], applied: Mapping[int, Applied]) -> list[Conflict]:
    """Files whose version is recorded under another name (rows without a name, from Ecto, are trusted)."""
    return [
        Conflict(m, str(row.name))
        for m in migrations
        if (row := applied.get(m.version)) is not None and row.name and row.name != m.name
    ]


def check_conflicts(migrations: Sequence[files.MigrationFile], applied: Mapping[int, Applied]) -> None:
    """Raise PlanError naming every version conflict (see the module's doc)."""
    found = conflicts(migrations, applied)
    if not found:
        return
    newest = max([*applied, *(m.version for m in migrations)])
    each = "; ".join(
        f"version {c.migration.version} is recorded as applied under the name {c.recorded!r}, but its file here "
        f"is {c.migration.path} (name {c.migration.name!r})"
        for c in found
    )
    raise PlanError(
        f"version conflict: {each}. Versions must be unique per database: two migrations share a version (another "
        "repo's on the same database, or a renamed file), so this file is neither applied nor edited here: "
        f"nothing was run, and 'repair' will not record it. Give the file a new version above {newest} "
        "(rename it), or restore the name of a renamed file"
    )


def _check_foreign(applied: Mapping[int, Applied]) -> None:
    if isinstance(applied, ForeignTable):
        raise PlanError(applied.reason)


def edited(migrations: Sequence[files.MigrationFile], applied: Mapping[int, Applied]) -> list[Edited]:
    """Applied migrations whose file changed since (rows without a checksum, from Ecto, are trusted).

    Raises PlanError on a version conflict: such a row is another migration's, never an edit to repair.
    """
    check_conflicts(migrations, applied)
    return [
        Edited(m, str(applied[m.version].checksum))
        for m in migrations
        if m.version in applied and applied[m.version].checksum and applied[m.version].checksum != m.checksum
    ]


def pending(
    migrations: Sequence[files.MigrationFile],
    applied: Mapping[int, Applied],
    *,
    to: int | None = None,
    step: int | None = None,
    strict: bool = False,
) -> list[files.MigrationFile]:
    """Return the migrations to apply, in order; raise PlanError when an edited file, a version conflict or
    another tool's bookkeeping table blocks them."""
    _check_foreign(applied)
    changed = edited(migrations, applied)
    if changed:
        names = ", ".join(str(e.migration.path) for e in changed)
        raise PlanError(
            f"applied migrations were edited since: {names}; restore them, or record the new "
            "checksums with 'orchestrator repair' (with --tenants for tenant migrations) if the edit was deliberate"
        )
    todo = [m for m in migrations if m.version not in applied]
    if strict and todo and applied and todo[0].version < max(applied):
        raise PlanError(
            f"{todo[0].path} is older than the newest applied version {max(applied)} (--strict-version-order)"
        )
    if to is not None:
        todo = [m for m in todo if m.version <= to]
    return todo[:step] if step is not None else todo


def rollback(
    migrations: Sequence[files.MigrationFile],
    applied: Mapping[int, Applied],
    stored: Mapping[int, tuple[str, str]],
    *,
    step: int | None = None,
    to: int | None = None,
) -> list[files.MigrationFile]:
    """Return the migrations to roll back, newest first (default: one); never another migration's row."""
    _check_foreign(applied)
    check_conflicts(migrations, applied)
    versions = sorted(applied, reverse=True)
    if to is not None:
        versions = [v for v in versions if v > to]
    else:
        versions = versions[: step if step is not None else 1]
    by_version = {m.version: m for m in migrations}
    result = []
    for version in versions:
        if version in by_version:
            result.append(by_version[version])
        elif version in stored:
            name, text = stored[version]
            result.append(files.parse(Path(f"{version}_{name}.sql"), text))
        else:
            raise PlanError(f"version {version} is applied but neither its file nor its stored text exists")
    return result
