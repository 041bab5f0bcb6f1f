"""Connections: turn a Repo into a connection URL (env interpolation, urlFile, or the embedded server) and
connect with psycopg 3.

URLs carry passwords, so they never appear in messages: ``redact`` replaces the password, and connection
errors are re-raised as ``DatabaseError`` naming the repo and the redacted URL only.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo, timeout_from_conninfo

from orchestrator import embedded, model
from orchestrator.errors import ConfigError, DatabaseError, Problem

Session = tuple[int, datetime.datetime | None]
"""A server session: its pid and ``backend_start`` (pids are reused; the pair names one session)."""

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def resolve_url(repo: model.Repo, root: Path, environ: Mapping[str, str] | None = None) -> str | None:
    """Return the repo's connection URL, or None when it uses the embedded server.

    ``${VAR}`` and ``${VAR:-default}`` are replaced from ``environ``; an unset variable without a default is a
    located ``ConfigError``, as is an unreadable ``urlFile``, and so is a repo left without a URL while the
    embedded server is switched off (``ORCHESTRATOR_EMBEDDED=0``, the container image).
    """
    env = os.environ if environ is None else environ
    if repo.url_file:
        path = root / repo.url_file
        try:
            url = path.read_text().strip()
        except OSError as exc:
            raise _located(repo, "spec.urlFile", f"cannot read {path}: {exc.strerror}") from exc
        if not url and not embedded.enabled(env):
            raise _located(repo, "spec.urlFile", f"{path} is empty; {_no_embedded(env)}")
        return url or None
    return _url_from_environment(repo, env)


def _url_from_environment(repo: model.Repo, env: Mapping[str, str]) -> str | None:
    """``spec.url`` interpolated (None: empty, the embedded server); errors as ``resolve_url``'s."""
    allowed = embedded.enabled(env)
    written = repo.url or ""
    missing = [m.group(1) for m in _VARIABLE.finditer(written) if m.group(2) is None and m.group(1) not in env]
    if missing:
        fallback = f" (write ${{{missing[0]}:-}} to fall back to the embedded PostgreSQL)"
        hint = fallback if allowed else f"; {_no_embedded(env)}"
        raise _located(repo, "spec.url", f"environment variable {missing[0]} is not set{hint}")
    url = _VARIABLE.sub(lambda m: env.get(m.group(1), m.group(2) or ""), written).strip()
    if not url and not allowed:
        raise _located(repo, "spec.url", f"no database URL ({_why_empty(written, env)}); {_no_embedded(env)}")
    return url or None


def _why_empty(written: str, env: Mapping[str, str]) -> str:
    """Why ``spec.url`` came out empty: the variables it names that are unset or empty, or that it is unset."""
    names = list(dict.fromkeys(m.group(1) for m in _VARIABLE.finditer(written)))
    if not names:
        return "spec.url and spec.urlFile are not set" if not written else "spec.url is empty"
    unset = [n for n in names if n not in env]
    empty = [n for n in names if n in env and not env[n].strip()]
    parts = [f"environment variable{'s' if len(unset) > 1 else ''} {_names(unset)} not set"] if unset else []
    parts += [f"{_names(empty)} set but empty"] if empty else []
    return " and ".join(parts) or "spec.url is empty"


def _names(names: list[str]) -> str:
    """``A is`` / ``A, B are``: variable names with their verb."""
    return f"{names[0]} is" if len(names) == 1 else f"{', '.join(names)} are"


def _no_embedded(env: Mapping[str, str]) -> str:
    return f"the embedded PostgreSQL is switched off ({embedded.switch_setting(env)}), so the repo needs a database URL"


def check_urls(repos: Sequence[model.Repo], root: Path) -> None:
    """Resolve every repo's URL up front, so that a missing variable or (with the embedded server switched off)
    a missing URL is reported for all repos at once, before a command writes or applies anything.

    A ``urlFile`` is left for when it is used: a secrets agent may write it after the process started.
    """
    problems: list[Problem] = []
    for repo in repos:
        if repo.url_file:
            continue
        try:
            resolve_url(repo, root)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)


