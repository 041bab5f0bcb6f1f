"""Shared fixtures: a real PostgreSQL for every test that needs one, never a mock, never a skip.

The server is the one named by ``ORCHESTRATOR_TEST_DATABASE_URL`` when set (CI sets it to the machine's
PostgreSQL 15), else an embedded pgserver PostgreSQL 16 started once for the session in a temporary directory.
Each test that asks for ``database_url`` gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import IO, Any, TypeVar

import psycopg
import pytest
from psycopg import conninfo, sql
from psycopg.rows import dict_row

REPO_ROOT = Path(__file__).resolve().parent.parent

T = TypeVar("T")


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """Return a URL for the maintenance database of the test server.

    The embedded server's data lives in a directory of its own, not under pytest's temporary root: as root,
    PostgreSQL runs as pgserver's system user, and every new pytest session makes that root private again
    (mode 0700), which would cut a server still in use by another session off from its own files.
    """
    url = os.environ.get("ORCHESTRATOR_TEST_DATABASE_URL")
    if url:
        yield url
        return
    data = Path(tempfile.mkdtemp(prefix="orchestrator-test-pg-"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        srv = pgserver.get_server(data, cleanup_mode="stop")
    yield str(srv.get_uri("postgres"))
    srv.cleanup()
    shutil.rmtree(data, ignore_errors=True)


def with_dbname(url: str, dbname: str) -> str:
    params = conninfo.conninfo_to_dict(url)
    params["dbname"] = dbname
    return conninfo.make_conninfo("", **params)


def fresh_database(server_url: str) -> Iterator[str]:
    """A fixture's body: a URL for a fresh, empty database, dropped after the test."""
    name = f"orch_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield with_dbname(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def database_url(server_url: str) -> Iterator[str]:
    """Return a URL for a fresh, empty database; drop it after the test."""
    yield from fresh_database(server_url)


def columns(url: str, schema: str, table: str) -> list[str]:
    """The live columns of ``schema.table``, in order (empty when the table does not exist)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND "
            "table_name = %s ORDER BY ordinal_position",
            (schema, table),
        ).fetchall()
    return [str(r[0]) for r in rows]


@dataclass
class Result:
    code: int
    out: str
    err: str


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without ORCHESTRATOR_* settings, plus ``env``: what a CLI subprocess sees."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")} | (env or {})


def start_cli(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    stdout: int = subprocess.PIPE,
    stderr: int | IO[str] = subprocess.PIPE,
) -> Popen[str]:
    """Start ``python -m orchestrator`` in the background (for tests that kill or signal it).

    A long-running process that logs much should get a file for ``stderr``: a pipe nobody reads fills up
    (64 KiB) and blocks the process's next log line.
    """
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=cwd,
        env=cli_env(env),
        stdout=stdout,
        stderr=stderr,
        text=True,
    )


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
    """Run ``python -m orchestrator`` in a subprocess, as a user would; return exit code and output.

    A run that outlives ``timeout`` fails the test with every thread's stack (faulthandler), not just "timed out".
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=cwd,
        env=cli_env(env) | {"PYTHONFAULTHANDLER": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        out, err = proc.communicate(timeout=30)
        stacks = "\n".join(line for line in err.splitlines() if not line.startswith("{"))
        raise AssertionError(f"orchestrator {' '.join(args)} still ran after {timeout} s:\n{stacks[-8000:]}") from None
    return Result(proc.returncode, out, err)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def wait_for(
    check: Callable[[], T],
    what: str,
    *,
    timeout: float = 60,
    interval: float = 0.05,
    ignore: tuple[type[BaseException], ...] = (),
    process: Popen[str] | None = None,
) -> T:
    """Poll ``check`` until it returns something truthy, and return that; fail naming ``what`` after ``timeout`` s.

    For tests that must wait for a state (a session waiting for a lock, a table created by a daemon) instead of
    sleeping and hoping: the bound is generous, so only a state that never comes fails, however loaded the machine.
    Exceptions of the ``ignore`` types count as "not yet". When ``process`` (the one expected to bring the state
    about) exits first, fail at once with its exit code and output.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the process exited ({process.returncode}) before {what}:\n{out}\n{err}")
        try:
            result = check()
            if result:
                return result
        except ignore as exc:
            last = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last!r})" if last else ""
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}{detail}")
        time.sleep(interval)


def sessions(url: str, where: str, params: Sequence[object] = ()) -> list[dict[str, Any]]:
    """The orchestrator's live sessions (``application_name = 'orchestrator'``) on ``url``'s database that match
    ``where``, a condition on ``pg_stat_activity`` columns (pid, state, wait_event_type, query, query_start, ...)
    with ``%s`` placeholders for ``params`` (a literal ``%`` is written ``%%``).

    Other databases on the server (other tests, other checkouts) are never looked at.
    """
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        return _sessions(conn, where, params)


def wait_for_session(
    url: str, where: str, what: str, params: Sequence[object] = (), process: Popen[str] | None = None
) -> dict[str, Any]:
    """Wait until an orchestrator session on ``url``'s database matches ``where`` (see :func:`sessions`); return
    its ``pg_stat_activity`` row. One connection polls, so a short-lived state (a 200 ms lock wait) is seen.
    ``process``: see :func:`wait_for`."""
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        return wait_for(lambda: _sessions(conn, where, params), what, process=process)[0]


def _sessions(conn: psycopg.Connection[dict[str, Any]], where: str, params: Sequence[object]) -> list[dict[str, Any]]:
    # autocommit (the callers' connections): inside a transaction PostgreSQL keeps serving its first snapshot of
    # pg_stat_activity, and the poll would never see the state change
    query = sql.SQL(
        "SELECT * FROM pg_stat_activity WHERE application_name = 'orchestrator' AND datname = current_database() "
        "AND pid <> pg_backend_pid() AND ({})"
    ).format(sql.SQL(where))  # a test's own condition text, never outside input
    return conn.execute(query, params).fetchall()
