"""Reading every tenant's applied versions at once (``bulk.states``): from ``PARALLEL_MIN`` tenants on, half of
them are read on a second connection; each row must still land with its own tenant, whichever half read it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from orchestrator.migrations import bulk

TENANTS = bulk.PARALLEL_MIN + 51  # an odd number: the halves differ in size


def _fleet(url: str) -> list[str]:
    """Tenants with 1-4 versions each (ours, and every seventh with Ecto's table), one whose table is
    dbmate's, and one without a schema; names are not all plain (a quote, upper case)."""
    names = [f't{i:03d}"x' if i % 50 == 0 else f"T{i:03d}" if i % 9 == 0 else f"t{i:03d}" for i in range(TENANTS)]
    with psycopg.connect(url) as conn:  # one transaction
        for i, name in enumerate(names):
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
            table = sql.Identifier(name, "schema_migrations")
            if i % 7 == 0:  # Ecto's table
                conn.execute(
                    sql.SQL("CREATE TABLE {} (version bigint PRIMARY KEY, inserted_at timestamp(0))").format(table)
                )
                conn.execute(
                    sql.SQL("INSERT INTO {} (version) SELECT generate_series(1, %s)").format(table), (i % 4 + 1,)
                )
            else:
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE {} (version bigint PRIMARY KEY, inserted_at timestamp(0), name text, "
                        "checksum text, duration_ms int)"
                    ).format(table)
                )
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (version, name, checksum) "
                        "SELECT v, %s || v, 'c' || v FROM generate_series(1, %s) v"
                    ).format(table),
                    (name, i % 4 + 1),
                )
        conn.execute("CREATE SCHEMA dbmate_made")
        conn.execute("CREATE TABLE dbmate_made.schema_migrations (version varchar(128) PRIMARY KEY)")
        conn.execute("INSERT INTO dbmate_made.schema_migrations VALUES ('20240101000000')")
    return names


@pytest.mark.parametrize("parallel", [True, False])
def test_every_tenant_gets_its_own_rows_whichever_connection_read_them(database_url: str, parallel: bool) -> None:
    names = _fleet(database_url)
    opened: list[int] = []

    @contextlib.contextmanager
    def helper() -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(database_url, autocommit=True) as extra:
            opened.append(extra.info.backend_pid)
            yield extra

    with psycopg.connect(database_url, autocommit=True) as conn:
        found = bulk.states(conn, [*names, "dbmate_made", "missing"], helper=helper if parallel else None)
        own = conn.info.backend_pid
    assert len(opened) == (1 if parallel else 0) and own not in opened
    for i, name in enumerate(names):
        state = found[name]
        assert state.exists and state.has_table and not state.foreign
        versions = list(range(1, i % 4 + 2))
        assert sorted(state.applied) == versions, name
        ecto = i % 7 == 0
        assert state.adopted is not ecto
        assert [(a.name, a.checksum) for _, a in sorted(state.applied.items())] == [
            (None, None) if ecto else (f"{name}{v}", f"c{v}") for v in versions
        ]
    assert found["dbmate_made"].foreign and not found["dbmate_made"].adopted  # another tool's: not read
    assert not found["missing"].exists and not found["missing"].applied


def test_a_failing_helper_fails_the_read(database_url: str) -> None:
    """The caller retries the whole read (``ControlPlane.run``): a half that could not be read is an error,
    never a tenant shown with nothing applied."""
    names = _fleet(database_url)

    @contextlib.contextmanager
    def helper() -> Iterator[psycopg.Connection[Any]]:
        raise psycopg.OperationalError("connection lost")
        yield  # pragma: no cover

    with psycopg.connect(database_url, autocommit=True) as conn, pytest.raises(psycopg.OperationalError):
        bulk.states(conn, names, helper=helper)