def conninfo(repo: model.Repo, root: Path) -> str:
    """Return what to connect to for ``repo``: its URL, or the embedded server's database named after it.

    Resolving has no side effects on any database: it neither connects nor creates anything (for the embedded
    default it starts the server, whose address is what it resolves to). Creating a database is ``create``'s
    job, and ``ensure_embedded_database``'s for the embedded default. A URL libpq cannot parse is a located
    ConfigError that never quotes the URL (it may hold a password).
    """
    url = resolve_url(repo, root)
    if url is None:
        return embedded.url(root, repo.name)
    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        field = "spec.urlFile" if repo.url_file else "spec.url"
        raise _located(
            repo,
            field,
            "the database URL cannot be parsed; percent-encode special characters "
            "(%, @, :, /, ?) in the user name and password",
        ) from None
    return url


def ensure_embedded_database(repo: model.Repo, root: Path) -> None:
    """For a repo on the embedded server (no URL): create its database there if missing. Nothing otherwise."""
    if resolve_url(repo, root) is None:
        embedded.ensure_database(root, repo.name)


def database_key(repo: model.Repo, root: Path) -> str:
    """Which database ``repo`` uses, as far as can be told without connecting: ``host:port/dbname``.

    Repos with equal keys share one database, hence one ``public.schema_migrations``. A URL that cannot be
    resolved yet (an unset variable) is compared as written; the embedded server has a database per repo.
    """
    try:
        url = resolve_url(repo, root)
    except ConfigError:
        return f"unresolved:{repo.url_file or repo.url}"
    if url is None:
        return f"embedded:{repo.name}"
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return f"unparsed:{repo.name}"
    host = params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST", "")
    port = params.get("port") or os.environ.get("PGPORT", "5432")
    return f"{host}:{port}/{database_name(url)}"


def connect(repo: model.Repo, root: Path, *, autocommit: bool = True) -> psycopg.Connection[tuple[object, ...]]:
    """Open a connection to the repo's database; failures name the repo, never the password."""
    ensure_embedded_database(repo, root)
    return connect_to(conninfo(repo, root), repo, autocommit=autocommit)


def connect_to(info: str, repo: model.Repo, *, autocommit: bool = True) -> psycopg.Connection[tuple[object, ...]]:
    """Open a connection to ``info`` (a resolved ``conninfo``); errors name the repo, never the password."""
    try:
        return open_connection(info, autocommit=autocommit)
    except psycopg.Error as exc:
        raise DatabaseError(f"repo {repo.name}: cannot connect to {redact(info)}: {redact(_first_line(exc))}") from None


def database_name(info: str) -> str:
    """The database a conninfo names (libpq's default: the user name)."""
    params = conninfo_to_dict(info)
    return str(params.get("dbname") or params.get("user") or "postgres")


def create_database(repo: model.Repo, root: Path) -> bool:
    """Create the repo's database if it does not exist; return whether it was created."""
    url = resolve_url(repo, root)
    if url is None:
        existed = _embedded_exists(root, repo.name)
        embedded.ensure_database(root, repo.name)
        return not existed
    name = database_name(url)
    with connect_to(make_conninfo(url, dbname="postgres"), repo) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return True


def drop_database(repo: model.Repo, root: Path) -> bool:
    """Drop the repo's database if it exists; return whether it was dropped."""
    url = resolve_url(repo, root)
    if url is None:
        if not _embedded_exists(root, repo.name):
            return False
        maintenance, name = str(embedded.server(root).get_uri("postgres")), repo.name
    else:
        maintenance, name = make_conninfo(url, dbname="postgres"), database_name(url)
    with connect_to(maintenance, repo) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
    return True


