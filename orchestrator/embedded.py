"""The embedded PostgreSQL a repo uses when it has no URL: ``pgserver``'s bundled server, data under
``<root>/.orchestrator/pgdata``, one database per repo.

It is started on demand and left running (``cleanup_mode=None``) so the next command reuses it instead of
paying a start-up each time; PostgreSQL's own postmaster.pid keeps two processes from starting it twice, and
pgserver's file lock serialises the start itself. ``make clean`` stops every such server under
``.orchestrator/`` (``python -m orchestrator.embedded stop .orchestrator``) before removing the directory.

It is a development convenience only: ``ORCHESTRATOR_EMBEDDED=0`` (set by the container image) turns it off, and
``pgserver`` is then not needed at all (it is the optional extra ``orchestrator[embedded]``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from orchestrator.errors import DatabaseError

SWITCH = "ORCHESTRATOR_EMBEDDED"
"""The environment variable that allows (unset, ``1``) or forbids (``0``) the embedded server."""

_ALLOWING = frozenset({"", "1", "true", "yes", "on"})

_servers: dict[Path, Any] = {}


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a repo without a URL may use the embedded server: yes unless ``ORCHESTRATOR_EMBEDDED`` says
    otherwise. Any value but unset, empty, ``1``, ``true``, ``yes`` or ``on`` forbids it (a typo fails closed)."""
    env = os.environ if environ is None else environ
    return env.get(SWITCH, "").strip().lower() in _ALLOWING


def switch_setting(environ: Mapping[str, str] | None = None) -> str:
    """The switch as it is set, for messages: ``ORCHESTRATOR_EMBEDDED=0``."""
    env = os.environ if environ is None else environ
    return f"{SWITCH}={env.get(SWITCH, '')}"


def data_dir(root: Path) -> Path:
    return root / ".orchestrator" / "pgdata"


def server(root: Path) -> Any:
    """Return the running embedded server for ``root``, starting it (and running initdb) if needed."""
    if not enabled():
        # Callers resolve URLs first (db.resolve_url), which reports this as a located error; this is the guard.
        raise DatabaseError(f"the embedded PostgreSQL is disabled ({switch_setting()})")
    path = data_dir(root).resolve()
    if path not in _servers:
        path.mkdir(parents=True, exist_ok=True)
        try:
            with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset (containers)
                warnings.simplefilter("ignore")
                import pgserver  # imported here: commands that need no database must not pay for it

                _servers[path] = pgserver.get_server(path, cleanup_mode=None)
        except ImportError as exc:
            raise DatabaseError(
                "the embedded PostgreSQL needs the pgserver package (pip install 'orchestrator[embedded]'); "
                "or give the repo a database URL"
            ) from exc
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


def postmaster_pid(pgdata: Path) -> int | None:
    """The pid in ``pgdata``'s postmaster.pid when that process is alive, else None (no server, or a stale file)."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, owned by another user
        return pid
    return pid


def stop_data_dir(pgdata: Path) -> bool:
    """Stop the server of ``pgdata`` (``pg_ctl stop -m fast``, as the data directory's owner) if one runs; return
    whether one was stopped. Never starts one."""
    if postmaster_pid(pgdata) is None:
        return False
    try:
        with warnings.catch_warnings():  # platformdirs, as in ``server``
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH
    except ImportError as exc:
        raise DatabaseError(f"cannot stop the embedded PostgreSQL in {pgdata}: pgserver is not installed") from exc
    user = pwd.getpwuid(pgdata.stat().st_uid).pw_name if os.geteuid() == 0 else None  # pg_ctl refuses root
    command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "-t", "60", "stop"]
    done = subprocess.run(command, user=user, capture_output=True, text=True, check=False, timeout=90)
    if done.returncode != 0 and postmaster_pid(pgdata) is not None:
        raise DatabaseError(f"cannot stop the embedded PostgreSQL in {pgdata}: {done.stderr.strip()}")
    _servers.pop(pgdata.resolve(), None)
    return True


def stop(root: Path) -> bool:
    """Stop the embedded server of ``root`` if it runs; return whether one was stopped."""
    return stop_data_dir(data_dir(root))


def stop_all(under: Path) -> list[Path]:
    """Stop every embedded server whose data directory lies under ``under`` (``make clean``); return their
    data directories. Nothing to do when ``under`` does not exist."""
    stopped = []
    for pidfile in sorted(under.rglob("postmaster.pid")) if under.is_dir() else []:
        if stop_data_dir(pidfile.parent):
            stopped.append(pidfile.parent)
    return stopped


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m orchestrator.embedded stop DIR...``: stop the embedded servers under each DIR."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "stop":
        print("usage: python -m orchestrator.embedded stop DIR...", file=sys.stderr)
        return 2
    failed = False
    for directory in args[1:]:
        try:
            for pgdata in stop_all(Path(directory)):
                print(f"stopped the embedded PostgreSQL in {pgdata}")
        except (DatabaseError, OSError, subprocess.SubprocessError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
