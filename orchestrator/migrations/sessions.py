"""How the runner talks to a repo's database: one ``Endpoint`` per repo, with three kinds of connection.

* **Workers** (``Dedicated``): one connection per worker thread, opened on first use and dropped when lost, so
  the retry policy alone decides when the next attempt (on a new connection) happens. psycopg_pool was tried
  here first: under injected faults its background reconnection, with a backoff of its own that doubles from
  one second, left workers waiting for tens of seconds (README: extensions).
* **The control plane** (``ControlPlane``): tenant discovery, bulk state, outcome records, status, the state
  store. Calls are short and repeatable, so a transient error re-runs the call on a new connection under the
  repo's retry policy. The CLI uses one connection (``SingleControl``); the daemon keeps a
  ``psycopg_pool.ConnectionPool`` per repo (``PooledControl``), checked on checkout and recycled.
* **The watchdog** (``orchestrator.watchdog``) watches every connection while it is in use, so a connection
  that went silent is abandoned instead of hanging the run.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar

import psycopg
from psycopg.pq import TransactionStatus

from orchestrator import db, model
from orchestrator.migrations import events, retry
from orchestrator.migrations.target import Scope, Target
from orchestrator.watchdog import Watchdog, Watched

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

T = TypeVar("T")
Conn = psycopg.Connection[Any]

MARGIN_S = 30.0
"""How much longer than the repo's timeouts a statement may go unanswered before it is abandoned on time alone
(only when the server itself cannot be asked, see ``watchdog``)."""


CHECKOUT_TIMEOUT_S = 5.0
"""How long one control-plane call waits for a pooled connection before it is retried (on a fresh one)."""


def statement_limit(repo: model.Repo) -> float | None:
    """Seconds a migration statement may stay unanswered when the server cannot be asked; None when unbounded
    (``statementTimeout: 0s``: a backfill may run for hours)."""
    timeouts = repo.timeouts
    if not timeouts.statement_timeout_ms:
        return None
    return (timeouts.statement_timeout_ms + timeouts.lock_wait_ms) / 1000 + MARGIN_S


def control_limit(repo: model.Repo) -> float:
    """The same for the control plane's short queries: always finite."""
    return repo.timeouts.lock_wait_ms / 1000 + MARGIN_S


class ControlPlane(Protocol):
    def run(self, call: Callable[[Conn], T]) -> T:
        """Run a repeatable ``call`` on a control connection, retried on a new one after a transient error."""
        ...

    def connection(self) -> contextlib.AbstractContextManager[Conn]:
        """A control connection for a block (not retried: for callers that hold a lock across calls)."""
        ...

    def extra(self) -> contextlib.AbstractContextManager[Conn]:
        """Another connection beside the one a call runs on, for reading in parallel (``bulk.states``)."""
        ...

    def close(self) -> None: ...


def repeat(
    policy: model.Retry, connection: Callable[[], contextlib.AbstractContextManager[Conn]], call: Callable[[Conn], T]
) -> T:
    """Run a repeatable ``call`` on a connection from ``connection``; after a transient error, again on a new one."""

    def attempt() -> T:
        with connection() as conn:
            return call(conn)

    return retry.run(policy, attempt)


@dataclass
class SingleControl:
    """One control connection, opened again when it is lost (the CLI's control plane)."""

    info: str = field(repr=False)
    policy: model.Retry
    watchdog: Watchdog
    limit: float | None = None
    _conn: Conn | None = None
    _session: db.Session | None = None
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def run(self, call: Callable[[Conn], T]) -> T:
        return repeat(self.policy, self.connection, call)

    @contextlib.contextmanager
    def connection(self) -> Iterator[Conn]:
        with self._lock:
            conn = self._open()
            try:
                with self.watchdog.watching(conn, limit=self.limit) as entry:
                    entry.pid, entry.backend_start = self._session or (entry.pid, None)
                    yield conn
            except BaseException:
                if _unusable(conn):
                    self.close()
                raise

    def extra(self) -> contextlib.AbstractContextManager[Conn]:
        return fresh(self.info, self.watchdog, self.limit)

    def _open(self) -> Conn:
        if self._conn is None or self._conn.closed:
            self._conn, self._session = _open_control(self.info, self.watchdog, self.limit)
        return self._conn

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):  # watched while it says goodbye (it may be frozen)
                entry = self.watchdog.watch(conn)
                entry.pid, entry.backend_start = self._session or (entry.pid, None)
            self.watchdog.close_connection(conn, session=self._session)