def _embedded_exists(root: Path, name: str) -> bool:
    if not (embedded.data_dir(root) / "PG_VERSION").exists():
        return False
    with psycopg.connect(str(embedded.server(root).get_uri("postgres")), autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


APPLICATION_NAME = "orchestrator"
CONNECT_TIMEOUT_S = 10
"""Seconds a connect may take unless the repo's URL says otherwise (``connect_timeout``, or libpq's
``PGCONNECT_TIMEOUT``)."""

CONNECT_OPTIONS: dict[str, Any] = {
    "application_name": APPLICATION_NAME,
    # A peer that vanished (a node gone, a NAT entry dropped) is noticed within about a minute instead of the
    # kernel's two hours, so the attempt fails as a lost connection and is retried on a new one.
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
"""libpq options for every connection the orchestrator opens (single ones and the rollout's pool)."""


def connect_timeout(info: str) -> int:
    """The seconds a connect to ``info`` may take: its own ``connect_timeout`` (or ``PGCONNECT_TIMEOUT``) as
    psycopg reads it (2 s at least), else ``CONNECT_TIMEOUT_S``."""
    given = conninfo_to_dict(info).get("connect_timeout") or os.environ.get("PGCONNECT_TIMEOUT")
    if given is None:
        return CONNECT_TIMEOUT_S
    return timeout_from_conninfo({"connect_timeout": given})


def connect_options(info: str) -> dict[str, Any]:
    """libpq options for a connection to ``info`` (``CONNECT_OPTIONS`` and its connect timeout)."""
    return CONNECT_OPTIONS | {"connect_timeout": connect_timeout(info)}


def open_connection(
    info: str, *, autocommit: bool = True, application_name: str = APPLICATION_NAME, timeout: int | None = None
) -> psycopg.Connection[tuple[object, ...]]:
    """Connect, letting psycopg's errors through (for callers that retry transient ones). ``timeout``: the
    connect's, when not ``connect_timeout(info)``."""
    options = CONNECT_OPTIONS | {
        "application_name": application_name,
        "connect_timeout": timeout if timeout is not None else connect_timeout(info),
    }
    return psycopg.connect(info, autocommit=autocommit, **options)


IDLE_IN_TRANSACTION_TIMEOUT = "60s"
IDLE_SESSION_TIMEOUT = "120s"
"""How long the server keeps a session of ours that stopped talking: an orphan (its client gone without a word)
never holds a tenant's locks longer than this. Our own sessions are never idle that long while they hold one."""


def prepare_session(conn: psycopg.Connection[Any]) -> Session:
    """Settings for every session that does work (one round trip; PostgreSQL 14+ for the last two); return
    the server's pid of the session and its start time, which name it (pids are reused; behind a pooler the
    pid libpq was told may not be the server's).

    ``client_connection_check_interval``: the server notices within a second that this process died
    mid-statement, so a killed runner's transaction is rolled back and its locks released promptly.
    ``idle_in_transaction_session_timeout`` / ``idle_session_timeout``: an orphaned session ends by itself.
    """
    modern = conn.info.server_version >= 140000
    row = conn.execute(
        "SELECT set_config('idle_in_transaction_session_timeout', %s, false), "
        "CASE WHEN %s THEN set_config('client_connection_check_interval', '1s', false) END, "
        "CASE WHEN %s THEN set_config('idle_session_timeout', %s, false) END, "
        "pg_backend_pid(), (SELECT backend_start FROM pg_catalog.pg_stat_activity WHERE pid = pg_backend_pid())",
        (IDLE_IN_TRANSACTION_TIMEOUT, modern, modern, IDLE_SESSION_TIMEOUT),
    ).fetchone()
    return (int(row[3]), row[4]) if row else (conn.info.backend_pid, None)


_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@\"'<>]*):[^\s\"'<>]*@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&\s\"'<>]*")
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('[^']*'|[^\s\"'&<>]+)")


def redact(text: str) -> str:
    """Return ``text`` with every password replaced by ``***``: a URL's userinfo password and ``password=``
    query parameters, wherever the URL sits in the text (an error message quoting a mistyped URL), and
    libpq's ``password=...`` keyword."""
    text = _USERINFO.sub(r"\1:***@", text)
    text = _QUERY_PASSWORD.sub(r"\1***", text)
    return _KEYWORD_PASSWORD.sub(r"\1***", text)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _located(repo: model.Repo, field: str, message: str) -> ConfigError:
    return ConfigError([Problem(repo.source.file, repo.source.line, 1, field, message)])
