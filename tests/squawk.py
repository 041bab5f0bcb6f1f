"""squawk (https://squawkhq.com), the PostgreSQL migration linter, as an outside oracle for generated migrations.

The generator's other tests apply what it writes and read the live catalog back: they prove a migration builds
the right schema, not that it builds it without blocking the application. Which lock a statement takes, and
for how long, is what squawk knows: a plain ``CREATE INDEX`` on an existing table blocks writes, a constraint
added without ``NOT VALID`` scans the table under a lock, ``SET NOT NULL`` scans it under ACCESS EXCLUSIVE
unless a validated ``CHECK (c IS NOT NULL)`` already proves it. An outside tool written by other people is a
judge the generator cannot agree with by construction.

squawk reads SQL, not dbmate files, so :func:`lint` hands it the UP section only, with every other line
blanked: the line numbers squawk reports are then the file's own. A transactional section (a header without
``transaction:false``) is linted with ``--assume-in-transaction``, as dbmate and the runner wrap it in one
transaction: ``CREATE INDEX CONCURRENTLY`` there is a finding, and tables the file itself creates are known
to be new (their plain indexes and constraints are not findings). The section header is parsed here, the way
dbmate reads it, not with ``orchestrator.migrations.files``: the oracle shares no code with what it judges.

squawk 2.70 facts this relies on: ``--reporter json`` prints a JSON array of objects with ``rule_name``,
``message``, ``help``, ``level`` (``Warning``; ``Error`` for ``syntax-error``), ``file`` and 0-based
``line``/``column``/``line_end``/``column_end``; the exit code is 0 without findings and 1 with some (also for
other failures, which print no JSON). It reads stdin when given no path (``--stdin-filepath`` names it in the
report). Without ``--config`` it looks for ``.squawk.toml`` from the working directory upwards; the oracle
always passes ``tests/squawk.toml`` so no configuration lying around changes its verdict. Its blind spot:
``ban-concurrent-index-creation-in-transaction`` is reported only in files of two statements or more, so a
lone ``CREATE INDEX CONCURRENTLY`` under a transactional header passes squawk (and fails at run time).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CONFIG = Path(__file__).resolve().parent / "squawk.toml"

BLOCKING = frozenset(
    {
        "constraint-missing-not-valid",  # ADD CONSTRAINT without NOT VALID on an existing table: a locked scan
        "adding-foreign-key-constraint",  # a validated foreign key: SHARE ROW EXCLUSIVE on both tables for the scan
        "adding-not-nullable-field",  # SET NOT NULL without a validated CHECK (c IS NOT NULL): ACCESS EXCLUSIVE scan
        "require-concurrent-index-creation",  # CREATE INDEX on an existing table: writes blocked for the build
        "changing-column-type",  # ALTER COLUMN TYPE: ACCESS EXCLUSIVE, often a rewrite
        "ban-concurrent-index-creation-in-transaction",  # CONCURRENTLY in a transaction: the migration fails
    }
)
"""The rules that mean a migration blocks reads or writes of an existing table (or cannot run at all)."""

_HEADER = re.compile(r"^--\s*migrate:(up|down)(?:\s+(.*))?$")


class SquawkError(Exception):
    """squawk did not judge the file: not installed, failed, or could not parse the SQL."""


@dataclass(frozen=True)
class Finding:
    rule: str
    message: str
    line: int
    """1-based, in the migration file."""


@dataclass(frozen=True)
class UpSection:
    text: str
    """The file with every line outside the UP section's SQL blanked, so line numbers are the file's."""
    transaction: bool


def binary() -> str:
    """The squawk of this interpreter's virtualenv (requirements-dev.lock pins it), else the one on PATH."""
    beside = Path(sys.executable).with_name("squawk")
    found = str(beside) if beside.exists() else shutil.which("squawk")
    if found is None:
        raise SquawkError("squawk is not installed: pip install -r requirements-dev.lock (squawk-cli)")
    return found


def up_section(text: str) -> UpSection:
    """The UP section of a dbmate migration, as dbmate reads it: from ``-- migrate:up`` to ``-- migrate:down``."""
    kept: list[str] = []
    current: str | None = None
    transaction: bool | None = None
    for line in text.splitlines():
        header = _HEADER.match(line.strip())
        if header:
            current = header.group(1)
            if current == "up":
                transaction = "transaction:false" not in (header.group(2) or "").split()
            kept.append("")
        else:
            kept.append(line if current == "up" else "")
    if transaction is None:
        raise SquawkError("no '-- migrate:up' section")
    return UpSection("\n".join(kept) + "\n", transaction)


def lint(path: Path, *, pg_version: str | None = None, text: str | None = None) -> list[Finding]:
    """Every squawk finding in the UP section of the migration at ``path`` (or ``text``), in file order.

    ``pg_version`` (``"15.10"``): what the migration will run on; some rules depend on it. A syntax error
    raises :class:`SquawkError`: the oracle cannot vouch for SQL it could not read.
    """
    section = up_section(path.read_text() if text is None else text)
    command = [binary(), "--config", str(CONFIG), "--reporter", "json", "--stdin-filepath", str(path)]
    command.append("--assume-in-transaction" if section.transaction else "--no-assume-in-transaction")
    if pg_version:
        command += ["--pg-version", pg_version]
    proc = subprocess.run(command, input=section.text, capture_output=True, text=True, timeout=60, check=False)
    try:
        reported = json.loads(proc.stdout) if proc.returncode in (0, 1) else None
    except json.JSONDecodeError:
        reported = None
    if not isinstance(reported, list):
        raise SquawkError(f"squawk failed on {path} (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    findings = [Finding(str(r["rule_name"]), str(r["message"]), int(r["line"]) + 1) for r in reported]
    broken = [f for f in findings if f.rule == "syntax-error"]
    if broken:
        raise SquawkError(f"squawk could not parse {path}:\n{describe(path, broken, text)}")
    return sorted(findings, key=lambda f: (f.line, f.rule))


def blocking(findings: Iterable[Finding]) -> list[Finding]:
    """The findings of :data:`BLOCKING` rules."""
    return [f for f in findings if f.rule in BLOCKING]


def describe(path: Path, findings: Iterable[Finding], text: str | None = None) -> str:
    """One line per finding, with the file's line it points at, for assertion messages."""
    lines = (path.read_text() if text is None else text).splitlines()

    def source(line: int) -> str:
        return lines[line - 1].strip() if 0 < line <= len(lines) else ""

    return "\n".join(f"  {path.name}:{f.line}: {f.rule}: {f.message}\n      {source(f.line)}" for f in findings)


def server_version(version_num: int) -> str:
    """``server_version_num`` (150010) as squawk's ``--pg-version`` wants it (``15.10``)."""
    return f"{version_num // 10000}.{version_num % 10000}"
