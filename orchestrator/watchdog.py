"""Notice connections that went silent, and cut them loose so the caller can retry on a new one.

A connection can stop carrying bytes without either end being told: a dead middlebox, a hung sidecar proxy or a
lost NAT entry leaves it half-open, the kernel keeps ACKing, TCP keepalives never fire, and a client waiting for
an answer waits forever (psycopg's ``Connection.wait`` has no deadline). Client-side timeouts cannot tell such a
wait from a long statement, so the watchdog asks the server instead.

While a watched connection is inside a statement (libpq says the command is in progress), the watchdog looks up
its backend in ``pg_stat_activity`` on a connection of its own, every ``interval``:

* the backend is gone: nobody will ever answer, so the connection is abandoned at once;
* the backend is not running anything (``idle``, ``idle in transaction``) and has not been for ``grace`` seconds
  while the client kept waiting: the request or its answer was lost on the way, so the connection is abandoned;
* the backend is ``active``: it is working on our statement, however long it takes (``statementTimeout: 0s``
  backfills included), and the client waits.

Abandoning shuts the socket down (the waiting call returns with a lost-connection error, which the caller's
retry policy handles) and terminates the old backend if it is still there, so it cannot keep holding the
target's locks. When the watchdog cannot reach the server itself, a connection busy for longer than its
``limit`` (the repo's timeouts plus a margin, when they are finite) is abandoned on time alone.

The watchdog's own queries are guarded by a deadline (a second thread shuts its socket down), so a half-open
probe connection cannot stall it. It only queries while some watched connection is busy: an idle process asks
the server nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.pq import TransactionStatus

if TYPE_CHECKING:
    from orchestrator import db

OnAbandon = Callable[[int, str], None]
Orphan = tuple[int, datetime.datetime | None, float]
"""A server session to terminate: pid, backend_start (None: a probe of ours lost on its first query), and when
it is due (monotonic)."""
SessionView = tuple[str | None, float | None, float, datetime.datetime | None, datetime.datetime | None]
"""What the server says of a session: state, when it changed, its clock now, backend_start, query_start."""

_PROBE = """
SELECT p.pid, CASE WHEN a.wait_event_type = 'Lock' THEN 'waiting for a lock' ELSE a.state END,
    extract(epoch FROM a.state_change)::float8, extract(epoch FROM clock_timestamp())::float8,
    a.backend_start, a.query_start
FROM unnest(%s::int[]) AS p(pid) LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = p.pid
"""


@dataclass
class Watched:
    """One connection under watch; ``on_abandon`` is set by whoever uses it (to report which target it was)."""

    conn: psycopg.Connection[Any]
    pid: int
    sock: socket.socket  # a duplicate of the connection's socket: valid even if libpq closes its own
    limit: float | None = None  # seconds a statement may take when the server cannot be asked
    on_abandon: OnAbandon | None = None
    busy_since: float | None = None  # server clock: when the client was first seen waiting (as of the first view)
    busy_since_local: float | None = None  # monotonic clock: when the client was first seen waiting
    abandoned: bool = False
    backend_start: datetime.datetime | None = None  # with pid, names the server session (once it is prepared)
    users: int = 1  # nested watch() calls of the same connection share one entry
    query_start: datetime.datetime | None = (
        None  # the server's start of the statement seen last: a new one restarts the clock
    )


LINGER = 1.0
"""Seconds a closed connection's session may take to end by itself before it is terminated."""
PROBE_NAME = "orchestrator-watchdog"
PROBE_CONNECT_TIMEOUT = 2
STILLBORN_DELAY = 1.0
"""Seconds after a timed-out connect before its session is looked for: by then the session, started after the
connect began, is older than the connect's timeout."""

