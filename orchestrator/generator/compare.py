"""Compare two states of a repo's tables and return the operations that turn one into the other.

A pure function of two states, as Django's autodetector is: ``old`` comes from the snapshots, ``new`` from the
manifests, and nothing here reads files or talks to a database. Sets are walked in sorted order (added, removed,
kept) so the same input always gives the same operations in the same order.

Renames are never guessed: a table or column that disappears is matched to a new one only through its
``renamedFrom`` hint (a global table found under another schema is a move). Everything else that disappears is
a drop, which ``generate`` refuses unless destructive changes are allowed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from orchestrator import indexfield, model
from orchestrator.generator import operations as ops

Ops = list[ops.Operation]


@dataclass
class ScopeDiff:
    """The result for one scope (global or tenant) of one repo."""

    operations: Ops = field(default_factory=list)
    snapshots: dict[str, model.Table | None] = field(default_factory=dict)
    """Snapshot to write per table key; None writes a tombstone (the table was dropped, renamed or moved)."""
    resources: set[str] = field(default_factory=set)


def ref(table: model.Table) -> ops.Ref:
    return ops.Ref(table.schema, table.name)


TableName = tuple[str | None, str]


def compare_scope(
    old: Mapping[str, model.Table],
    new: Sequence[model.Table],
    renamed_elsewhere: Mapping[TableName, TableName] | None = None,
    columns_elsewhere: Mapping[TableName, Mapping[str, str]] | None = None,
) -> ScopeDiff:
    """Return the operations from the ``old`` tables (by key) to the ``new`` ones, and the snapshots to write.

    ``renamed_elsewhere`` names tables renamed or moved in another scope (global tables, for the tenant scope):
    PostgreSQL updates foreign keys that point at a renamed table, so old references are compared through it
    (``followed``), while operations that re-create old constraints keep the names they had (``old``).
    ``columns_elsewhere`` are the column renames of those tables (``column_renames``), which table-level keys
    follow the same way.
    """
    diff = ScopeDiff()
    pairs = matches(old, new)
    renamed = {**(renamed_elsewhere or {}), **renames(pairs)}
    followed = {key: _follow_renames(table, renamed) for key, table in old.items()}
    moved_columns = {**(columns_elsewhere or {}), **column_renames(pairs, new)}
    followed = {key: _follow_foreign_keys(table, renamed, moved_columns) for key, table in followed.items()}
    for table in sorted(new, key=lambda t: t.key):
        previous = pairs.get(table.key)
        before = len(diff.operations)
        if previous is None:
            diff.operations += create_table(table)
        else:
            diff.operations += _transform(previous, followed[previous.key], table)
            if previous.key != table.key:
                diff.snapshots[previous.key] = None
        if len(diff.operations) > before or (previous is not None and followed[previous.key] != previous):
            diff.snapshots[table.key] = table
            diff.resources.add(table.resource)
    for key in sorted(set(old) - {t.key for t in pairs.values()}):
        diff.operations += drop_table(old[key])
        diff.snapshots[key] = None
    diff.operations += _dependent_foreign_keys(diff.operations, pairs, followed, new)
    diff.operations += _dependent_table_keys(diff.operations, pairs, followed, new)
    existing = {t.schema for t in old.values() if t.schema}
    diff.operations += [op for op in _schemas(diff.operations) if op.name not in existing]
    return diff


def matches(old: Mapping[str, model.Table], new: Sequence[model.Table]) -> dict[str, model.Table]:
    """Return new key -> the old table it continues (same key, renamedFrom, or a move between schemas)."""
    new_keys = {t.key for t in new}
    found: dict[str, model.Table] = {}
    taken: set[str] = set()
    for table in sorted(new, key=lambda t: t.key):
        previous = _match(table, old, new_keys)
        if previous is not None and previous.key not in taken:
            found[table.key] = previous
            taken.add(previous.key)
    return found


def renames(pairs: Mapping[str, model.Table]) -> dict[TableName, TableName]:
    """Return (schema, name) before -> after for every matched table whose name or schema changed."""
    result: dict[TableName, TableName] = {}
    for key, previous in pairs.items():
        schema, _, name = key.partition(".")
        after = (None if schema == "tenants" and previous.schema is None else schema, name)
        if (previous.schema, previous.name) != after:
            result[(previous.schema, previous.name)] = after
    return result


def _follow_renames(table: model.Table, renamed: Mapping[TableName, TableName]) -> model.Table:
    """Point references at tables' new names, as PostgreSQL does when a referenced table is renamed."""
    if not renamed:
        return table
    attributes = []
    for attribute in table.attributes:
        reference = attribute.references
        if reference is not None and (reference.schema, reference.table) in renamed:
            schema, name = renamed[(reference.schema, reference.table)]
            attribute = replace(attribute, references=replace(reference, schema=schema, table=name))
        attributes.append(attribute)
    return replace(table, attributes=tuple(attributes))


