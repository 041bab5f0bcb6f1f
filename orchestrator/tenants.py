"""List a repo's tenant schemas (AshPostgres's ``list_tenants``) from its tenant source.

Tenant names come from outside our control (a query over the app's own tables, or the catalog), so every name
is checked against the identifier rule before anything uses it; the rest of the program only ever sees valid
names, and quotes them anyway. A ``query`` runs in a read-only transaction with a statement timeout, so a
mistaken query can neither change data nor hang the daemon.

Before the first migration the registry table a query reads does not exist yet; that is "no tenants yet"
(with a note), not a failure, so a fresh install can apply its global migrations first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import psycopg

from orchestrator import model
from orchestrator.errors import DatabaseError
from orchestrator.migrations import retry

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
QUERY_TIMEOUT_MS = 30_000

_SCHEMA_PATTERN_SQL = """
    SELECT nspname FROM pg_catalog.pg_namespace
    WHERE nspname LIKE %s AND nspname NOT LIKE 'pg\\_%%' AND nspname <> 'information_schema'
    ORDER BY 1
"""


@dataclass(frozen=True)
class TenantList:
    """What a tenant source returned: valid names in order, rejected ones, and a note for the user."""

    repo: str
    source: str
    tenants: tuple[str, ...]
    invalid: tuple[str, ...] = ()
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "source": self.source,
            "tenants": list(self.tenants),
            "invalid": list(self.invalid),
            "note": self.note,
        }


def list_tenants(repo: model.Repo, conn: psycopg.Connection[Any] | None) -> TenantList:
    """Return the repo's tenants; ``conn`` may be None for a ``static`` source."""
    source = repo.tenants
    if source is None:
        raise ValueError(f"repo {repo.name} has no tenants source")
    if source.kind == "static":
        return TenantList(repo.name, "static", source.static)
    assert conn is not None
    try:
        if source.kind == "schemaPattern":
            rows = conn.execute(_SCHEMA_PATTERN_SQL, (source.schema_pattern,)).fetchall()
        else:
            rows = _run_query(conn, str(source.query))
    except psycopg.errors.UndefinedTable as exc:
        note = f"no tenants yet: {_first_line(exc)} (the global migrations create it)"
        return TenantList(repo.name, source.kind, (), note=note)
    except psycopg.Error as exc:
        if retry.is_transient(exc):  # the connection was lost: the caller retries, it is not the query's fault
            raise
        raise DatabaseError(f"repo {repo.name}: the tenant {source.kind} failed: {_first_line(exc)}") from None
    return _checked(repo.name, source.kind, rows)


def _run_query(conn: psycopg.Connection[Any], query: str) -> list[Any]:
    with conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        conn.execute("SELECT set_config('statement_timeout', %s, true)", (str(QUERY_TIMEOUT_MS),))
        cursor = conn.execute(query)  # the user's own SQL, by design (DESIGN.md: SQL text fields)
        if cursor.description is None:
            raise DatabaseError("the tenant query returned no rows (it must be a SELECT of one column)")
        return cursor.fetchall()


def _checked(repo: str, kind: str, rows: list[Any]) -> TenantList:
    valid: list[str] = []
    invalid: list[str] = []
    for row in rows:
        name = row[0]
        if isinstance(name, str) and IDENTIFIER.match(name):
            if name not in valid:
                valid.append(name)
        elif name is not None:
            invalid.append(str(name))
    return TenantList(repo, kind, tuple(valid), tuple(invalid))


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0]