@dataclass
class PooledControl:
    """The daemon's control plane: a psycopg_pool.ConnectionPool per repo, every checkout watched."""

    info: str = field(repr=False)
    policy: model.Retry
    watchdog: Watchdog
    limit: float | None = None
    pool: ConnectionPool[Conn] = field(init=False)
    _sessions: dict[int, db.Session] = field(default_factory=dict)  # id(conn) -> pid, backend_start

    def __post_init__(self) -> None:
        from psycopg_pool import ConnectionPool  # imported here: the CLI never pools

        self.pool = ConnectionPool(
            self.info,
            connection_class=_timeouts_told(self.watchdog, db.connect_timeout(self.info)),
            kwargs=db.connect_options(self.info) | {"autocommit": True},
            configure=self._configure,
            check=self._check,
            min_size=1,
            max_size=4,
            max_idle=60,  # below the server's idle_session_timeout for our sessions
            max_lifetime=30 * 60,
            open=False,
            name="control",
        )
        self.pool.open(wait=False)

    def _configure(self, conn: Conn) -> None:
        with self.watchdog.watching(conn, limit=self.limit):
            self._sessions[id(conn)] = _prepare_control(conn)

    def _check(self, conn: Conn) -> None:
        """``ConnectionPool.check_connection``, watched: a half-open idle connection cannot hang the checkout."""
        from psycopg_pool import ConnectionPool

        with self.watchdog.watching(conn, limit=self.limit):
            ConnectionPool.check_connection(conn)

    def run(self, call: Callable[[Conn], T]) -> T:
        """The first attempt on a pooled connection; a retry on a fresh connection of its own, used at once.

        Behind a bad network the pool can keep handing out connections that froze while they sat idle in it,
        and psycopg_pool waits longer after each failed check (1 s, 2 s, 4 s ...) while the next one sits idle
        too: in the fault tests a rollout's records waited minutes that way. A retry connects and runs its
        call straight away, as the CLI's control plane does.
        """
        attempts = itertools.count()
        return repeat(
            self.policy,
            lambda: self.connection() if next(attempts) == 0 else fresh(self.info, self.watchdog, self.limit),
            call,
        )

    def extra(self) -> contextlib.AbstractContextManager[Conn]:
        return self.connection()

    @contextlib.contextmanager
    def connection(self) -> Iterator[Conn]:
        with (
            self.pool.connection(timeout=CHECKOUT_TIMEOUT_S) as conn,
            self.watchdog.watching(conn, limit=self.limit) as entry,
        ):
            entry.pid, entry.backend_start = self._sessions.get(id(conn), (entry.pid, None))
            yield conn

    def close(self) -> None:
        """Close the pool; the sessions of its connections are swept with the watchdog's (a connection that
        froze while idle in the pool cannot say goodbye)."""
        self.pool.close(timeout=5)
        for session in self._sessions.values():
            self.watchdog.retire(session)
        self._sessions.clear()


@contextlib.contextmanager
def fresh(info: str, watchdog: Watchdog, limit: float | None) -> Iterator[Conn]:
    """A control connection of its own for a block, watched, and closed after it."""
    conn, session = _open_control(info, watchdog, limit)
    with watchdog.watching(conn, limit=limit) as entry:
        entry.pid, entry.backend_start = session
        try:
            yield conn
        finally:
            watchdog.close_connection(conn)


def connect(info: str, watchdog: Watchdog) -> Conn:
    """A new connection; a connect that timed out is told to the watchdog, which ends the session it may have
    left on the server (frozen mid-handshake: the server is ready, its answer never arrived)."""
    try:
        return db.open_connection(info)
    except psycopg.errors.ConnectionTimeout:
        watchdog.connect_timed_out(db.APPLICATION_NAME, db.connect_timeout(info))
        raise


def _open_control(info: str, watchdog: Watchdog, limit: float | None) -> tuple[Conn, db.Session]:
    """A new control connection, prepared while watched; returned with its session (pid, start)."""
    conn = connect(info, watchdog)
    try:
        with watchdog.watching(conn, limit=limit) as entry:
            entry.pid, entry.backend_start = _prepare_control(conn)
    except BaseException:
        conn.close()
        raise
    return conn, (entry.pid, entry.backend_start)


def _timeouts_told(watchdog: Watchdog, timeout: int) -> type[Conn]:
    """psycopg's connection class, telling ``watchdog`` of a connect that timed out (psycopg_pool connects
    with it: see ``connect``)."""

    class TimeoutsTold(psycopg.Connection[Any]):
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
            try:
                return super().connect(conninfo, **kwargs)
            except psycopg.errors.ConnectionTimeout:
                watchdog.connect_timed_out(db.APPLICATION_NAME, timeout)
                raise

    return TimeoutsTold


