"""Typed events of a run, and the sinks that show them.

The run loop and the tenant fan-out say what happens (a migration applied, an attempt retried, a resume, a
lock waited for, a silent connection abandoned, a failure with its SQLSTATE, file and line) by emitting events
to a sink; they never print. The CLI renders them as text (or as JSON log lines with ``--json``); the daemon
logs them through structlog with the repo, tenant and migration version bound, at the event's level: failures
at error, retries and abandoned connections at warning, the rest at info.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from psycopg import sql

from orchestrator.migrations import files
from orchestrator.migrations.target import Direction, Target

if TYPE_CHECKING:
    from orchestrator.migrations.rollout import TenantResult

INFO, WARNING, ERROR = logging.INFO, logging.WARNING, logging.ERROR


@dataclass(frozen=True)
class Event:
    """Something that happened at one target; ``name`` is the event's fixed log name."""

    name: ClassVar[str] = "event"
    level: ClassVar[int] = INFO
    target: Target

    def context(self) -> dict[str, Any]:
        """What a log line is bound to: repo, tenant (None for the global target) and version when known."""
        return {"repo": self.target.repo.name, "tenant": self.target.tenant}

    def fields(self) -> dict[str, Any]:
        """The event's own values, for a structured log line."""
        return {}

    def text(self) -> str | None:
        """One or more human lines, or None when the event has nothing to say on a terminal."""
        return None


@dataclass(frozen=True)
class _AboutMigration(Event):
    migration: files.MigrationFile

    def context(self) -> dict[str, Any]:
        return super().context() | {"version": self.migration.version}


@dataclass(frozen=True)
class MigrationDone(_AboutMigration):
    name: ClassVar[str] = "migration.done"
    direction: Direction = Direction.UP
    ms: int = 0

    def fields(self) -> dict[str, Any]:
        return {"file": self.migration.path.name, "direction": self.direction.value, "ms": self.ms}

    def text(self) -> str:
        return f"{self.target.name}: {self.direction.done} {self.migration.path.name} ({self.ms} ms)"


@dataclass(frozen=True)
class Planned(_AboutMigration):
    """A dry run: what would run, with its SQL."""

    name: ClassVar[str] = "migration.planned"
    direction: Direction = Direction.UP

    def statements(self) -> list[str]:
        section = self.direction.section(self.migration)
        shown = [f"{statement};" for statement in section.statements]
        tenant = self.target.tenant
        if tenant is not None:
            path = sql.SQL("SET search_path TO {}, public;").format(sql.Identifier(tenant)).as_string(None)
            shown.insert(0, path)
        return shown

    def fields(self) -> dict[str, Any]:
        section = self.direction.section(self.migration)
        return {
            "file": self.migration.path.name,
            "direction": self.direction.value,
            "transaction": section.transaction,
            "sql": self.statements(),
        }

    def text(self) -> str:
        section = self.direction.section(self.migration)
        mode = "" if section.transaction else ", outside a transaction"
        header = f"-- {self.target.name}: {self.migration.path.name} ({self.direction.value}{mode})"
        return "\n".join([header, *self.statements()])


@dataclass(frozen=True)
class NothingToDo(Event):
    name: ClassVar[str] = "target.current"
    direction: Direction = Direction.UP

    def text(self) -> str:
        return f"{self.target.name}: {'up to date' if self.direction is Direction.UP else 'nothing to roll back'}"


@dataclass(frozen=True)
class Retrying(Event):
    name: ClassVar[str] = "attempt.retrying"
    level: ClassVar[int] = WARNING
    attempt: int = 0
    error: str = ""
    sqlstate: str | None = None

    def fields(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "error": self.error, "sqlstate": self.sqlstate}

    def text(self) -> str:
        return f"{self.target.name}: attempt {self.attempt} failed ({self.error}); retrying"


@dataclass(frozen=True)
class Resumed(_AboutMigration):
    name: ClassVar[str] = "migration.resumed"
    statement: int = 0
    of: int = 0

    def fields(self) -> dict[str, Any]:
        return {"file": self.migration.path.name, "statement": self.statement, "of": self.of}

    def text(self) -> str:
        return f"{self.target.name}: resuming {self.migration.path.name} at statement {self.statement} of {self.of}"


@dataclass(frozen=True)
class LockWaited(Event):
    name: ClassVar[str] = "lock.waited"
    ms: int = 0

    def fields(self) -> dict[str, Any]:
        return {"ms": self.ms}

    def text(self) -> str:
        return f"{self.target.name}: waited {self.ms} ms for another runner's lock"


