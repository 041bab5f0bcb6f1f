"""The database backend of ``state``: generator state in ``orchestrator.state_files`` of the repo's database."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from orchestrator import db, model
from orchestrator.migrations import locking, recorder

_TABLE = sql.Identifier("orchestrator", "state_files")


class DatabaseStore:
    """State in ``orchestrator.state_files`` of the repo's database."""

    kind = "database"

    def __init__(self, repo: model.Repo, root: Path, control: Any = None) -> None:
        """``control``: the runner's control plane (the daemon's pool) to read and write through; without
        one, each call opens a connection of its own."""
        self.repo = repo
        if control is None:
            db.ensure_embedded_database(repo, root)
        self.info = db.conninfo(repo, root)
        self.control = control
        self._conn: psycopg.Connection[Any] | None = None
        self._ensured = False

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        if self._conn is not None:
            yield self._conn
            return
        if self.control is not None:
            with self.control.connection() as conn:
                if not self._ensured:
                    _ensure(conn)
                    self._ensured = True
                yield conn
            return
        with db.connect_to(self.info, self.repo) as conn:
            _ensure(conn)
            yield conn

    def read(self, prefix: str) -> dict[str, str]:
        with self._connection() as conn:
            rows = conn.execute(
                sql.SQL("SELECT path, body FROM {} WHERE starts_with(path, %s) ORDER BY path").format(_TABLE),
                (prefix.rstrip("/") + "/",),
            ).fetchall()
        return {str(path): str(body) for path, body in rows}

    def write(self, files: Mapping[str, str]) -> None:
        with self._connection() as conn, conn.transaction():
            for path, body in files.items():
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (path, body) VALUES (%s, %s) ON CONFLICT (path) DO UPDATE "
                        "SET body = EXCLUDED.body, written_at = now()"
                    ).format(_TABLE),
                    (path, body),
                )

    def delete(self, paths: Sequence[str]) -> None:
        with self._connection() as conn, conn.transaction():
            conn.execute(sql.SQL("DELETE FROM {} WHERE path = ANY (%s)").format(_TABLE), (list(paths),))

    @contextmanager
    def generating(self) -> Iterator[None]:
        opened = self.control.connection() if self.control is not None else db.connect_to(self.info, self.repo)
        with opened as conn:
            _ensure(conn)
            key = locking.key(db.database_name(self.info), "orchestrator:generate")
            with locking.advisory_lock(conn, key, self.repo.timeouts.lock_wait_ms, f"{self.repo.name} (generate)"):
                self._conn = conn
                try:
                    yield
                finally:
                    self._conn = None


def _ensure(conn: psycopg.Connection[Any]) -> None:
    recorder.create_all(
        conn,
        [
            sql.SQL("CREATE SCHEMA IF NOT EXISTS orchestrator"),
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (path text PRIMARY KEY, body text NOT NULL, "
                "written_at timestamptz NOT NULL DEFAULT now())"
            ).format(_TABLE),
        ],
    )