def _match(table: model.Table, old: Mapping[str, model.Table], new_keys: set[str]) -> model.Table | None:
    """Find the old state of ``table``: its renamedFrom hint (in any schema: a rename may come with a move),
    else the same key, else the same name in another schema (a move)."""
    if table.renamed_from:
        hinted = [
            t
            for k, t in sorted(old.items())
            if t.name == table.renamed_from and t.is_tenant == table.is_tenant and k not in new_keys
        ]
        if len(hinted) == 1:
            return hinted[0]
    if table.key in old:
        return old[table.key]
    if table.schema is not None:
        moved = [t for k, t in sorted(old.items()) if t.name == table.name and t.schema and k not in new_keys]
        if len(moved) == 1:
            return moved[0]
    return None


def _dependent_foreign_keys(
    operations: Ops, pairs: Mapping[str, model.Table], followed: Mapping[str, model.Table], new: Sequence[model.Table]
) -> Ops:
    """Drop and re-add foreign keys that PostgreSQL would not let a change go through under them.

    A kept foreign key depends on its column's type, the referenced column's type, and the unique index or
    primary key that backs the referenced column. When any of these changes, the constraint is dropped first
    and added again last; constraints already dropped or added by other operations are left alone.
    """
    touched = _keys_added(operations)
    by_ref = {str(ops.Ref(t.schema, t.name)): t for t in new}
    result: Ops = []
    for table, previous in _kept_tables(pairs, new):
        before = followed[previous.key]
        for attribute in table.attributes:
            reference = attribute.references
            if reference is None or (str(ref(table)), reference.name) in touched:
                continue
            old_attribute = _old_column(before, table, attribute.name)
            if old_attribute is None or old_attribute.references is None:
                continue
            target = by_ref.get(str(ops.Ref(reference.schema, reference.table)))
            old_target = pairs.get(target.key) if target is not None else None
            if target is None or old_target is None:
                continue
            if old_attribute.type != attribute.type or _target_changed(
                followed[old_target.key], target, old_attribute.references.column, reference.column
            ):
                original = next(a for a in previous.attributes if a.name == old_attribute.name)
                assert original.references is not None
                result.append(ops.DropForeignKey(ref(previous), original.name, original.references))
                result.append(ops.AddForeignKey(ref(table), attribute.name, reference))
    return result


def _keys_added(operations: Ops) -> set[tuple[str, str]]:
    """(table, constraint) of the foreign keys other operations already add (and so drop first)."""
    return {(op.table, op.reference.name) for op in operations if isinstance(op, ops.AddForeignKey)}


def _kept_tables(
    pairs: Mapping[str, model.Table], new: Sequence[model.Table]
) -> Iterator[tuple[model.Table, model.Table]]:
    """Each table that existed before (under this name or another), with its previous version, in key order."""
    for table in sorted(new, key=lambda t: t.key):
        previous = pairs.get(table.key)
        if previous is not None:
            yield table, previous


def _old_column(old: model.Table, new: model.Table, name: str) -> model.Attribute | None:
    attribute = next((a for a in new.attributes if a.name == name), None)
    hinted = attribute.renamed_from if attribute else None
    return old.column(name) or (old.column(hinted) if hinted else None)