@dataclass(frozen=True)
class Abandoned(Event):
    """A connection went silent (its server session vanished or stopped answering); the attempt was given up."""

    name: ClassVar[str] = "connection.abandoned"
    level: ClassVar[int] = WARNING
    pid: int = 0
    reason: str = ""

    def fields(self) -> dict[str, Any]:
        return {"backend_pid": self.pid, "reason": self.reason}

    def text(self) -> str:
        return f"{self.target.name}: abandoned a silent connection (backend {self.pid}: {self.reason})"


@dataclass(frozen=True)
class Repaired(_AboutMigration):
    name: ClassVar[str] = "migration.repaired"
    what: str = "checksum"  # or "progress"

    def fields(self) -> dict[str, Any]:
        return {"file": self.migration.path.name, "what": self.what}

    def text(self) -> str:
        if self.what == "progress":
            return f"{self.target.name}: forgot the partial progress of an older text of {self.migration.path.name}"
        return f"{self.target.name}: recorded the new checksum of {self.migration.path.name}"


@dataclass(frozen=True)
class Failed(Event):
    name: ClassVar[str] = "target.failed"
    level: ClassVar[int] = ERROR
    error: str = ""
    sqlstate: str | None = None
    file: str | None = None
    line: int | None = None
    attempts: int = 0

    def fields(self) -> dict[str, Any]:
        return {
            "error": self.error,
            "sqlstate": self.sqlstate,
            "file": self.file,
            "line": self.line,
            "attempts": self.attempts,
        }

    def text(self) -> None:
        return None  # a terminal shows the failure once, as the command's error (or in the tenant table)


@dataclass(frozen=True)
class TenantFinished(Event):
    """One tenant's outcome in a rollout (``result`` is a ``rollout.TenantResult``)."""

    result: TenantResult = None  # type: ignore[assignment]  # always given; a default only for field order

    def fields(self) -> dict[str, Any]:
        return {k: v for k, v in self.result.as_dict().items() if k != "tenant"}

    @property
    def event_name(self) -> str:
        return "tenant." + str(self.result.status).replace(" ", "_")


@dataclass(frozen=True)
class RolloutNote(Event):
    """Something about a rollout as a whole: a canary failed, maxFailures reached, a stop requested."""

    name: ClassVar[str] = "rollout.stopped"
    level: ClassVar[int] = WARNING
    message: str = ""

    def fields(self) -> dict[str, Any]:
        return {"message": self.message}

    def text(self) -> str:
        return f"{self.target.repo.name}: {self.message}"


Sink = Callable[[Event], None]


def discard(_: Event) -> None:
    """The sink of a caller that wants no events."""


def level_of(event: Event) -> int:
    if isinstance(event, TenantFinished):
        return ERROR if event.result.status == "failed" else INFO
    return event.level


def name_of(event: Event) -> str:
    return event.event_name if isinstance(event, TenantFinished) else event.name


@dataclass
class LogSink:
    """Events as structured log lines (structlog): name, level, bound repo/tenant/version, the event's fields."""

    logger: Any
    extra: dict[str, Any] = field(default_factory=dict)

    def __call__(self, event: Event) -> None:
        bound = self.logger.bind(**{k: v for k, v in event.context().items() if v is not None}, **self.extra)
        bound.log(level_of(event), name_of(event), **event.fields())


@dataclass
class LazyLogSink:
    """A ``LogSink`` whose logging (structlog) is set up at the first event: a run with nothing to say (a
    no-op) does not pay for it."""

    name: str
    json: bool | None = None
    _sink: LogSink | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)  # workers emit from their threads

    def __call__(self, event: Event) -> None:
        with self._lock:
            if self._sink is None:
                from orchestrator import logs

                logs.configure(json=self.json)
                self._sink = LogSink(logs.get(self.name))
        self._sink(event)


@dataclass
class TextSink:
    """Events as human lines (``out`` is ``print`` in the CLI); events without text are skipped."""

    out: Callable[[str], None] = print

    def __call__(self, event: Event) -> None:
        text = event.text()
        if text is not None:
            self.out(text)


@dataclass
class Collect:
    """Keeps every event (tests, and callers that report what happened afterwards)."""

    events: list[Event] = field(default_factory=list)

    def __call__(self, event: Event) -> None:
        self.events.append(event)