_START = "SELECT backend_start FROM pg_catalog.pg_stat_activity WHERE pid = pg_backend_pid()"
# A session is named by pid and start; a probe of ours lost before it learnt its start (frozen on its first
# query) by pid and the watchdog's application_name.
_LEFT = """
SELECT a.pid FROM unnest(%s::int[], %s::timestamptz[]) AS o(pid, started)
JOIN pg_catalog.pg_stat_activity a ON a.pid = o.pid
    AND (a.backend_start = o.started OR (o.started IS NULL AND a.application_name = %s))
"""
_TERMINATE = """
SELECT pg_terminate_backend(a.pid) FROM unnest(%s::int[], %s::timestamptz[]) AS o(pid, started)
JOIN pg_catalog.pg_stat_activity a ON a.pid = o.pid
    AND (a.backend_start = o.started OR (o.started IS NULL AND a.application_name = %s))
"""


# A connect that timed out may have left a session behind: the server finished the start-up, its answer was lost
# (a connection frozen mid-handshake). Nobody learnt its pid; it never ran a query, and no client of ours still
# waits for it once it is older than that connect's timeout (on the server's own clock).
_STILLBORN = """
SELECT count(pg_catalog.pg_terminate_backend(pid)) FROM pg_catalog.pg_stat_activity
WHERE datname = current_database() AND usename = current_user AND application_name = %s
    AND state = 'idle' AND query_start IS NULL AND backend_start < clock_timestamp() - make_interval(secs => %s)
"""
Stillborn = tuple[str, float, float]
"""Sessions a timed-out connect may have left: their application_name, the connect's timeout (s), when due."""


def _busy(conn: psycopg.Connection[Any]) -> bool:
    """Is the client waiting for the server (a command sent, its results not all read)?"""
    try:
        return not conn.closed and conn.pgconn.transaction_status == TransactionStatus.ACTIVE
    except psycopg.Error:
        return False