def _target_changed(old: model.Table, new: model.Table, old_column: str, new_column: str) -> bool:
    """Did the referenced column's type, or what makes it unique, change?"""
    before, after = old.column(old_column), new.column(new_column)
    if before is None or after is None or before.type != after.type:
        return True
    return _backing(old, old_column) != _backing(new, new_column)


def _backing(table: model.Table, column: str) -> object:
    """What makes ``column`` unique: the primary key, or a unique index (as its definition, minus names)."""
    if table.primary_key == (column,):
        return ("pkey", table.primary_key)
    for spec in index_specs(table):
        if spec.unique and spec.columns == (column,) and spec.where is None:
            # a UNIQUE constraint attached to or detached from the index counts: DROP CONSTRAINT (the detach, and
            # so the attach's down) fails under a foreign key that depends on the index
            return (spec.name, spec.nulls_distinct, spec.using, spec.constraint)
    return ("pkey", table.primary_key) if column in table.primary_key else None


def _schemas(operations: Ops) -> list[ops.CreateSchema]:
    """CREATE SCHEMA IF NOT EXISTS for every named schema a table is created in or moved to."""
    names: set[str] = set()
    for op in operations:
        if isinstance(op, ops.CreateTable) and op.ref.schema not in (None, "public"):
            names.add(str(op.ref.schema))
        if isinstance(op, ops.MoveTable) and op.new_schema != "public":
            names.add(op.new_schema)
    return [ops.CreateSchema(name) for name in sorted(names)]


# -- whole tables --------------------------------------------------------------------------------------------


def create_table(table: model.Table) -> Ops:
    """CREATE TABLE, then everything that hangs off it: indexes, checks, foreign keys, statements."""
    at = ref(table)
    result: Ops = [ops.CreateTable(at, table)]
    result += [ops.CreateIndex(at, spec) for spec in index_specs(table)]
    result += [ops.AddCheck(at, check) for check in table.check_constraints]
    result += [ops.AddForeignKey(at, a.name, a.references) for a in table.attributes if a.references]
    result += [ops.AddForeignKey(at, "", foreign_key) for foreign_key in table.foreign_keys]
    result += [ops.RunStatement(at, s.name, s.up, s.down) for s in table.statements]
    return result


def drop_table(table: model.Table) -> Ops:
    """The exact reverse of ``create_table``, so the down migration rebuilds the table completely."""
    return [op.reverse() for op in reversed(create_table(table))]  # type: ignore[misc]


def index_specs(table: model.Table) -> list[ops.IndexSpec]:
    """Every index of a table, identities first, then custom indexes, then foreign-key column indexes."""
    specs = [
        ops.IndexSpec(
            i.index_name,
            i.keys,
            "identity",
            True,
            None,
            i.where,
            (),
            i.nulls_distinct,
            constraint=i.constraint,
            deferrable=i.deferrable,
        )
        for i in table.identities
    ]
    specs += [
        ops.IndexSpec(
            i.name, i.fields, "index", i.unique, i.using, i.where, i.include, i.nulls_distinct, i.concurrently
        )
        for i in table.indexes
    ]
    specs += [spec for a in table.attributes if (spec := _fk_index(table, a))]
    return specs + [spec for f in table.foreign_keys if (spec := _table_key_index(table, f))]


def _fk_index(table: model.Table, attribute: model.Attribute) -> ops.IndexSpec | None:
    reference = attribute.references
    if reference is None or not reference.index or reference.index_name is None:
        return None
    tenant = table.multitenancy.attribute if table.multitenancy.strategy == "attribute" else None
    columns = (tenant, attribute.name) if tenant and tenant != attribute.name else (attribute.name,)
    return ops.IndexSpec(reference.index_name, columns, "foreign-key index")


# -- a table that exists on both sides -----------------------------------------------------------------------


