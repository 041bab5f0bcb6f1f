"""Operations: small immutable values, one per schema change, each knowing its exact reverse.

An operation that removes something carries the whole definition it removes (``DropTable`` holds the table,
``DropColumn`` the attribute), so its reverse can put it back: the down migration is the up list reversed,
each operation reversed (Alembic's ``reverse()``, Django's immutable operations). ``PHASE`` fixes where an
operation goes in the up direction (see ``order``); ``describe()`` is the line users see.

Operations that cannot be undone exactly say so with ``reverse() -> None`` (creating an extension or a
schema: we cannot know whether it existed before, so the down leaves it in place).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

from orchestrator import model


@dataclass(frozen=True)
class Ref:
    """A table as migrations name it: ``schema`` None means unqualified (a tenant table, via search_path)."""

    schema: str | None
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


@dataclass(frozen=True)
class IndexSpec:
    """Any index we create: an identity, a custom index or a foreign-key column index."""

    name: str
    columns: tuple[str, ...]
    kind: str = "index"
    unique: bool = False
    using: str | None = None
    where: str | None = None
    include: tuple[str, ...] = ()
    nulls_distinct: bool = True
    concurrently: bool = False
    constraint: bool = False
    """A UNIQUE constraint of the same name, backed by this index (an identity with ``constraint: true``)."""
    deferrable: model.Deferrable = "no"

    def same_definition(self, other: IndexSpec) -> bool:
        """Return True when only the names differ (then a rename is enough)."""
        return self.same_index(other) and (self.constraint, self.deferrable) == (other.constraint, other.deferrable)

    def same_index(self, other: IndexSpec) -> bool:
        """Return True when the indexes are built the same (a constraint may or may not be attached)."""
        return (self.columns, self.unique, self.using, self.where, self.include, self.nulls_distinct) == (
            other.columns,
            other.unique,
            other.using,
            other.where,
            other.include,
            other.nulls_distinct,
        )

    def bare(self) -> IndexSpec:
        """The unique index alone, without its constraint."""
        return replace(self, constraint=False, deferrable="no")


class Operation:
    """Base of every operation."""

    PHASE: ClassVar[int] = 0
    destructive: ClassVar[bool] = False

    @property
    def table(self) -> str:
        """The table the operation belongs to, for grouping and messages ('' when none)."""
        ref = getattr(self, "ref", None)
        return str(ref) if ref is not None else ""

    @property
    def concurrent(self) -> bool:
        """True when the operation must run outside a transaction (CREATE INDEX CONCURRENTLY)."""
        return False

    def reverse(self) -> Operation | None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


# -- repo-level ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateExtension(Operation):
    PHASE: ClassVar[int] = 0
    name: str

    def reverse(self) -> None:
        return None  # it may have been installed before; the down leaves it

    def describe(self) -> str:
        return f"+ extension {self.name}"


@dataclass(frozen=True)
class CreateSchema(Operation):
    PHASE: ClassVar[int] = 0
    name: str

    def reverse(self) -> None:
        return None  # it may hold other objects; the down leaves it

    def describe(self) -> str:
        return f"+ schema {self.name}"


# -- tables --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateTable(Operation):
    """CREATE TABLE with columns and primary key; indexes, checks and FKs are operations of their own."""

    PHASE: ClassVar[int] = 7
    ref: Ref
    definition: model.Table = field(compare=False)

    def reverse(self) -> DropTable:
        return DropTable(self.ref, self.definition)

    def describe(self) -> str:
        return f"+ table {self.ref} ({len(self.definition.attributes)} columns)"


@dataclass(frozen=True)
class DropTable(Operation):
    PHASE: ClassVar[int] = 11
    destructive: ClassVar[bool] = True
    ref: Ref
    definition: model.Table = field(compare=False)

    def reverse(self) -> CreateTable:
        return CreateTable(self.ref, self.definition)

    def describe(self) -> str:
        return f"- table {self.ref} (destructive: its rows are lost)"


@dataclass(frozen=True)
class RenameTable(Operation):
    PHASE: ClassVar[int] = 5
    ref: Ref  # the old name
    new_name: str

    def reverse(self) -> RenameTable:
        return RenameTable(Ref(self.ref.schema, self.new_name), self.ref.name)

    def describe(self) -> str:
        return f"~ table {self.ref} renamed to {self.new_name}"


@dataclass(frozen=True)
class MoveTable(Operation):
    PHASE: ClassVar[int] = 5
    ref: Ref  # the old schema
    new_schema: str

    def reverse(self) -> MoveTable:
        return MoveTable(Ref(self.new_schema, self.ref.name), str(self.ref.schema))

    def describe(self) -> str:
        return f"~ table {self.ref} moved to schema {self.new_schema}"


# -- columns -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddColumn(Operation):
    PHASE: ClassVar[int] = 8
    ref: Ref
    attribute: model.Attribute

    def reverse(self) -> DropColumn:
        return DropColumn(self.ref, self.attribute)

    def describe(self) -> str:
        return f"+ column {self.ref}.{self.attribute.name} {self.attribute.type}"


@dataclass(frozen=True)
class DropColumn(Operation):
    PHASE: ClassVar[int] = 10
    destructive: ClassVar[bool] = True
    ref: Ref
    attribute: model.Attribute

    def reverse(self) -> AddColumn:
        return AddColumn(self.ref, self.attribute)

    def describe(self) -> str:
        return f"- column {self.ref}.{self.attribute.name} (destructive: its values are lost)"


@dataclass(frozen=True)
class RenameColumn(Operation):
    PHASE: ClassVar[int] = 6
    ref: Ref
    old: str
    new: str

    def reverse(self) -> RenameColumn:
        return RenameColumn(self.ref, self.new, self.old)

    def describe(self) -> str:
        return f"~ column {self.ref}.{self.old} renamed to {self.new}"


@dataclass(frozen=True)
class AlterType(Operation):
    PHASE: ClassVar[int] = 9
    ref: Ref
    column: str
    old: str
    new: str

    def reverse(self) -> AlterType:
        return AlterType(self.ref, self.column, self.new, self.old)

    def describe(self) -> str:
        return f"~ column {self.ref}.{self.column} type {self.old} -> {self.new}"


@dataclass(frozen=True)
class AlterNull(Operation):
    """SET / DROP NOT NULL. With a ``helper`` (the online form), SET NOT NULL relies on the validated helper
    check ``helper`` (no scan) and then drops it; its reverse puts the helper back (NOT VALID) after DROP NOT
    NULL, so the migration that added the helper can drop it in its own down."""

    PHASE: ClassVar[int] = 9
    ref: Ref
    column: str
    allow_null: bool
    helper: str | None = None

    def reverse(self) -> AlterNull:
        return AlterNull(self.ref, self.column, not self.allow_null, self.helper)

    def describe(self) -> str:
        if self.helper and not self.allow_null:
            return f"~ column {self.ref}.{self.column} NOT NULL (proven by the validated check {self.helper}, dropped)"
        return f"~ column {self.ref}.{self.column} {'NULL allowed' if self.allow_null else 'NOT NULL'}"


@dataclass(frozen=True)
class NullCheck(Operation):
    """The helper of an online NOT NULL: ``CHECK (column IS NOT NULL) NOT VALID`` (``add``), or its drop."""

    PHASE: ClassVar[int] = 9
    ref: Ref
    column: str
    name: str
    add: bool = True

    def reverse(self) -> NullCheck:
        return NullCheck(self.ref, self.column, self.name, not self.add)

    def describe(self) -> str:
        if self.add:
            return f"+ check {self.name} on {self.ref} ({self.column} IS NOT NULL) NOT VALID"
        return f"- check {self.name} on {self.ref}"


@dataclass(frozen=True)
class AlterDefault(Operation):
    """Set or drop a default; ``old``/``new`` are rendered SQL expressions (None: no default)."""

    PHASE: ClassVar[int] = 9
    ref: Ref
    column: str
    old: str | None
    new: str | None

    def reverse(self) -> AlterDefault:
        return AlterDefault(self.ref, self.column, self.new, self.old)

    def describe(self) -> str:
        return f"~ column {self.ref}.{self.column} default {self.old or 'none'} -> {self.new or 'none'}"


@dataclass(frozen=True)
class AlterIdentity(Operation):
    PHASE: ClassVar[int] = 9
    ref: Ref
    column: str
    old: str | None  # None, "identity" (BY DEFAULT) or "always"
    new: str | None

    def reverse(self) -> AlterIdentity:
        return AlterIdentity(self.ref, self.column, self.new, self.old)

    def describe(self) -> str:
        return f"~ column {self.ref}.{self.column} identity {self.old or 'none'} -> {self.new or 'none'}"


# -- keys, indexes, constraints ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddPrimaryKey(Operation):
    PHASE: ClassVar[int] = 12
    ref: Ref
    columns: tuple[str, ...]

    def reverse(self) -> DropPrimaryKey:
        return DropPrimaryKey(self.ref, self.columns)

    def describe(self) -> str:
        return f"+ primary key {self.ref} ({', '.join(self.columns)})"


@dataclass(frozen=True)
class DropPrimaryKey(Operation):
    PHASE: ClassVar[int] = 4
    ref: Ref
    columns: tuple[str, ...]

    def reverse(self) -> AddPrimaryKey:
        return AddPrimaryKey(self.ref, self.columns)

    def describe(self) -> str:
        return f"- primary key {self.ref} ({', '.join(self.columns)})"


@dataclass(frozen=True)
class CreateIndex(Operation):
    PHASE: ClassVar[int] = 13
    ref: Ref
    index: IndexSpec

    @property
    def concurrent(self) -> bool:
        return self.index.concurrently

    def reverse(self) -> DropIndex:
        return DropIndex(self.ref, self.index, concurrently=self.index.concurrently)

    def describe(self) -> str:
        unique = "unique " if self.index.unique else ""
        kind = "constraint" if self.index.constraint else self.index.kind
        return f"+ {unique}{kind} {self.index.name} on {self.ref} ({', '.join(self.index.columns)})"


@dataclass(frozen=True)
class DropIndex(Operation):
    PHASE: ClassVar[int] = 3
    ref: Ref
    index: IndexSpec
    concurrently: bool = False

    @property
    def concurrent(self) -> bool:
        return self.concurrently

    def reverse(self) -> CreateIndex:
        # concurrently only from a migration of its own (the down of a concurrent build), never in a transaction
        return CreateIndex(self.ref, replace(self.index, concurrently=self.concurrently))

    def describe(self) -> str:
        kind = "unique constraint" if self.index.constraint else self.index.kind
        return f"- {kind} {self.index.name} on {self.ref}"


@dataclass(frozen=True)
class AttachUnique(Operation):
    """ADD CONSTRAINT … UNIQUE USING INDEX: turn an existing unique index into a UNIQUE constraint (no scan).

    Its reverse, ``DetachUnique``, drops the constraint, which drops the index with it, and builds the bare
    index again, so the down gives back exactly the catalog before (the index of a concurrent step before it).
    """

    PHASE: ClassVar[int] = 14
    ref: Ref
    index: IndexSpec

    def reverse(self) -> DetachUnique:
        return DetachUnique(self.ref, self.index)

    def describe(self) -> str:
        return f"+ unique constraint {self.index.name} on {self.ref} using its index"


@dataclass(frozen=True)
class DetachUnique(Operation):
    """DROP CONSTRAINT of a UNIQUE constraint, then CREATE UNIQUE INDEX of the same name: the index alone again."""

    PHASE: ClassVar[int] = 3
    ref: Ref
    index: IndexSpec

    def reverse(self) -> AttachUnique:
        return AttachUnique(self.ref, self.index)

    def describe(self) -> str:
        return f"- unique constraint {self.index.name} on {self.ref} (its index is rebuilt alone)"


@dataclass(frozen=True)
class RenameIndex(Operation):
    PHASE: ClassVar[int] = 14
    ref: Ref
    old: str
    new: str

    def reverse(self) -> RenameIndex:
        return RenameIndex(self.ref, self.new, self.old)

    def describe(self) -> str:
        return f"~ index {self.old} on {self.ref} renamed to {self.new}"


@dataclass(frozen=True)
class RenameConstraint(Operation):
    PHASE: ClassVar[int] = 14
    ref: Ref
    old: str
    new: str

    def reverse(self) -> RenameConstraint:
        return RenameConstraint(self.ref, self.new, self.old)

    def describe(self) -> str:
        return f"~ constraint {self.old} on {self.ref} renamed to {self.new}"


ForeignKeyDefinition = model.Reference | model.ForeignKey
"""An attribute's one-column reference (its column is the operation's ``column``) or a table-level key."""


def key_columns(column: str, reference: ForeignKeyDefinition) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Return (columns, referenced columns) of a foreign key, whichever way it was written."""
    if isinstance(reference, model.ForeignKey):
        return reference.columns, reference.ref_columns
    return (column,), (reference.column,)


