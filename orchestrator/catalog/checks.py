"""Check constraints as this server prints them: the expected side of a check comparison.

PostgreSQL stores a parsed tree and reprints it in ways text normalisation cannot undo (``BETWEEN`` becomes two
comparisons, ``IN (...)`` becomes ``= ANY (ARRAY[...])``). So each expected check is added to a throw-away TEMP
copy (``LIKE``) of the live table, in a transaction that is rolled back, and ``pg_get_constraintdef`` is read
back. A check the server refuses there (its column is gone from the live table: that is drift of its own) keeps
the model's text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from orchestrator import model
from orchestrator.catalog.read import Check, sort_named

_PROBE = "orchestrator_check_probe"


def server_checks(
    conn: psycopg.Connection[Any], schema: str, table: str, checks: Sequence[model.CheckConstraint]
) -> tuple[Check, ...]:
    """Return ``checks`` as the server prints them, probed on a copy of the live ``schema.table``."""
    return probe(conn, schema, table, checks)[0]


def probe(
    conn: psycopg.Connection[Any], schema: str, table: str, checks: Sequence[model.CheckConstraint]
) -> tuple[tuple[Check, ...], bool]:
    """Return the checks as ``server_checks`` does, and whether the server printed every one of them (False:
    some kept the model's text because the live table could not take them)."""
    if not checks:
        return (), True
    forms = []
    complete = True
    with conn.transaction(force_rollback=True):
        copy = sql.Identifier(_PROBE)
        conn.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {})").format(copy, sql.Identifier(schema, table)))
        for check in checks:
            printed = _printed(conn, check)
            complete = complete and printed is not None
            forms.append(Check(check.name, printed or f"CHECK ({check.check})"))
    return sort_named(forms), complete


def _printed(conn: psycopg.Connection[Any], check: model.CheckConstraint) -> str | None:
    """Add one check to the probe (in a savepoint) and return its text as the server prints it, or None."""
    body = check.check + "\n" if "--" in check.check else check.check  # a trailing comment must not eat ")"
    try:
        with conn.transaction():
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({})").format(
                    sql.Identifier(_PROBE),
                    sql.Identifier(check.name),
                    sql.SQL(body),  # the user's own SQL
                )
            )
            row = conn.execute(
                "SELECT pg_catalog.pg_get_constraintdef(oid) FROM pg_catalog.pg_constraint "
                "WHERE conrelid = %s::regclass AND conname = %s",
                (_PROBE, check.name),
            ).fetchone()
    except psycopg.Error:
        return None
    return str(row[0]) if row else None