def _transform(original: model.Table, old: model.Table, new: model.Table) -> Ops:
    """Operations from ``old`` to ``new`` (the same table, maybe renamed or moved).

    ``original`` is ``old`` as it was, before other tables' renames were followed: operations that drop
    something keep its original definition, so their reverse in the down re-creates it as it was. Operations
    that run before the rename in the up direction (dropping keys, indexes, checks, statements) name the
    table and its columns as they were then.
    """
    before = ref(original)
    result: Ops = []
    if old.schema != new.schema and old.schema is not None and new.schema is not None:
        result.append(ops.MoveTable(before, new.schema))
    if old.name != new.name:
        result.append(ops.RenameTable(ops.Ref(new.schema, old.name), new.name))
    at = ref(new)
    old = replace(old, schema=new.schema, name=new.name)
    old, back, column_renames = _rename_columns(at, old, new)
    old = _rename_key_columns(old, {before: after for after, before in back.items()})
    result += column_renames
    if old.primary_key != new.primary_key:
        result += [ops.DropPrimaryKey(at, original.primary_key)] if original.primary_key else []
        result += [ops.AddPrimaryKey(at, new.primary_key)] if new.primary_key else []
    elif new.primary_key and before.name != new.name:
        result.append(ops.RenameConstraint(at, f"{before.name}_pkey", f"{new.name}_pkey"))
    result += _columns(at, old, new, original, back)
    result += _table_keys(at, old.foreign_keys, new.foreign_keys, original.foreign_keys)
    result += _indexes(at, index_specs(_unrenamed(old, original)), index_specs(new), index_specs(old))
    result += _by_name(at, old.check_constraints, new.check_constraints, ops.AddCheck, ops.DropCheck)
    result += _statements(at, old.statements, new.statements)
    return [_early(op, before) for op in result]


def _unrenamed(old: model.Table, original: model.Table) -> model.Table:
    """``old`` with the original column names, for dropping indexes as they are before column renames."""
    unrenamed = replace(old, attributes=original.attributes, identities=original.identities, indexes=original.indexes)
    return replace(unrenamed, foreign_keys=original.foreign_keys)


def _early(op: ops.Operation, before: ops.Ref) -> ops.Operation:
    """Give an operation that runs before renames and moves the table's old name."""
    if ops.phase(op) < ops.RenameTable.PHASE and getattr(op, "ref", None) is not None:
        return replace(op, ref=before)  # type: ignore[type-var]
    return op


def _rename_columns(at: ops.Ref, old: model.Table, new: model.Table) -> tuple[model.Table, dict[str, str], Ops]:
    """Apply renamedFrom hints: emit the renames; return ``old`` as it is after them and new -> old names."""
    new_names = {a.name for a in new.attributes}
    old_names = {a.name for a in old.attributes}
    renames = {
        a.renamed_from: a.name
        for a in new.attributes
        if a.renamed_from in old_names and a.renamed_from not in new_names and a.name not in old_names
    }
    if not renames:
        return old, {}, []
    renamed = tuple(replace(a, name=renames.get(a.name, a.name)) for a in old.attributes)
    pk = tuple(renames.get(c, c) for c in old.primary_key)
    identities = tuple(replace(i, keys=tuple(renames.get(k, k) for k in i.keys)) for i in old.identities)
    indexes = tuple(
        replace(
            i,
            fields=tuple(indexfield.rename(f, renames) for f in i.fields),
            include=tuple(renames.get(f, f) for f in i.include),
        )
        for i in old.indexes
    )
    result: Ops = [ops.RenameColumn(at, before, after) for before, after in sorted(renames.items())]
    back = {after: before for before, after in renames.items()}
    return replace(old, attributes=renamed, primary_key=pk, identities=identities, indexes=indexes), back, result


def _columns(at: ops.Ref, old: model.Table, new: model.Table, original: model.Table, back: dict[str, str]) -> Ops:
    old_columns = {a.name: a for a in old.attributes}
    new_columns = {a.name: a for a in new.attributes}
    result: Ops = []
    for attribute in new.attributes:
        previous = old_columns.get(attribute.name)
        if previous is None:
            result.append(ops.AddColumn(at, replace(attribute, references=None)))
            result += _reference(at, attribute.name, None, attribute.references)
        else:
            source = original.column(back.get(attribute.name, attribute.name))
            result += _column(at, previous, attribute)
            result += _reference(
                at,
                attribute.name,
                previous.references,
                attribute.references,
                dropped=(source.name, source.references) if source else None,
            )
    for attribute in old.attributes:
        if attribute.name not in new_columns:
            source = original.column(attribute.name)
            result += _reference(
                at,
                attribute.name,
                attribute.references,
                None,
                dropped=(source.name, source.references) if source else None,
            )
            result.append(ops.DropColumn(at, replace(attribute, references=None)))
    return result