def _answers(conn: psycopg.Connection[Any]) -> bool:
    """Does the connection still answer (so that closing it ends its session)? One round trip."""
    if conn.closed or conn.broken:
        return False
    try:
        conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def shut(sock: socket.socket) -> None:
    """Shut a socket down in both directions: a call blocked on it returns at once."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


@dataclass
class Watchdog:
    """Watches connections to one server; ``info`` is a conninfo the watchdog may connect with."""

    info: str = field(repr=False)  # may hold a password
    interval: float = 0.5
    grace: float = 2.0
    probe_timeout: float = 2.0
    connect: Callable[[str], psycopg.Connection[Any]] | None = None
    on_abandon: OnAbandon | None = None  # told of a connection abandoned while nobody set its own ``on_abandon``
    abandoned: int = 0
    last_working: float = 0.0  # monotonic: when a watched statement was last seen executing (not lock-waiting)
    _watched: dict[int, Watched] = field(default_factory=dict)  # id(conn) -> entry
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _probe: psycopg.Connection[Any] | None = None
    _probe_sock: socket.socket | None = None
    _probe_started: float | None = None
    _last_view: float = field(default_factory=time.monotonic)
    _orphans: list[Orphan] = field(default_factory=list)  # pid, backend_start, when retired
    _stillborn: list[Stillborn] = field(default_factory=list)
    _probing: threading.Lock = field(default_factory=threading.Lock)  # one user of the probe connection
    _probe_start: datetime.datetime | None = None
    _probe_pid: int = 0
    swept: int = 0

    # -- registry -------------------------------------------------------------------------------------------

    def watch(self, conn: psycopg.Connection[Any], *, limit: float | None = None) -> Watched:
        """Start watching ``conn`` (until as many ``forget`` calls, or until it is closed); return its entry."""
        with self._lock:
            known = self._watched.get(id(conn))
            if known is not None and known.conn is conn:
                known.users += 1
                return known
        entry = Watched(conn, conn.info.backend_pid, socket.socket(fileno=os.dup(conn.pgconn.socket)), limit)
        with self._lock:
            self._watched[id(conn)] = entry
        self._start()
        return entry

    def forget(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            entry = self._watched.get(id(conn))
            if entry is None:
                return
            entry.users -= 1
            if entry.users > 0 and not conn.closed:
                return
            self._watched.pop(id(conn))
        entry.sock.close()

    def retire(self, session: db.Session) -> None:
        """A session whose connection was closed elsewhere: make sure it ends (see ``close_connection``)."""
        pid, started = session
        if pid and started is not None:
            with self._lock:
                self._orphans.append((pid, started, time.monotonic() + LINGER))

    def connect_timed_out(self, application_name: str, timeout: float) -> None:
        """A connect of ours timed out: the session it may have left is looked for once it is older than
        ``timeout`` (see ``_STILLBORN``), and terminated."""
        with self._lock:  # one entry per name and timeout: the latest one's sweep also finds the older sessions
            kept = [s for s in self._stillborn if s[:2] != (application_name, timeout)]
            self._stillborn = [*kept, (application_name, timeout, time.monotonic() + STILLBORN_DELAY)]
        self._start()

    def close_connection(self, conn: psycopg.Connection[Any], *, session: db.Session | None = None) -> None:
        """Close a connection and make sure its server session ends: a connection that froze while idle never
        delivers its goodbye, so the session is looked for (and terminated) afterwards. ``session``: its pid
        and start, for a connection that is not watched at the moment."""
        with self._lock:
            entry = self._watched.get(id(conn))
        pid, started = (entry.pid, entry.backend_start) if entry is not None else (session or (0, None))
        alive = entry is not None and _answers(conn)  # watched while it answers: a frozen one is cut loose
        self.forget(conn)
        with contextlib.suppress(Exception):
            conn.close()
        if not alive and not (entry is not None and entry.abandoned):
            self.retire((pid, started))

    @contextlib.contextmanager
    def watching(self, conn: psycopg.Connection[Any], *, limit: float | None = None) -> Iterator[Watched]:
        entry = self.watch(conn, limit=limit)
        try:
            yield entry
        finally:
            self.forget(conn)

    def close(self) -> None:
        """Stop watching; sessions of connections closed earlier that the server still has are terminated."""
        with self._lock:
            entries, self._watched = list(self._watched.values()), {}
        for entry in entries:
            entry.sock.close()
        with self._probing:  # the probe thread is between rounds: nothing of it runs unguarded past here
            if self._orphans or self._stillborn or self._probe is not None:
                self._start()  # the guard must be running: the sweep's own connection may be frozen too
                if self._probe is not None and not self._probe_answers():
                    self._drop_probe()  # frozen itself: its session is swept from a new connection
                self._sweep(final=True)
            self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.probe_timeout + 1)
        self._drop_probe(retire=False)

    # -- the two threads ------------------------------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._threads or self._stop.is_set():
                return
            self._threads = [
                threading.Thread(target=self._probe_loop, name="watchdog", daemon=True),
                threading.Thread(target=self._guard_loop, name="watchdog-guard", daemon=True),
            ]
        for thread in self._threads:
            thread.start()

    def _probe_loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._probing:
                if self._stop.is_set():
                    return
                try:
                    self.check()
                except Exception:  # never let the watchdog die: the next round tries again on a new connection
                    self._drop_probe()

    def _guard_loop(self) -> None:
        """The deadline of the watchdog's own query: its socket is shut down when the query takes too long."""
        while not self._stop.wait(self.interval):
            started, sock = self._probe_started, self._probe_sock
            if started is not None and sock is not None and time.monotonic() - started > self.probe_timeout:
                shut(sock)

    # -- one round ------------------------------------------------------------------------------------------

    def check(self) -> None:
        """Look at every busy watched connection once; abandon the ones that went silent."""
        self._sweep(final=False)
        busy = self._busy_entries()
        if not busy:
            return
        asked = time.monotonic()
        view = self._server_view([entry.pid for entry in busy])
        if view is None:  # the probe's own connection was lost (it may freeze too): once more on a new one
            asked = time.monotonic()
            view = self._server_view([entry.pid for entry in busy])
        now = time.monotonic()
        if view is None:
            for entry in busy:
                if entry.limit is not None and entry.busy_since_local is not None:
                    waited = now - entry.busy_since_local
                    if waited > entry.limit and now - self._last_view > self.probe_timeout:
                        self._abandon(entry, f"no answer for {waited:.0f} s and the server cannot be asked")
            return
        self._last_view = now
        for entry in busy:
            self._judge(entry, view, asked)

    def _busy_entries(self) -> list[Watched]:
        with self._lock:
            entries = list(self._watched.values())
            closed = [key for key, entry in self._watched.items() if entry.conn.closed]
            for key in closed:
                self._watched.pop(key).sock.close()
        busy = []
        now = time.monotonic()
        for entry in entries:
            if entry.conn.closed or entry.abandoned or not _busy(entry.conn):
                entry.busy_since = entry.busy_since_local = None
                continue
            if entry.busy_since_local is None:
                entry.busy_since_local = now
                entry.query_start = None
            busy.append(entry)
        return busy

    def _judge(self, entry: Watched, view: dict[int, SessionView], asked: float) -> None:
        """``asked``: the monotonic time the view was asked for (the server's ``now`` is no earlier)."""
        state, changed, server_now, started, query_start = view[entry.pid]
        if entry.backend_start is None:
            entry.backend_start = started  # so that an abandoned session can be terminated
        if entry.busy_since is None:  # on the server's clock: how long the client had waited when it was asked
            waited = asked - entry.busy_since_local if entry.busy_since_local is not None else 0.0
            entry.busy_since = server_now - max(waited, 0.0)
        if query_start != entry.query_start:  # another statement than last time: its own clock
            entry.query_start = query_start
            entry.busy_since_local = time.monotonic()
        if state is None:
            self._abandon(entry, "its server session is gone")
            return
        if state == "active":
            self.last_working = time.monotonic()  # the server is executing it: progress, however long it takes
            return
        if state == "waiting for a lock":  # bounded by the repo's lock_timeout; not progress
            return
        silent_since = max(changed or server_now, entry.busy_since)
        if server_now - silent_since > self.grace:
            self._abandon(
                entry,
                f"the server has been {state} for {server_now - (changed or server_now):.1f} s while the client waited",
            )

    def _server_view(self, pids: list[int]) -> dict[int, SessionView] | None:
        try:
            conn = self._probe_connection()
            self._probe_started = time.monotonic()
            try:
                rows = conn.execute(_PROBE, (pids,)).fetchall()
            finally:
                self._probe_started = None
        except psycopg.Error:
            self._drop_probe()
            return None
        return {
            int(pid): (state, changed, float(now), started, query) for pid, state, changed, now, started, query in rows
        }

    def _sweep(self, *, final: bool) -> None:
        """End the server sessions of connections we let go of that the server still has.

        A connection closed normally gets a second (``LINGER``) to deliver its goodbye; an abandoned one is due
        at once. ``final`` (closing the watchdog): keep at it, reconnecting, until none is left or time is up.
        """
        deadline = time.monotonic() + (3 * (self.probe_timeout + LINGER) + STILLBORN_DELAY if final else 0.0)
        while True:
            with self._lock:
                pending, stillborn = list(self._orphans), list(self._stillborn)
            now = time.monotonic()
            dues = [due for _, _, due in pending] + [due for _, _, due in stillborn]
            if not dues or (not final and min(dues) > now):
                return
            left: list[Orphan] | None = None
            born: list[Stillborn] | None = None
            try:
                left, born = self._ended(pending, now), self._stillborn_ended(stillborn, now)
            except psycopg.Error:
                self._drop_probe()
            if left is not None and born is not None:
                with self._lock:
                    self._orphans = [o for o in self._orphans if o not in pending or o in left]
                    self._stillborn = [s for s in self._stillborn if s not in stillborn or s in born]
                if not left and not born:
                    return
            if not final or time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def _stillborn_ended(self, pending: list[Stillborn], now: float) -> list[Stillborn]:
        """Terminate the sessions the due timed-out connects left; return the entries not yet due."""
        due = {(name, timeout) for name, timeout, when in pending if when <= now}
        if due:
            conn = self._probe_connection()
            self._probe_started = time.monotonic()
            try:
                for name, timeout in due:
                    row = conn.execute(_STILLBORN, (name, timeout)).fetchone()
                    self.swept += int(row[0]) if row else 0
            finally:
                self._probe_started = None
        return [entry for entry in pending if entry[2] > now]

    def _ended(self, pending: list[Orphan], now: float) -> list[Orphan]:
        """Terminate the pending sessions that are due; return the ones still there and not yet due."""
        if not pending:
            return []
        conn = self._probe_connection()
        keys = ([pid for pid, _, _ in pending], [start for _, start, _ in pending])
        self._probe_started = time.monotonic()
        try:
            there = {int(r[0]) for r in conn.execute(_LEFT, (*keys, PROBE_NAME)).fetchall()}
            due = [o for o in pending if o[0] in there and o[2] <= now]
            if due:
                conn.execute(_TERMINATE, ([pid for pid, _, _ in due], [start for _, start, _ in due], PROBE_NAME))
                self.swept += len(due)
        finally:
            self._probe_started = None
        return [o for o in pending if o[0] in there and o[2] > now]

    def _probe_connection(self) -> psycopg.Connection[Any]:
        if self._probe is None or self._probe.closed:
            self._drop_probe()
            self._probe_started = time.monotonic()  # connecting is guarded too (connect_timeout as well)
            try:
                try:
                    probe = (self.connect or _connect)(self.info)
                except psycopg.errors.ConnectionTimeout:
                    self.connect_timed_out(PROBE_NAME, PROBE_CONNECT_TIMEOUT)
                    raise
                self._probe_sock = socket.socket(fileno=os.dup(probe.pgconn.socket))
                self._probe, self._probe_pid = probe, probe.info.backend_pid
                self._probe_started = time.monotonic()  # the deadline of the query, not of the connect
                row = probe.execute(_START).fetchone()
                self._probe_start = row[0] if row else None
            finally:
                self._probe_started = None
        return self._probe

    def _probe_answers(self) -> bool:
        probe = self._probe
        if probe is None:
            return False
        self._probe_started = time.monotonic()
        try:
            return _answers(probe)
        finally:
            self._probe_started = None

    def _drop_probe(self, *, retire: bool = True) -> None:
        """Close the probe connection; after a failure its session is swept later like any other orphan."""
        probe, sock, start = self._probe, self._probe_sock, self._probe_start
        self._probe = self._probe_sock = self._probe_start = None
        if sock is not None:
            sock.close()
        if probe is not None:
            pid = self._probe_pid
            with contextlib.suppress(Exception):
                probe.close()
            if retire and pid:  # its start unknown if it was lost on its first query (see _LEFT)
                with self._lock:
                    self._orphans.append((pid, start, time.monotonic()))  # due at once: it failed

    def _abandon(self, entry: Watched, reason: str) -> None:
        report = entry.on_abandon or self.on_abandon  # taken first: once shut, the user moves on and clears it
        with self._lock:
            if self._watched.get(id(entry.conn)) is not entry:
                return  # its user let it go meanwhile: the socket may not be its any more
            entry.abandoned = True
            shut(entry.sock)
        self.abandoned += 1
        if entry.backend_start is not None:  # its session, still holding what it held: terminated next
            with self._lock:
                self._orphans.append((entry.pid, entry.backend_start, time.monotonic()))
            self._sweep(final=False)
        if report is not None:
            report(entry.pid, reason)


def _connect(info: str) -> psycopg.Connection[Any]:
    from orchestrator import db

    return db.open_connection(info, application_name=PROBE_NAME, timeout=PROBE_CONNECT_TIMEOUT)