@dataclass(frozen=True)
class AddForeignKey(Operation):
    """A foreign key: an attribute's reference (``column`` is the attribute) or a table-level key over several
    columns (``reference`` is a ``model.ForeignKey``; ``column`` is then '')."""

    PHASE: ClassVar[int] = 16
    ref: Ref
    column: str
    reference: ForeignKeyDefinition
    valid: bool = True  # False: NOT VALID, checked later by a ValidateConstraint

    @property
    def columns(self) -> tuple[str, ...]:
        return key_columns(self.column, self.reference)[0]

    @property
    def ref_columns(self) -> tuple[str, ...]:
        return key_columns(self.column, self.reference)[1]

    def reverse(self) -> DropForeignKey:
        return DropForeignKey(self.ref, self.column, self.reference)

    def describe(self) -> str:
        target = Ref(self.reference.schema, self.reference.table)
        columns, ref_columns = ", ".join(self.columns), ", ".join(self.ref_columns)
        if len(self.columns) > 1:
            columns, ref_columns = f"({columns})", f"({ref_columns})"
            text = f"+ foreign key {self.reference.name}: {self.ref} {columns} -> {target} {ref_columns}"
        else:
            text = f"+ foreign key {self.reference.name}: {self.ref}.{columns} -> {target}.{ref_columns}"
        return text if self.valid else f"{text} NOT VALID"