def _column(at: ops.Ref, old: model.Attribute, new: model.Attribute) -> Ops:
    """Type, default, nullability and identity changes, in an order PostgreSQL accepts both ways: an identity
    is dropped before the default and NULL change that need it gone, and added after the NOT NULL it needs."""
    result: Ops = []
    identity = ops.AlterIdentity(at, new.name, old.generated, new.generated) if old.generated != new.generated else None
    if identity and new.generated is None:
        result.append(identity)
    old_default, new_default = old.default_expression(), new.default_expression()
    if old.type != new.type:
        if old_default is not None:  # a default of the old type may not cast: drop it, change, set it again
            result.append(ops.AlterDefault(at, new.name, old_default, None))
            old_default = None
        result.append(ops.AlterType(at, new.name, old.type, new.type))
    if old_default != new_default:
        result.append(ops.AlterDefault(at, new.name, old_default, new_default))
    if old.allow_null != new.allow_null:
        result.append(ops.AlterNull(at, new.name, new.allow_null))
    if identity and new.generated is not None:
        result.append(identity)
    return result


def _reference(
    at: ops.Ref,
    column: str,
    old: model.Reference | None,
    new: model.Reference | None,
    *,
    dropped: tuple[str, model.Reference | None] | None = None,
) -> Ops:
    """Foreign-key constraint changes of one column; its optional index is compared with the other indexes.

    ``dropped`` is the column and constraint as they originally were (before renames): a drop keeps them, so
    the down re-creates exactly what existed.
    """
    if old == new:
        return []
    unindexed_old = replace(old, index=False, index_name=None) if old else None
    unindexed_new = replace(new, index=False, index_name=None) if new else None
    if unindexed_old == unindexed_new:
        return []  # only the index changed
    if old and new and unindexed_old == replace(unindexed_new, name=old.name):  # type: ignore[type-var]
        return [ops.RenameConstraint(at, old.name, new.name)]
    drop_column, drop_reference = dropped if dropped and dropped[1] else (column, old)
    result: Ops = [ops.DropForeignKey(at, drop_column, drop_reference)] if drop_reference else []
    return result + ([ops.AddForeignKey(at, column, new)] if new else [])


def _indexes(
    at: ops.Ref, original: Iterable[ops.IndexSpec], new: Iterable[ops.IndexSpec], compared: Iterable[ops.IndexSpec]
) -> Ops:
    """Indexes by name; a definition that only changed its name is a rename, any other change drop + create.

    ``compared`` are the old indexes with column renames applied (PostgreSQL renames columns inside indexes);
    ``original`` the same indexes as they were, which a drop keeps so its reverse re-creates them.
    """
    as_was = {i.name: i for i in original}
    old_by_name = {i.name: i for i in compared}
    new_by_name = {i.name: i for i in new}
    result: Ops = []
    gone = [old_by_name[n] for n in old_by_name if n not in new_by_name]
    for name, spec in new_by_name.items():
        previous = old_by_name.get(name)
        if previous is None:
            twin = next((g for g in gone if g.same_definition(spec)), None)
            if twin is not None:
                gone.remove(twin)
                result.append(ops.RenameIndex(at, twin.name, name))
            else:
                result.append(ops.CreateIndex(at, spec))
        elif spec.constraint and not previous.constraint and previous.same_index(spec):
            result.append(ops.AttachUnique(at, spec))  # the index becomes a constraint's: no rebuild
        elif not previous.same_definition(spec):
            result += [ops.DropIndex(at, as_was.get(name, previous)), ops.CreateIndex(at, spec)]
    return [ops.DropIndex(at, as_was.get(spec.name, spec)) for spec in gone] + result


