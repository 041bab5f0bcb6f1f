"""The error hierarchy, and the located ``Problem`` every manifest error is reported as.

Every failure a user can cause maps to one exit code (DESIGN.md): bad input is 2, a failure while doing the
work is 1. The CLI catches ``OrchestratorError`` and uses ``exit_code``; anything else is a bug and shows a
traceback. Manifest errors are collected, never raised one at a time, so a user sees all of them at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


@dataclass(frozen=True, order=True)
class Problem:
    """One located error in the manifests: ``file:line:column: field: message``."""

    file: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"

    def as_dict(self) -> dict[str, str | int]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "field": self.field,
            "message": self.message,
        }


class OrchestratorError(Exception):
    """Base of every error the CLI turns into a message and an exit code."""

    exit_code = EXIT_FAILED


class BadInputError(OrchestratorError):
    """The user asked for something that cannot be done as asked (unknown repo, bad flag value, ...)."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(BadInputError):
    """The manifests are invalid; carries every problem found, sorted by file and line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(set(problems))
        count = len(self.problems)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} in the manifests")


class DatabaseError(OrchestratorError):
    """A database could not be reached or answered with an error."""


def display_path(path: Path, base: Path | None = None) -> str:
    """Return ``path`` relative to ``base`` (or the cwd) when it lies below it, else as given."""
    relative = os.path.relpath(path.absolute(), (base or Path.cwd()).absolute())
    return str(path) if relative.startswith("..") else relative
