"""Connections behind a bad network: the daemon's control plane retries a call on a fresh connection (not on
whatever the pool hands out next, which may have frozen while it sat there), and the watchdog abandons a silent
connection as soon as it can ask the server."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from orchestrator import model
from orchestrator.migrations import sessions
from orchestrator.migrations.sessions import PooledControl
from orchestrator.watchdog import Watchdog
from tests.conftest import wait_for
from tests.faultproxy import FaultProxy

POLICY = model.Retry(attempts=3, initial_delay_ms=10, max_delay_ms=50)


def _alive(url: str, pid: int) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() is not None


def test_a_control_call_retried_after_a_lost_pooled_connection_runs_on_a_fresh_one(database_url: str) -> None:
    watchdog = Watchdog(database_url)
    control = PooledControl(database_url, POLICY, watchdog)
    pids: list[int] = []

    def call(conn: psycopg.Connection[Any]) -> int:
        pids.append(conn.info.backend_pid)
        if len(pids) == 1:  # the first attempt loses its connection (the server ends the session)
            with psycopg.connect(database_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
            wait_for(lambda: not _alive(database_url, pids[0]), "the pooled session to end")
        conn.execute("SELECT 1")  # the retry's connection works
        return conn.info.backend_pid

    try:
        control.run(lambda conn: conn.info.backend_pid)  # the pool is open and serving
        assert control.run(call) == pids[1] != pids[0], "the retry succeeded, on another connection"
        # its own connection, closed once used: a pooled one would stay open (max_idle is a minute)
        wait_for(lambda: not _alive(database_url, pids[1]), "the fresh connection to be closed once used")
        after = control.run(lambda conn: conn.info.backend_pid)
        assert after not in pids and _alive(database_url, after), "the pool replaced its lost connection"
    finally:
        control.close()
        watchdog.close()


def test_a_silent_connection_is_abandoned_at_the_first_view_after_a_blind_spell(database_url: str) -> None:
    """The watchdog's own connection can be lost too (it crosses the same network). A client that had already
    waited past the grace when the server could be asked again is abandoned on that view, not one grace
    later: behind a network that keeps freezing connections, those spells added up to minutes."""
    refused = [2]  # the probe's first round: its connection and the one retry both fail

    def connect(info: str) -> psycopg.Connection[Any]:
        if refused[0]:
            refused[0] -= 1
            raise psycopg.OperationalError("the watchdog's connection was lost")
        return psycopg.connect(info, autocommit=True)

    watchdog = Watchdog(database_url, interval=3600, grace=0.5, connect=connect)  # rounds driven by the test
    conn = psycopg.connect(database_url, autocommit=True)
    try:
        entry = watchdog.watch(conn)
        conn.pgconn.send_query(b"SELECT 1")  # its answer is never read: the client waits, the server is idle
        watchdog.check()  # the client is seen waiting; the server cannot be asked
        assert refused == [0] and not entry.abandoned
        wait_for(lambda: _idle_for(database_url, conn.info.backend_pid) > 1.0, "the session to be idle past grace")
        watchdog.check()  # the first view: the client has waited longer than the grace
        assert entry.abandoned
    finally:
        watchdog.close()
        conn.close()


def _idle_for(url: str, pid: int) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM clock_timestamp() - state_change)::float8 FROM pg_stat_activity "
            "WHERE pid = %s AND state = 'idle'",
            (pid,),
        ).fetchone()
    return float(row[0]) if row else 0.0


def test_a_probe_lost_on_its_first_query_does_not_leave_its_session_behind(database_url: str) -> None:
    """The watchdog's connection can freeze before it has learnt its session's start (its first query): the
    session is still found (by pid and the watchdog's name) and terminated, not left idle on the server."""
    lost: list[psycopg.Connection[Any]] = []

    def connect(info: str) -> psycopg.Connection[Any]:
        conn = psycopg.connect(info, autocommit=True, application_name="orchestrator-watchdog")
        if not lost:  # the first probe: its first query never returns, and its goodbye never arrives
            lost.append(conn)

            def frozen(*args: object, **kwargs: object) -> Any:
                raise psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly")

            conn.execute = frozen  # type: ignore[method-assign]
            conn.close = lambda: None  # type: ignore[method-assign]
        return conn

    watchdog = Watchdog(database_url, interval=3600, connect=connect)  # rounds driven by the test
    conn = psycopg.connect(database_url, autocommit=True)
    try:
        watchdog.watch(conn)
        conn.pgconn.send_query(b"SELECT 1")  # a client waiting, so that the watchdog asks the server
        watchdog.check()  # the first probe is lost; the round asks again on a new one
        assert lost and _alive(database_url, lost[0].info.backend_pid), "the lost probe's session is still there"
        watchdog.close()  # sweeps what is left
        pid = lost[0].info.backend_pid
        wait_for(lambda: not _alive(database_url, pid), "the lost probe's session to be terminated")
    finally:
        watchdog.close()
        conn.close()
        for each in lost:
            psycopg.Connection.close(each)


def _never_used(url: str) -> list[int]:
    """Sessions of ours that never ran a query (what a connect frozen mid-handshake leaves)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name LIKE 'orchestrator%%' AND query_start IS NULL AND pid <> pg_backend_pid()"
        ).fetchall()
    return [int(pid) for (pid,) in rows]


def test_a_connect_frozen_mid_handshake_leaves_no_session_behind(database_url: str) -> None:
    """The server's last start-up message is lost: it has a ready session whose pid the client never learnt,
    and the client's connect times out. The watchdog finds that session (ours, never used, older than the
    connect's timeout) and terminates it; without that it would stay idle for good (its idle timeout is set
    by the first query, which never came)."""
    with FaultProxy(database_url, seed=1, kinds=("freeze",)) as proxy:
        url = f"{proxy.url()} connect_timeout=2"
        watchdog = Watchdog(url)
        proxy.mute_handshakes = 1
        try:
            with pytest.raises(psycopg.errors.ConnectionTimeout):
                sessions.connect(url, watchdog)
            assert len(_never_used(database_url)) == 1, "the server kept the session its client never heard of"
        finally:
            watchdog.close()
        assert watchdog.swept == 1
        assert _never_used(database_url) == []


def test_a_pooled_connect_frozen_mid_handshake_leaves_no_session_behind(database_url: str) -> None:
    """The same for the daemon's pool, which connects in a thread of its own."""
    with FaultProxy(database_url, seed=1, kinds=("freeze",)) as proxy:
        url = f"{proxy.url()} connect_timeout=2"
        proxy.mute_handshakes = 1
        watchdog = Watchdog(url)
        control = PooledControl(url, POLICY, watchdog)
        try:
            assert control.run(lambda conn: conn.execute("SELECT 1").fetchone()) == (1,)
        finally:
            control.close()
            watchdog.close()
        assert proxy.faults["mute-handshake"] == 1
        assert watchdog.swept >= 1
        assert _never_used(database_url) == []
