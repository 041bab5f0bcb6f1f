"""What a run works on: a *target* (a repo's database, or one tenant schema in it) and a *direction*.

Both are small value types shared by the run loop, the executor and the events, so that "up"/"down" and
"global"/"tenant" are never strings compared in several places.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from orchestrator import model
from orchestrator.migrations import files


class Direction(enum.Enum):
    UP = "up"
    DOWN = "down"

    @property
    def done(self) -> str:
        """The verb for a migration run this way: ``applied`` or ``rolled back``."""
        return "applied" if self is Direction.UP else "rolled back"

    def section(self, migration: files.MigrationFile) -> files.Section:
        return migration.up if self is Direction.UP else migration.down


class Scope(enum.Enum):
    GLOBAL = "global"
    TENANT = "tenant"


@dataclass(frozen=True)
class Target:
    """Where migrations are applied: ``schema`` holds its ``schema_migrations``; a tenant sets search_path."""

    repo: model.Repo
    database: str
    schema: str
    scope: Scope

    @property
    def name(self) -> str:
        return self.repo.name if self.scope is Scope.GLOBAL else f"{self.repo.name}/{self.schema}"

    @property
    def tenant(self) -> str | None:
        """The tenant schema, or None for the repo's global target."""
        return self.schema if self.scope is Scope.TENANT else None