def _prepare_control(conn: Conn) -> db.Session:
    session = db.prepare_session(conn)
    conn.execute("SET synchronous_commit TO off")  # outcome records: cheap commits
    return session


def _unusable(conn: Conn) -> bool:
    """Lost, or left in a state nobody should inherit (an open or failed transaction)."""
    return conn.closed or conn.broken or conn.info.transaction_status != TransactionStatus.IDLE


@dataclass
class Dedicated:
    """One connection per worker thread, watched while in use; dropped when lost or left mid-transaction."""

    info: str = field(repr=False)
    watchdog: Watchdog
    limit: float | None = None
    _local: threading.local = field(default_factory=threading.local)
    _opened: list[Conn] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @contextlib.contextmanager
    def connection(self) -> Iterator[tuple[Conn, Watched]]:
        """The calling thread's connection and its watchdog entry (set ``on_abandon`` to hear of a cut)."""
        conn: Conn | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = connect(self.info, self.watchdog)
            with self._lock:  # the lost ones are closed already; keep only what close() still has to close
                self._opened = [c for c in self._opened if not c.closed] + [conn]
            self._local.conn = conn
            self._local.entry = self.watchdog.watch(conn, limit=self.limit)
        entry: Watched = self._local.entry
        try:
            if entry.backend_start is None:
                entry.pid, entry.backend_start = db.prepare_session(conn)
            yield conn, entry
        except BaseException:
            if _unusable(conn):
                self.watchdog.close_connection(conn)  # the next attempt opens a new one
            raise
        finally:
            entry.on_abandon = None

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            self.watchdog.close_connection(conn)


@dataclass
class Endpoint:
    """A repo's database as the runner uses it: its conninfo, watchdog and control plane."""

    repo: model.Repo
    info: str = field(repr=False)  # may hold a password
    watchdog: Watchdog
    control: ControlPlane

    @classmethod
    def open(
        cls, repo: model.Repo, root: Path, *, pooled: bool = False, sink: events.Sink = events.discard
    ) -> Endpoint:
        """Resolve the repo's connection (creating its database only on the embedded default server).

        ``sink`` hears of control-plane connections abandoned by the watchdog (a worker's are reported by the
        run loop, with their tenant).
        """
        db.ensure_embedded_database(repo, root)
        info = db.conninfo(repo, root)
        target = Target(repo, db.database_name(info), "public", Scope.GLOBAL)
        watchdog = Watchdog(info, on_abandon=lambda pid, reason: sink(events.Abandoned(target, pid, reason)))
        limit = control_limit(repo)
        if pooled:
            return cls(repo, info, watchdog, PooledControl(info, repo.retry, watchdog, limit))
        return cls(repo, info, watchdog, SingleControl(info, repo.retry, watchdog, limit))

    @functools.cached_property
    def database(self) -> str:
        return db.database_name(self.info)  # parses the conninfo: once, not once per tenant

    def workers(self) -> Dedicated:
        return Dedicated(self.info, self.watchdog, statement_limit(self.repo))

    def close(self) -> None:
        self.control.close()
        self.watchdog.close()


@dataclass
class Endpoints:
    """The endpoints of a config's repos, opened on first use and re-opened when a repo's settings change.

    The daemon keeps one (``pooled``) for its whole life, so control-plane pools outlive passes; a CLI command
    has one for the command.
    """

    root: Path
    pooled: bool = False
    sink: events.Sink = events.discard
    _open: dict[str, tuple[model.Repo, Endpoint]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, repo: model.Repo) -> Endpoint:
        with self._lock:
            known = self._open.get(repo.name)
            if known is not None and known[0] == repo:
                return known[1]
            if known is not None:
                known[1].close()
            endpoint = Endpoint.open(repo, self.root, pooled=self.pooled, sink=self.sink)
            self._open[repo.name] = (repo, endpoint)
            return endpoint

    def last_working(self) -> float:
        """When any repo's watchdog last saw one of our statements executing (monotonic; 0 if never)."""
        with self._lock:
            opened = [endpoint for _, endpoint in self._open.values()]
        return max((endpoint.watchdog.last_working for endpoint in opened), default=0.0)

    def retain(self, names: set[str]) -> None:
        """Close the endpoints of repos no longer in the configuration (their pools and watchdog threads)."""
        with self._lock:
            gone = [name for name in self._open if name not in names]
            closing = [self._open.pop(name)[1] for name in gone]
        for endpoint in closing:
            endpoint.close()

    def close(self) -> None:
        with self._lock:
            opened, self._open = list(self._open.values()), {}
        for _, endpoint in opened:
            endpoint.close()
