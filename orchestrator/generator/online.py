"""Split a scope's ordered operations into steps that never block the application on a table that holds data.

PostgreSQL's plain forms of some changes hold a lock that stops reads or writes for as long as a whole-table scan
or index build takes: ``ADD CONSTRAINT … FOREIGN KEY/CHECK`` validates every row under SHARE ROW EXCLUSIVE or
ACCESS EXCLUSIVE, ``SET NOT NULL`` scans under ACCESS EXCLUSIVE, ``CREATE INDEX`` blocks writes for the build.
On a table that already exists (it is in the previous snapshot), the generator writes the online forms instead,
as consecutive migrations:

1. **main** (one transaction): everything else, checks and foreign keys ``NOT VALID`` (no scan), and for each
   column that becomes NOT NULL a helper ``CHECK (column IS NOT NULL) NOT VALID``;
2. **concurrently**, one migration per statement (``transaction:false``; dbmate sends a section as one query,
   and two ``CREATE INDEX CONCURRENTLY`` in one query fail with 25001): ``CREATE [UNIQUE] INDEX CONCURRENTLY``;
3. **after_indexes** (one transaction), only when needed: ``ADD CONSTRAINT … UNIQUE USING INDEX`` for a UNIQUE
   constraint whose index step 2 built alone (no scan), and foreign keys whose referenced unique index is built in
   step 2 (PostgreSQL requires it to exist; NOT VALID, even on a new table, as the step is not the one that
   created it). Custom statements stay in step 1, in their place among the other changes;
4. **validate** (``transaction:false``, so the runner commits each statement on its own and resumes at the one
   that was interrupted): ``VALIDATE CONSTRAINT`` (SHARE UPDATE EXCLUSIVE: reads and writes go on), then
   ``SET NOT NULL`` (no scan: the validated helper proves it) and the helper's drop, then identities that
   needed the NOT NULL.

Tables created in the same migration are empty: they keep the plain forms in step 1. With ``online`` False
(``onlineSafe: false`` on the Repo) everything transactional stays in step 1, as before; only indexes the
manifest marks ``concurrently`` go to step 2.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

from orchestrator.generator import operations as ops

MAIN, CONCURRENTLY, AFTER_INDEXES, VALIDATE = "", "_concurrently", "_after_indexes", "_validate"
STEPS = (MAIN, CONCURRENTLY, AFTER_INDEXES, VALIDATE)
"""File-name suffixes of the steps, in the order they run; only CONCURRENTLY repeats (one file per index)."""


@dataclass(frozen=True)
class Step:
    """One migration file's operations."""

    suffix: str
    operations: tuple[ops.Operation, ...]

    @property
    def transactional(self) -> bool:
        return self.suffix in (MAIN, AFTER_INDEXES)


def steps(ordered: Sequence[ops.Operation], *, online: bool = True) -> list[Step]:
    """Return the migrations of one scope, in the order they run (see the module's doc)."""
    created = {op.table for op in ordered if isinstance(op, ops.CreateTable)}
    main: list[ops.Operation] = []
    later: list[ops.Operation] = []  # step 4, in order: validations, then NOT NULLs, then identities
    concurrent: list[ops.Operation] = []
    if online:
        ordered = _concurrent_indexes(ordered, created)
    built = {
        (op.table, op.index.columns)
        for op in ordered
        if isinstance(op, ops.CreateIndex) and op.concurrent and op.index.unique and op.index.where is None
    }
    after: list[ops.Operation] = []
    deferred_nulls = _deferred_nulls(ordered, created) if online else set()
    for op in ordered:
        if op.concurrent:
            concurrent.append(op)
        elif isinstance(op, ops.AttachUnique) and (op.table, op.index.columns) in built:
            after.append(op)  # the index it takes over is built in step 2
        elif isinstance(op, ops.AddForeignKey) and _needs_built_index(op, built):
            after.append(_not_valid(op, set(), True, later))  # not in the file that created its table: NOT VALID
        elif isinstance(op, ops.AlterNull) and (op.table, op.column) in deferred_nulls:
            helper = helper_name(op.ref.name, op.column)
            main.append(ops.NullCheck(op.ref, op.column, helper))
            later.append(ops.ValidateConstraint(op.ref, helper))
            later.append(replace(op, helper=helper))
        elif isinstance(op, ops.AlterIdentity) and (op.table, op.column) in deferred_nulls:
            later.append(op)  # ADD GENERATED … AS IDENTITY needs the NOT NULL first
        elif isinstance(op, ops.AddForeignKey | ops.AddCheck):
            main.append(_not_valid(op, created, online, later))
        else:
            main.append(op)
    validations = [op for op in later if isinstance(op, ops.ValidateConstraint)]
    result = [Step(MAIN, tuple(main))] if main else []
    result += [Step(CONCURRENTLY, (op,)) for op in concurrent]
    result += [Step(AFTER_INDEXES, tuple(after))] if after else []
    rest = [op for op in later if not isinstance(op, ops.ValidateConstraint)]
    result += [Step(VALIDATE, tuple(validations + rest))] if later else []
    return result


