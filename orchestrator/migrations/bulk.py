"""Read what every tenant has applied with a few queries, whatever the number of tenants.

django-tenants asks each schema in turn, which makes a no-op over thousands of tenants take minutes. Here one
query finds which tenant schemas exist and have a ``schema_migrations`` (with our columns or Ecto's only),
then one ``UNION ALL`` query per batch of tenants reads their rows. A rollout only opens a connection for the
tenants that are behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from orchestrator.migrations.recorder import Applied

BATCH = 500
"""Tenants per UNION ALL query: large enough to need few round trips, small enough for the planner."""


@dataclass
class TenantState:
    exists: bool = False
    has_table: bool = False
    adopted: bool = False  # our columns (name, checksum, duration_ms) are there
    applied: dict[int, Applied] = field(default_factory=dict)


_TABLES = """
SELECT n.nspname, count(a.attname) FILTER (WHERE a.attname IN ('name', 'checksum', 'duration_ms'))
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND NOT a.attisdropped
WHERE c.relname = 'schema_migrations' AND c.relkind IN ('r', 'p') AND n.nspname = ANY (%s)
GROUP BY n.nspname
"""


def states(conn: psycopg.Connection[Any], tenants: Sequence[str], batch: int = BATCH) -> dict[str, TenantState]:
    """Return every tenant's state; a tenant whose schema is missing has ``exists=False``."""
    result = {tenant: TenantState() for tenant in tenants}
    names = list(tenants)
    for (name,) in conn.execute("SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname = ANY (%s)", (names,)):
        result[name].exists = True
    for name, ours in conn.execute(_TABLES, (names,)).fetchall():
        result[name].has_table = True
        result[name].adopted = ours == 3
    with_rows = [t for t in tenants if result[t].has_table]
    for start in range(0, len(with_rows), batch):
        for tenant, version, name, checksum in conn.execute(_union(with_rows[start : start + batch], result)):
            result[tenant].applied[int(version)] = Applied(int(version), name, checksum)
    return result


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
