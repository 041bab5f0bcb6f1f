"""Connections: turn a Repo into a connection URL (env interpolation, urlFile, or the embedded server) and
connect with psycopg 3.

URLs carry passwords, so they never appear in messages: ``redact`` replaces the password, and connection
errors are re-raised as ``DatabaseError`` naming the repo and the redacted URL only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from orchestrator import embedded, model
from orchestrator.errors import ConfigError, DatabaseError, Problem

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def resolve_url(repo: model.Repo, root: Path, environ: Mapping[str, str] | None = None) -> str | None:
    """Return the repo's connection URL, or None when it uses the embedded server.

    ``${VAR}`` and ``${VAR:-default}`` are replaced from ``environ``; an unset variable without a default is a
    located ``ConfigError``, as is an unreadable ``urlFile``.
    """
    env = os.environ if environ is None else environ
    if repo.url_file:
        path = root / repo.url_file
        try:
            url = path.read_text().strip()
        except OSError as exc:
            raise _located(repo, "spec.urlFile", f"cannot read {path}: {exc.strerror}") from exc
    elif repo.url:
        missing = [m.group(1) for m in _VARIABLE.finditer(repo.url) if m.group(2) is None and m.group(1) not in env]
        if missing:
            raise _located(
                repo,
                "spec.url",
                f"environment variable {missing[0]} is not set "
                f"(write ${{{missing[0]}:-}} to fall back to the embedded PostgreSQL)",
            )
        url = _VARIABLE.sub(lambda m: env.get(m.group(1), m.group(2) or ""), repo.url).strip()
    else:
        url = ""
    return url or None


def conninfo(repo: model.Repo, root: Path) -> str:
    """Return what to connect to for ``repo``: its URL, or the embedded server's database named after it."""
    return resolve_url(repo, root) or embedded.database_url(root, repo.name)


def connect(repo: model.Repo, root: Path, *, autocommit: bool = True) -> psycopg.Connection[tuple[object, ...]]:
    """Open a connection to the repo's database; failures name the repo, never the password."""
    info = conninfo(repo, root)
    try:
        return psycopg.connect(info, autocommit=autocommit, connect_timeout=10, application_name="orchestrator")
    except psycopg.Error as exc:
        raise DatabaseError(f"repo {repo.name}: cannot connect to {redact(info)}: {_first_line(exc)}") from None


def redact(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (URL or key=value form)."""
    if "://" in url:
        parts = urlsplit(url)
        if parts.password is not None:
            host = parts.hostname or ""
            netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
            return urlunsplit(parts._replace(netloc=netloc))
        return re.sub(r"(password=)[^&]*", r"\1***", url)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", url)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _located(repo: model.Repo, field: str, message: str) -> ConfigError:
    return ConfigError([Problem(repo.source.file, repo.source.line, 1, field, message)])
