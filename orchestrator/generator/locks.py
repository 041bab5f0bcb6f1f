"""What each operation does to the application while it runs: the lock it takes and whether it scans or rewrites.

The generated header prints this next to every operation, so a reviewer sees at a glance what a migration costs
on a busy table, without knowing PostgreSQL's lock table by heart (the levels are those of PostgreSQL's
documentation, "Explicit Locking", and of ``ALTER TABLE``'s notes). On a table created in the same migration
nothing is waiting for it: the note says so.
"""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.generator import operations as ops

_AE = "ACCESS EXCLUSIVE"
_SUE = "SHARE UPDATE EXCLUSIVE"
_BRIEF = "brief, no scan"


def note(op: ops.Operation, created: set[str], rewrites: Callable[[ops.Operation], bool]) -> str:
    """``lock: …; effect`` for ``op``; ``created`` are the tables created in the same migration, ``rewrites``
    tells whether a type change or added column rewrites the table."""
    if isinstance(op, ops.CreateExtension | ops.CreateSchema):
        return "no table lock"
    if op.table in created:
        return "new table: nothing waits on it"
    if isinstance(op, ops.RunStatement):
        return "your SQL: its locks are its own"
    lock, effect = _lock(op, rewrites)
    return f"lock {lock}; {effect}"


def _lock(op: ops.Operation, rewrites: Callable[[ops.Operation], bool]) -> tuple[str, str]:
    if isinstance(op, ops.AddColumn | ops.AlterType):
        if rewrites(op):
            return _AE, "REWRITES the table (reads and writes wait for the whole rewrite)"
        if isinstance(op, ops.AlterType):
            return _AE, "no rewrite; a CHECK on the column is re-checked by a scan, its indexes may be rebuilt"
        return _AE, _BRIEF
    if isinstance(op, ops.AlterNull):
        if op.allow_null:
            return _AE, _BRIEF
        if op.helper:
            return _AE, "brief, no scan (the validated check proves it)"
        return _AE, "SCANS the table (reads and writes wait)"
    if isinstance(op, ops.AttachUnique):
        return _AE, "brief, no scan (the constraint takes over the built unique index)"
    if isinstance(op, ops.DetachUnique):
        return _AE, "drops the constraint, then REBUILDS its index (writes wait for the build)"
    if isinstance(op, ops.CreateIndex) and op.index.constraint:
        return _AE, "SCANS the table to build the constraint's index (reads and writes wait)"
    if isinstance(op, ops.CreateIndex):
        if op.index.concurrently:
            return _SUE, "scans the table, reads and writes go on"
        return "SHARE", "SCANS the table to build the index (writes wait)"
    if isinstance(op, ops.DropIndex):
        return (_SUE, "reads and writes go on") if op.concurrently else (_AE, _BRIEF)
    if isinstance(op, ops.AddForeignKey):
        if op.valid:
            return "SHARE ROW EXCLUSIVE on both tables", "SCANS the table to validate (writes wait)"
        return "SHARE ROW EXCLUSIVE on both tables", "brief, NOT VALID (validated later)"
    if isinstance(op, ops.AddCheck):
        if op.valid:
            return _AE, "SCANS the table to validate (reads and writes wait)"
        return _AE, "brief, NOT VALID (validated later)"
    if isinstance(op, ops.NullCheck):
        return _AE, "brief, NOT VALID (validated later)" if op.add else _BRIEF
    if isinstance(op, ops.ValidateConstraint):
        return _SUE, "scans the table, reads and writes go on"
    if isinstance(op, ops.AddPrimaryKey):
        return _AE, "SCANS the table to build the key (reads and writes wait)"
    if isinstance(op, ops.RenameIndex):
        return _SUE, _BRIEF
    return _AE, _BRIEF
