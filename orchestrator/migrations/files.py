"""Read dbmate-style migration files: ``-- migrate:up`` / ``-- migrate:down`` sections, statements split.

A section header may carry ``transaction:false``; such a section runs statement by statement outside a
transaction, so it must be split exactly, including statements that contain semicolons inside quotes,
dollar-quoted bodies (``DO $$ ... $$``) or comments. ``split`` is a small lexer for that; it never
interprets the SQL beyond finding where each statement ends.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import BadInputError

_SECTION = re.compile(r"^--\s*migrate:(up|down)\b(.*)$")
_FILE = re.compile(r"^(\d{14})_([A-Za-z0-9_]+)\.sql$")
_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


@dataclass(frozen=True)
class Statement:
    sql: str
    line: int  # in the file, for error messages


@dataclass(frozen=True)
class Section:
    sql: str
    transaction: bool
    line: int  # where the section's SQL starts in the file, for error messages

    @property
    def statements(self) -> list[str]:
        return split(self.sql)

    def located(self) -> list[Statement]:
        """The statements with the file line each starts on."""
        return list(self._located)

    def script(self) -> str:
        """The statements as one query text, each ended on a line of its own (a statement may end in a comment)."""
        return "\n;\n".join(s.sql for s in self._located)

    @functools.cached_property
    def _located(self) -> tuple[Statement, ...]:
        # split once: a tenant rollout runs the same section in every schema
        return tuple(Statement(text, self.line + line - 1) for text, line in split_located(self.sql))


@dataclass(frozen=True)
class MigrationFile:
    version: int
    name: str
    path: Path
    up: Section
    down: Section
    text: str

    @property
    def checksum(self) -> str:
        """sha256 of the file's text: an applied migration whose file changes is reported."""
        return hashlib.sha256(self.text.encode()).hexdigest()


def collection(stored: Mapping[str, str]) -> list[MigrationFile]:
    """Every migration of a directory, by version, from path -> text (a store's listing of the directory)."""
    found = [parse(Path(path), text) for path, text in sorted(stored.items()) if path.endswith(".sql")]
    versions: dict[int, Path] = {}
    for migration in found:
        if migration.version in versions:
            raise BadInputError(f"{migration.path}: version {migration.version} is also {versions[migration.version]}")
        versions[migration.version] = migration.path
    return sorted(found, key=lambda m: m.version)


def parse(path: Path, text: str | None = None) -> MigrationFile:
    """Parse a migration file; raise ``BadInputError`` naming the file when it is not one."""
    match = _FILE.match(path.name)
    if not match:
        raise BadInputError(f"{path}: migration files are named <14-digit version>_<name>.sql")
    content = path.read_text() if text is None else text
    sections: dict[str, tuple[list[str], bool, int]] = {}
    current: str | None = None
    for number, line in enumerate(content.splitlines(), start=1):
        header = _SECTION.match(line.strip())
        if header:
            current = header.group(1)
            if current in sections:
                raise BadInputError(f"{path}:{number}: a second '-- migrate:{current}' section")
            sections[current] = ([], "transaction:false" not in header.group(2), number + 1)
        elif current is not None:
            sections[current][0].append(line)
    if "up" not in sections:
        raise BadInputError(f"{path}: no '-- migrate:up' section")
    up, down = (_section(*sections[k]) if k in sections else Section("", True, 0) for k in ("up", "down"))
    return MigrationFile(int(match.group(1)), match.group(2), path, up, down, content)


def _section(lines: list[str], transaction: bool, line: int) -> Section:
    while lines and not lines[0].strip():  # keep line numbers right: drop leading blank lines one by one
        lines = lines[1:]
        line += 1
    return Section("\n".join(lines).rstrip() + "\n", transaction, line)


def split(sql: str) -> list[str]:
    """Split SQL text into statements (without the final semicolon), skipping empty ones and lone comments."""
    return [text for text, _ in split_located(sql)]


def split_located(sql: str) -> list[tuple[str, int]]:
    """Like ``split``, with the 1-based line of ``sql`` each statement's first code is on."""
    statements: list[str] = []
    start = i = 0
    length = len(sql)
    while i < length:
        char = sql[i]
        if char in ("'", '"'):
            i = _skip_quoted(sql, i, char)
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = length if end < 0 else end + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = length if end < 0 else end + 2
        elif char == "$" and (tag := _DOLLAR.match(sql, i)):
            end = sql.find(tag.group(0), tag.end())
            i = length if end < 0 else end + len(tag.group(0))
        elif char == ";":
            statements.append(sql[start:i])
            i += 1
            start = i
        else:
            i += 1
    statements.append(sql[start:])
    result = []
    offset = 0
    for raw in statements:
        if _has_code(raw):
            lead = len(raw) - len(raw.lstrip())
            result.append((raw.strip(), sql.count("\n", 0, offset + lead) + 1))
        offset += len(raw) + 1
    return result


def _skip_quoted(sql: str, i: int, quote: str) -> int:
    i += 1
    while i < len(sql):
        if sql[i] == quote:
            if i + 1 < len(sql) and sql[i + 1] == quote:  # a doubled quote is an escaped one
                i += 2
                continue
            return i + 1
        i += 1
    return i


def _has_code(statement: str) -> bool:
    without_comments = re.sub(r"--[^\n]*|/\*.*?\*/", "", statement, flags=re.S)
    return bool(without_comments.strip())