@dataclass(frozen=True)
class DropForeignKey(Operation):
    PHASE: ClassVar[int] = 1
    ref: Ref
    column: str
    reference: ForeignKeyDefinition

    def reverse(self) -> AddForeignKey:
        return AddForeignKey(self.ref, self.column, self.reference)

    def describe(self) -> str:
        return f"- foreign key {self.reference.name} on {self.ref}"


@dataclass(frozen=True)
class AddCheck(Operation):
    PHASE: ClassVar[int] = 15
    ref: Ref
    check: model.CheckConstraint
    valid: bool = True  # False: NOT VALID, checked later by a ValidateConstraint

    def reverse(self) -> DropCheck:
        return DropCheck(self.ref, self.check)

    def describe(self) -> str:
        return f"+ check {self.check.name} on {self.ref}" + ("" if self.valid else " NOT VALID")


@dataclass(frozen=True)
class DropCheck(Operation):
    PHASE: ClassVar[int] = 3
    ref: Ref
    check: model.CheckConstraint

    def reverse(self) -> AddCheck:
        return AddCheck(self.ref, self.check)

    def describe(self) -> str:
        return f"- check {self.check.name} on {self.ref}"


@dataclass(frozen=True)
class ValidateConstraint(Operation):
    """VALIDATE CONSTRAINT of a check or foreign key added NOT VALID: a scan under SHARE UPDATE EXCLUSIVE, so
    reads and writes go on. Nothing to undo: the down of the migration that added the constraint drops it."""

    PHASE: ClassVar[int] = 18
    ref: Ref
    name: str

    def reverse(self) -> None:
        return None

    def describe(self) -> str:
        return f"~ validate constraint {self.name} on {self.ref}"


@dataclass(frozen=True)
class RunStatement(Operation):
    """A custom statement: ``up`` runs now, ``down`` undoes it. Removing one runs its old down (``removal``)."""

    ref: Ref
    name: str
    up: str
    down: str
    removal: bool = False

    @property
    def phase(self) -> int:
        return 2 if self.removal else 17

    def reverse(self) -> RunStatement:
        return RunStatement(self.ref, self.name, self.down, self.up, not self.removal)

    def describe(self) -> str:
        return f"{'-' if self.removal else '+'} statement {self.name} on {self.ref}"


def phase(op: Operation) -> int:
    """Return where ``op`` goes in the up direction."""
    return op.phase if isinstance(op, RunStatement) else op.PHASE
