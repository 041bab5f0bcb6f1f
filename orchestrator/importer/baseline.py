"""The baseline: make the imported schemas count as current, so nothing is applied to them again.

The migrations are generated the normal way (``generate.run``, the code path of ``generate-migrations``), so
the snapshots and files are exactly what a later ``generate-migrations`` diffs against. They are then recorded
as applied exactly as the run loop records an applied migration: a ``schema_migrations`` row per target (name
and checksum of the file) and the text in ``orchestrator.migrations`` (per scope), after ``recorder.ensure``.

A tenant schema is recorded only when its live catalog is the template's, table for table (read in bulk with
``catalog.read.read_schemas`` and compared with ``catalog.compare.differences``): a tenant that was changed by
hand is reported with its differences, not baselined blindly. A tenant schema without tables is just behind:
``migrate --tenants`` creates its tables.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from orchestrator.catalog import compare, read
from orchestrator.migrations import files, recorder

BASELINE_NAME = "baseline"
SKIPPED_TABLES = frozenset({"schema_migrations"})


@dataclass
class TenantCheck:
    """How each tenant schema compares with the template."""

    matching: list[str] = field(default_factory=list)
    behind: list[str] = field(default_factory=list)
    """No tables yet: migrate --tenants creates them."""
    differing: dict[str, list[str]] = field(default_factory=dict)


def check_tenants(
    conn: psycopg.Connection[Any], template: str, template_tables: dict[str, read.CatalogTable], tenants: Sequence[str]
) -> TenantCheck:
    """Compare every tenant schema with the template (a few catalog queries for all of them)."""
    live = read.read_schemas(conn, [t for t in tenants if t != template])
    result = TenantCheck()
    wanted = {name: t for name, t in template_tables.items() if name not in SKIPPED_TABLES}
    for tenant in tenants:
        if tenant == template:
            result.matching.append(tenant)
            continue
        tables = {n: t for n, t in live.get(tenant, {}).items() if n not in SKIPPED_TABLES}
        if not tables:
            result.behind.append(tenant)
            continue
        found = _differences(template, tenant, wanted, tables)
        if found:
            result.differing[tenant] = found
        else:
            result.matching.append(tenant)
    return result


def _differences(
    template: str, tenant: str, wanted: dict[str, read.CatalogTable], tables: dict[str, read.CatalogTable]
) -> list[str]:
    found: list[str] = []
    for name, table in sorted(wanted.items()):
        actual = tables.get(name)
        if actual is None:
            found.append(f"table {tenant}.{name}: missing")
        else:
            found += compare.differences(relocate(table, template, tenant), actual)
    found += [f"table {tenant}.{name}: not in the template {template}" for name in sorted(tables.keys() - wanted)]
    return found


def relocate(table: read.CatalogTable, template: str, tenant: str) -> read.CatalogTable:
    """The template's table as it reads in ``tenant``: same-schema references and sequence names moved."""

    def moved(default: str | None) -> str | None:
        if default is None:
            return None
        for old, new in ((f"'{template}.", f"'{tenant}."), (f'\'"{template}".', f'\'"{tenant}".')):
            default = default.replace(old, new)
        return default

    return dataclasses.replace(
        table,
        schema=tenant,
        columns=tuple(dataclasses.replace(c, default=moved(c.default)) for c in table.columns),
        foreign_keys=tuple(
            dataclasses.replace(fk, ref_schema=tenant) if fk.ref_schema == template else fk for fk in table.foreign_keys
        ),
    )


def parse(migrations: Iterable[tuple[Path, str]]) -> list[files.MigrationFile]:
    """The generated migrations as the runner reads them (version, name, checksum of the text)."""
    return sorted((files.parse(path, text) for path, text in migrations), key=lambda m: m.version)


def record(
    conn: psycopg.Connection[Any],
    global_migrations: Sequence[files.MigrationFile],
    tenant_migrations: Sequence[files.MigrationFile],
    tenants: Sequence[str],
    *,
    global_schema: str = "public",
) -> None:
    """Record the migrations as applied: globally, and in each of ``tenants`` (one transaction per target)."""
    recorder.ensure(conn, global_schema)
    with conn.transaction():
        for migration in global_migrations:
            _record(conn, global_schema, migration)
            _store(conn, "global", migration)
        for migration in tenant_migrations:
            _store(conn, "tenant", migration)
    for tenant in tenants:
        recorder.ensure_target(conn, tenant)
        with conn.transaction():
            for migration in tenant_migrations:
                _record(conn, tenant, migration)


def _record(conn: psycopg.Connection[Any], schema: str, migration: files.MigrationFile) -> None:
    recorder.record(
        conn, schema, version=migration.version, name=migration.name, checksum=migration.checksum, duration_ms=0
    )


def _store(conn: psycopg.Connection[Any], scope: str, migration: files.MigrationFile) -> None:
    recorder.store_text(
        conn, scope, version=migration.version, name=migration.name, checksum=migration.checksum, body=migration.text
    )
