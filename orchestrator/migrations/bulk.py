"""Read what every tenant has applied with a few queries, whatever the number of tenants.

django-tenants asks each schema in turn, which makes a no-op over thousands of tenants take minutes. Here one
query finds which tenant schemas exist and have a ``schema_migrations`` (with our columns or Ecto's only),
then one query per thousand tenants reads their rows (``UNION ALL`` statements of 50 tenants each, sent
together). A rollout only opens a connection for the tenants that are behind. A tenant whose
``schema_migrations`` is another tool's (dbmate's, ...) is not read: its ``applied`` is a ``ForeignTable``,
which the planner refuses, so that tenant fails and the others go on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from orchestrator.migrations import recorder
from orchestrator.migrations.recorder import Applied

ARMS = 50
"""Tenants per ``UNION ALL`` statement: PostgreSQL's planning time grows faster than the number of arms (500
arms took 70-110 ms to plan, ten statements of 50 a third of that)."""
BATCH = 1000
"""Tenants per query: its statements are sent together (one round trip) and their results read in turn."""


@dataclass
class TenantState:
    exists: bool = False
    has_table: bool = False
    adopted: bool = False  # our columns (name, checksum, duration_ms) are there
    applied: dict[int, Applied] = field(default_factory=dict)
    foreign: str | None = None  # why its schema_migrations is another tool's (then applied is a ForeignTable)


def states(conn: psycopg.Connection[Any], tenants: Sequence[str], batch: int = BATCH) -> dict[str, TenantState]:
    """Return every tenant's state; a tenant whose schema is missing has ``exists=False``."""
    result = {tenant: TenantState() for tenant in tenants}
    names = list(tenants)
    for (name,) in conn.execute("SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname = ANY (%s)", (names,)):
        result[name].exists = True
    for name, columns in recorder.layouts(conn, names).items():
        found = result[name]
        found.has_table = True
        found.foreign = recorder.foreign_layout(name, columns)
        if found.foreign:
            found.applied = recorder.ForeignTable(found.foreign)
        found.adopted = not found.foreign and {c.name for c in columns} >= set(recorder.OURS)
    with_rows = [t for t in tenants if result[t].has_table and not result[t].foreign]
    for start in range(0, len(with_rows), batch):
        for tenant, version, name, checksum in _rows(conn, with_rows[start : start + batch], result):
            result[tenant].applied[int(version)] = Applied(int(version), name, checksum)
    return result


def _rows(conn: psycopg.Connection[Any], tenants: Sequence[str], known: dict[str, TenantState]) -> list[Any]:
    """Every row of ``tenants``' tables: one query of several ``UNION ALL`` statements (simple protocol)."""
    statements = [_union(tenants[start : start + ARMS], known) for start in range(0, len(tenants), ARMS)]
    cursor = conn.execute(sql.SQL(";\n").join(statements))
    rows = cursor.fetchall()
    while cursor.nextset():
        rows += cursor.fetchall()
    return rows


def _union(tenants: Sequence[str], known: dict[str, TenantState]) -> sql.Composed:
    parts = []
    for tenant in tenants:
        columns = sql.SQL("version, name, checksum" if known[tenant].adopted else "version, NULL::text, NULL::text")
        parts.append(
            sql.SQL("SELECT {}::text, {} FROM {}").format(
                sql.Literal(tenant), columns, sql.Identifier(tenant, "schema_migrations")
            )
        )
    return sql.SQL(" UNION ALL ").join(parts)
