"""The embedded PostgreSQL a repo uses when it has no URL: ``pgserver``'s bundled server, data under
``<root>/.orchestrator/pgdata``, one database per repo.

It is started on demand and left running (``cleanup_mode=None``) so the next command reuses it instead of
paying a start-up each time; PostgreSQL's own postmaster.pid keeps two processes from starting it twice, and
pgserver's file lock serialises the start itself. ``make clean`` removes it with the rest of ``.orchestrator/``.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from orchestrator.errors import DatabaseError

_servers: dict[Path, Any] = {}


def data_dir(root: Path) -> Path:
    return root / ".orchestrator" / "pgdata"


def server(root: Path) -> Any:
    """Return the running embedded server for ``root``, starting it (and running initdb) if needed."""
    path = data_dir(root).resolve()
    if path not in _servers:
        path.mkdir(parents=True, exist_ok=True)
        try:
            with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset (containers)
                warnings.simplefilter("ignore")
                import pgserver  # imported here: commands that need no database must not pay for it

                _servers[path] = pgserver.get_server(path, cleanup_mode=None)
        except Exception as exc:  # pgserver raises plain exceptions with the server's output
            raise DatabaseError(f"cannot start the embedded PostgreSQL in {path}: {exc}") from exc
    return _servers[path]


def url(root: Path, database: str) -> str:
    """Return a connection URL for ``database`` on the embedded server (started if needed; nothing created)."""
    return str(server(root).get_uri(database))


def ensure_database(root: Path, database: str) -> None:
    """Create ``database`` on the embedded server if it is missing (the embedded default's databases)."""
    with psycopg.connect(server(root).get_uri("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):  # another process was first
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def database_url(root: Path, database: str) -> str:
    """``url``, with the database created first: what a command that is about to use it needs."""
    ensure_database(root, database)
    return url(root, database)


def stop(root: Path) -> bool:
    """Stop the embedded server of ``root`` if it runs; return whether one was stopped."""
    path = data_dir(root).resolve()
    if not (path / "postmaster.pid").exists():
        return False
    from pgserver._commands import pg_ctl

    srv = server(root)
    pg_ctl(["-w", "stop"], pgdata=path, user=srv.system_user)
    _servers.pop(path, None)
    return True
