"""The catalog oracle for tests: compare what migrations built with the model, fail with every difference.

Tests of generated migrations must not compare SQL text (two correct migrations can be spelled in many ways,
and a wrong one can look right). They apply the SQL to a real database and then ask PostgreSQL what it built:
``read_schema`` reads every table of a schema from ``pg_catalog``, ``expected`` says what the catalog should
show for a model table, ``differences`` lists what disagrees and ``assert_matches`` fails a test with all of it.
The reading and comparing live in ``orchestrator.catalog`` (``import`` and ``drift`` use them too); this module
adds the assertions and the server's own printing of check constraints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import psycopg

from orchestrator import model
from orchestrator.catalog import checks
from orchestrator.catalog.compare import differences, normalise_sql
from orchestrator.catalog.expect import expected, sql_literal
from orchestrator.catalog.read import (
    CatalogTable,
    Check,
    Column,
    ForeignKey,
    Index,
    PrimaryKey,
    RefAction,
    read_schema,
    read_schemas,
)

__all__ = [
    "CatalogTable",
    "Check",
    "Column",
    "ForeignKey",
    "Index",
    "PrimaryKey",
    "RefAction",
    "assert_absent",
    "assert_matches",
    "differences",
    "expected",
    "normalise_sql",
    "read_schema",
    "read_schemas",
    "sql_literal",
    "unfinished",
]

IGNORED_TABLES = frozenset({"schema_migrations"})
"""Tables ``assert_matches(only=True)`` never reports as extra: they belong to the migration runner."""


# -- Assertions ------------------------------------------------------------------------------------------------


def assert_matches(
    conn: psycopg.Connection[Any],
    tables: Iterable[model.Table],
    schema: str,
    *,
    only: bool = True,
    unsettled: Collection[str] = (),
) -> None:
    """Fail with every difference between the model's ``tables`` placed in ``schema`` and the live schema;
    with ``only``, tables the model does not list are differences too (``schema_migrations`` excepted).

    ``unsettled`` names indexes and constraints an online change is still building or validating: they may be
    missing, present, INVALID or NOT VALID, so differences about them are not reported."""
    live = read_schema(conn, schema)
    listed = list(tables)
    found: list[str] = []
    for table in listed:
        actual = live.get(table.name)
        want = expected(table, schema)
        if actual is not None:
            want = dataclasses.replace(want, checks=_server_checks(conn, schema, table))
        found += [f"table {schema}.{table.name}: missing"] if actual is None else differences(want, actual)
    if only:
        known = {t.name for t in listed} | IGNORED_TABLES
        found += [f"table {schema}.{name}: not in the model" for name in live if name not in known]
    found = [line for line in found if line.partition(":")[0].rpartition(".")[2] not in unsettled]
    if found:
        raise AssertionError(_report(f"schema {schema!r} does not match the model", found))


def _server_checks(conn: psycopg.Connection[Any], schema: str, table: model.Table) -> tuple[Check, ...]:
    """Return the model's checks as this server prints them (``orchestrator.catalog.checks``)."""
    return checks.server_checks(conn, schema, table.name, table.check_constraints)


def unfinished(conn: psycopg.Connection[Any], schemas: Sequence[str]) -> list[str]:
    """What an online migration must never leave behind in ``schemas``: constraints still NOT VALID, INVALID
    indexes (a concurrent build that failed), and helper checks of an online NOT NULL (``CHECK (c IS NOT NULL)``)."""
    rows = conn.execute(
        "SELECT 'constraint ' || n.nspname || '.' || c.relname || '.' || k.conname || ' NOT VALID' "
        "FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = ANY(%(s)s) AND NOT k.convalidated "
        "UNION ALL SELECT 'index ' || n.nspname || '.' || c.relname || ' INVALID' "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = ANY(%(s)s) AND NOT (i.indisvalid AND i.indisready) "
        "UNION ALL SELECT 'helper check ' || n.nspname || '.' || c.relname || '.' || k.conname "
        "FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = ANY(%(s)s) AND k.contype = 'c' "
        "AND pg_get_constraintdef(k.oid) ~ '^CHECK \\(\\(?\\S+ IS NOT NULL\\)?\\)$' ORDER BY 1",
        {"s": list(schemas)},
    ).fetchall()
    return [str(r[0]) for r in rows]


def assert_absent(conn: psycopg.Connection[Any], schema: str, table_names: Iterable[str]) -> None:
    """Fail if any of ``table_names`` exists in ``schema``."""
    live = read_schema(conn, schema)
    found = [f"table {schema}.{name}: exists" for name in table_names if name in live]
    if found:
        raise AssertionError(_report(f"schema {schema!r} has tables that should be gone", found))


def _report(title: str, found: list[str]) -> str:
    count = f"{len(found)} difference{'s' if len(found) != 1 else ''}"
    return f"{title} ({count}):\n" + "\n".join(f"  - {line}" for line in found)