def helper_name(table: str, column: str) -> str:
    """The helper check's name: ``<table>_<column>_nn_helper`` (not PostgreSQL 18's own ``…_not_null`` name for
    NOT NULL constraints), shortened with a hash to PostgreSQL's 63 bytes."""
    name = f"{table}_{column}_nn_helper"
    if len(name.encode()) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name.encode()[:50].decode(errors='ignore')}_{digest}_nn"


def _concurrent_indexes(ordered: Sequence[ops.Operation], created: set[str]) -> list[ops.Operation]:
    """Indexes on existing tables are built CONCURRENTLY (identities and foreign-key indexes included); a UNIQUE
    constraint's index is built alone, then attached (``ADD CONSTRAINT … USING INDEX``, step 3)."""
    result: list[ops.Operation] = []
    for op in ordered:
        if not isinstance(op, ops.CreateIndex) or op.table in created:
            result.append(op)
            continue
        result.append(replace(op, index=replace(op.index.bare(), concurrently=True)))
        if op.index.constraint:
            result.append(ops.AttachUnique(op.ref, op.index))
    return result


def _deferred_nulls(ordered: Sequence[ops.Operation], created: set[str]) -> set[tuple[str, str]]:
    """(table, column) of the NOT NULLs on existing tables that go through a helper check.

    Columns of a primary key added in the same change are left alone: ADD PRIMARY KEY sets NOT NULL itself,
    and the online form's down (DROP NOT NULL before the key is gone) would fail.
    """
    in_new_keys = {(op.table, c) for op in ordered if isinstance(op, ops.AddPrimaryKey) for c in op.columns}
    return {
        (op.table, op.column)
        for op in ordered
        if isinstance(op, ops.AlterNull)
        and not op.allow_null
        and op.table not in created
        and (op.table, op.column) not in in_new_keys
    }


def _needs_built_index(op: ops.AddForeignKey, built: set[tuple[str, tuple[str, ...]]]) -> bool:
    """Does the key reference columns whose unique index is built concurrently in this change? PostgreSQL
    matches the index on the set of columns, in any order."""
    wanted = set(op.ref_columns)
    return any(table == _target(op) and set(columns) == wanted for table, columns in built)


def _target(op: ops.AddForeignKey) -> str:
    return str(ops.Ref(op.reference.schema, op.reference.table))


def _not_valid(
    op: ops.AddForeignKey | ops.AddCheck, created: set[str], online: bool, later: list[ops.Operation]
) -> ops.Operation:
    """On an existing table: the constraint NOT VALID now, validated in the last step."""
    if not online or op.table in created:
        return op
    name = op.reference.name if isinstance(op, ops.AddForeignKey) else op.check.name
    later.append(ops.ValidateConstraint(op.ref, name))
    return replace(op, valid=False)