def _by_name(
    at: ops.Ref,
    old: Iterable[model.CheckConstraint],
    new: Iterable[model.CheckConstraint],
    add: type[ops.AddCheck],
    drop: type[ops.DropCheck],
) -> Ops:
    old_by_name = {c.name: c for c in old}
    new_by_name = {c.name: c for c in new}
    result: Ops = []
    for name, check in old_by_name.items():
        if new_by_name.get(name) != check:
            result.append(drop(at, check))
    for name, check in new_by_name.items():
        if old_by_name.get(name) != check:
            result.append(add(at, check))
    return result


def _statements(at: ops.Ref, old: Sequence[model.Statement], new: Sequence[model.Statement]) -> Ops:
    """Removed or changed statements run their old down (in reverse order); added or changed, their new up."""
    old_by_name = {s.name: s for s in old}
    new_by_name = {s.name: s for s in new}
    result: Ops = [
        ops.RunStatement(at, s.name, s.down, s.up, removal=True) for s in reversed(old) if new_by_name.get(s.name) != s
    ]
    return result + [ops.RunStatement(at, s.name, s.up, s.down) for s in new if old_by_name.get(s.name) != s]


# -- table-level (multi-column) foreign keys -----------------------------------------------------------------


def _table_key_index(table: model.Table, foreign_key: model.ForeignKey) -> ops.IndexSpec | None:
    """The optional index of a table-level key: its columns, the tenant column first when it is not one of
    them (attribute multitenancy), as for an attribute's reference."""
    if not foreign_key.index or foreign_key.index_name is None:
        return None
    tenant = table.multitenancy.attribute if table.multitenancy.strategy == "attribute" else None
    columns = foreign_key.columns
    if tenant and tenant not in columns:
        columns = (tenant, *columns)
    return ops.IndexSpec(foreign_key.index_name, columns, "foreign-key index")


def column_renames(pairs: Mapping[str, model.Table], new: Sequence[model.Table]) -> dict[TableName, dict[str, str]]:
    """Return, per old (schema, name) of a matched table (as old foreign keys name their targets), its column
    renames (old -> new, from renamedFrom hints)."""
    found: dict[TableName, dict[str, str]] = {}
    for table in new:
        previous = pairs.get(table.key)
        if previous is not None and (moved := _renamed_here(previous, table)):
            found[(previous.schema, previous.name)] = moved
    return found


def _follow_foreign_keys(
    table: model.Table, renamed: Mapping[TableName, TableName], columns: Mapping[TableName, Mapping[str, str]]
) -> model.Table:
    """Point table-level keys at the target's new name and its renamed columns, as PostgreSQL does."""
    if not table.foreign_keys or not (renamed or columns):
        return table
    keys = []
    for key in table.foreign_keys:
        target = (key.schema, key.table)
        moved = columns.get(target, {})
        key = replace(key, ref_columns=tuple(moved.get(c, c) for c in key.ref_columns))
        if target in renamed:
            key = replace(key, schema=renamed[target][0], table=renamed[target][1])
        keys.append(key)
    return replace(table, foreign_keys=tuple(keys))


def _rename_key_columns(old: model.Table, renames: Mapping[str, str]) -> model.Table:
    """``old``'s table-level keys with this table's own column renames applied (PostgreSQL follows them)."""
    if not renames or not old.foreign_keys:
        return old

    def action(value: model.Action | None) -> model.Action | None:
        return replace(value, columns=tuple(renames.get(c, c) for c in value.columns)) if value else None

    keys = tuple(
        replace(
            key,
            columns=tuple(renames.get(c, c) for c in key.columns),
            on_delete=action(key.on_delete),
            on_update=action(key.on_update),
        )
        for key in old.foreign_keys
    )
    return replace(old, foreign_keys=keys)


def _unindexed(key: model.ForeignKey) -> model.ForeignKey:
    return replace(key, index=False, index_name=None)


