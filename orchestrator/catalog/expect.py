"""What the catalog should show for a model table: the other side of every catalog comparison.

``expected(table, schema)`` places a model table (from manifests or a snapshot) in a schema and says what
``read.read_schemas`` would return for it if the migrations built it exactly. Derived names, serial
sequences and the tenant column of attribute multitenancy are filled in as the generator creates them.
"""

from __future__ import annotations

from collections.abc import Iterator

from orchestrator import model
from orchestrator.catalog.read import CatalogTable, Check, Column, ForeignKey, Index, PrimaryKey, RefAction, sort_named

_SERIAL = {"serial": "integer", "bigserial": "bigint", "smallserial": "smallint"}


def expected(table: model.Table, schema: str) -> CatalogTable:
    """Return what the catalog should show for ``table`` created in ``schema`` (the tenant schema for a
    per-tenant table; references without a schema point into the same one)."""
    return CatalogTable(
        schema=schema,
        name=table.name,
        columns=tuple(_expected_column(table.name, a, schema) for a in table.attributes),
        primary_key=PrimaryKey(f"{table.name}_pkey", table.primary_key) if table.primary_key else None,
        indexes=sort_named(_expected_indexes(table)),
        foreign_keys=sort_named(_expected_foreign_keys(table, schema)),
        checks=sort_named(Check(c.name, f"CHECK ({c.check})") for c in table.check_constraints),
    )


def _expected_column(table: str, attribute: model.Attribute, schema: str) -> Column:
    serial = _SERIAL.get(attribute.type)
    return Column(
        name=attribute.name,
        type=serial or attribute.type,
        not_null=not attribute.allow_null or attribute.generated is not None or serial is not None,
        default=_serial_default(table, attribute.name, schema) if serial else _expected_default(attribute),
        identity=attribute.generated,
    )


def _serial_default(table: str, column: str, schema: str) -> str:
    """The sequence PostgreSQL creates for a serial column; public is on the read's search_path, so unqualified."""
    sequence = f"{table}_{column}_seq"
    return f"nextval('{sequence if schema == 'public' else f'{schema}.{sequence}'}'::regclass)"


def _expected_default(attribute: model.Attribute) -> str | None:
    if attribute.default_sql is not None:
        return attribute.default_sql
    return None if attribute.default is None else sql_literal(attribute.default)


def sql_literal(value: model.Scalar) -> str:
    """Render a manifest's literal default as SQL: a quoted string, ``true``/``false``, or the number."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + value.replace("'", "''") + "'"


def _expected_indexes(table: model.Table) -> Iterator[Index]:
    for identity in table.identities:
        yield Index(
            identity.index_name,
            True,
            "btree",
            identity.keys,
            identity.where,
            (),
            identity.nulls_distinct,
            constraint=identity.constraint,
            deferrable=identity.deferrable,
        )
    for index in table.indexes:
        method = index.using or "btree"
        yield Index(index.name, index.unique, method, index.fields, index.where, index.include, index.nulls_distinct)
    tenant = table.multitenancy.attribute if table.multitenancy.strategy == "attribute" else None
    for attribute in table.attributes:
        ref = attribute.references
        if ref is not None and ref.index and ref.index_name:
            keys = (attribute.name,) if tenant in (None, attribute.name) else (str(tenant), attribute.name)
            yield Index(ref.index_name, False, "btree", keys, None, (), True)
    for foreign_key in table.foreign_keys:
        if foreign_key.index and foreign_key.index_name:
            columns = foreign_key.columns
            indexed = columns if tenant is None or tenant in columns else (tenant, *columns)
            yield Index(foreign_key.index_name, False, "btree", indexed, None, (), True)


def _expected_foreign_keys(table: model.Table, schema: str) -> Iterator[ForeignKey]:
    for attribute in table.attributes:
        ref = attribute.references
        if ref is None:
            continue
        yield ForeignKey(
            name=ref.name,
            columns=(attribute.name,),
            ref_schema=ref.schema or schema,
            ref_table=ref.table,
            ref_columns=(ref.column,),
            on_delete=_expected_action(ref.on_delete),
            on_update=_expected_action(ref.on_update),
            deferrable=ref.deferrable,
            match=ref.match,
        )
    for foreign_key in table.foreign_keys:
        yield ForeignKey(
            name=foreign_key.name,
            columns=foreign_key.columns,
            ref_schema=foreign_key.schema or schema,
            ref_table=foreign_key.table,
            ref_columns=foreign_key.ref_columns,
            on_delete=_expected_action(foreign_key.on_delete),
            on_update=_expected_action(foreign_key.on_update),
            deferrable=foreign_key.deferrable,
            match=foreign_key.match,
        )


def _expected_action(action: model.Action | None) -> RefAction:
    return RefAction("noAction") if action is None else RefAction(action.kind, action.columns)