def _table_keys(
    at: ops.Ref,
    old: Sequence[model.ForeignKey],
    new: Sequence[model.ForeignKey],
    original: Sequence[model.ForeignKey],
) -> Ops:
    """Table-level keys by name: a key that only changed its name is renamed, any other change is a drop and an
    add (their optional indexes are compared with the other indexes). ``old`` has renames followed;
    ``original`` the keys as they were, which a drop keeps so its reverse re-creates them."""
    as_was = {k.name: k for k in original}
    old_by_name = {k.name: _unindexed(k) for k in old}
    new_by_name = {k.name: _unindexed(k) for k in new}
    gone = [k for name, k in old_by_name.items() if name not in new_by_name]
    drops: Ops = []
    result: Ops = []
    for name, key in new_by_name.items():
        previous = old_by_name.get(name)
        if previous == key:
            continue
        twin = next((g for g in gone if replace(g, name=name) == key), None) if previous is None else None
        if twin is not None:
            gone.remove(twin)
            result.append(ops.RenameConstraint(at, twin.name, name))
            continue
        if previous is not None:
            drops.append(ops.DropForeignKey(at, "", as_was.get(name, previous)))
        result.append(ops.AddForeignKey(at, "", next(k for k in new if k.name == name)))
    drops += [ops.DropForeignKey(at, "", as_was.get(key.name, key)) for key in gone]
    return drops + result


def _dependent_table_keys(
    operations: Ops, pairs: Mapping[str, model.Table], followed: Mapping[str, model.Table], new: Sequence[model.Table]
) -> Ops:
    """Drop and re-add kept table-level keys whose columns' types, or the target's columns or the unique index
    or primary key behind them, change (as ``_dependent_foreign_keys`` does for attribute references)."""
    touched = _keys_added(operations)
    by_ref = {str(ops.Ref(t.schema, t.name)): t for t in new}
    result: Ops = []
    for table, previous in _kept_tables(pairs, new):
        before = _rename_columns(ref(table), followed[previous.key], table)[0]
        before = _rename_key_columns(before, _renamed_here(previous, table))
        old_keys = {k.name: k for k in before.foreign_keys}
        for key in table.foreign_keys:
            old_key = old_keys.get(key.name)
            if old_key is None or (str(ref(table)), key.name) in touched:
                continue
            target = by_ref.get(str(ops.Ref(key.schema, key.table)))
            old_target = pairs.get(target.key) if target is not None else None
            if target is None or old_target is None:
                continue
            old_target_renamed = _rename_columns(ref(target), followed[old_target.key], target)[0]
            if _key_changed(before, table, old_target_renamed, target, old_key, key):
                original = next((k for k in previous.foreign_keys if k.name == key.name), old_key)
                result.append(ops.DropForeignKey(ref(previous), "", original))
                result.append(ops.AddForeignKey(ref(table), "", key))
    return result


def _renamed_here(old: model.Table, new: model.Table) -> dict[str, str]:
    old_names = {a.name for a in old.attributes}
    return {a.renamed_from: a.name for a in new.attributes if a.renamed_from in old_names and a.name not in old_names}


def _key_changed(
    old: model.Table,
    new: model.Table,
    old_target: model.Table,
    new_target: model.Table,
    old_key: model.ForeignKey,
    new_key: model.ForeignKey,
) -> bool:
    """Did a column's type change, on either side, or what makes the referenced columns unique?"""
    pairs = [(old, new, a, b) for a, b in zip(old_key.columns, new_key.columns, strict=False)]
    pairs += [(old_target, new_target, a, b) for a, b in zip(old_key.ref_columns, new_key.ref_columns, strict=False)]
    for before_table, after_table, before, after in pairs:
        old_column, new_column = before_table.column(before), after_table.column(after)
        if old_column is None or new_column is None or old_column.type != new_column.type:
            return True
    return _set_backing(old_target, old_key.ref_columns) != _set_backing(new_target, new_key.ref_columns)


def _set_backing(table: model.Table, columns: tuple[str, ...]) -> object:
    """What makes ``columns`` unique: the primary key, or a unique index (its definition, minus names)."""
    if set(table.primary_key) == set(columns):
        return ("pkey", table.primary_key)
    for spec in index_specs(table):
        if spec.unique and set(spec.columns) == set(columns) and spec.where is None:
            # a UNIQUE constraint attached or detached counts, as in ``_backing``: its DROP CONSTRAINT fails
            # under a key that depends on the index
            return (spec.name, spec.nulls_distinct, spec.using, spec.columns, spec.constraint)
    return None
