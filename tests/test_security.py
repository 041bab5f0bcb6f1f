"""Security: names are quoted on every SQL path, the API token guards what it should and never leaks, and
database passwords never reach logs, ``status`` or error messages.

Tenant names are validated before use (``test_tenants``); the first test here turns that check off, as a bug
in it would, and shows that quoting alone keeps names like ``x"; DROP TABLE ...`` from running as SQL through
a whole rollout, status and rollback.
"""

from __future__ import annotations

import hmac
import re
import signal
import urllib.parse
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo
from starlette.requests import Request

from orchestrator import config, tenants
from orchestrator.daemon import http
from orchestrator.migrations import rollout
from orchestrator.migrations.loop import Action
from orchestrator.migrations.runner import Runner
from tests.conftest import run_cli, write
from tests.test_daemon import Daemon, eventually

HOSTILE = [
    'x"; DROP TABLE public.tripwire; --',
    "o'brien'); DROP TABLE public.tripwire; --",
    'Mixed"Case',
    "semi;colon",
    "back\\slash",
]
REPO = """apiVersion: orchestrator/v1
kind: Repo
metadata: {name: app}
spec:
  url: ${APP_URL}
  tenants: {query: "SELECT name FROM public.registry ORDER BY 1", createSchemas: true}
  rollout: {concurrency: 2}
  retry: {attempts: 2, initialDelay: 50ms, maxDelay: 100ms}
"""
NOTES = """apiVersion: orchestrator/v1
kind: Resource
metadata: {name: note}
spec:
  repo: app
  table: notes
  multitenancy: {strategy: context}
  attributes:
    - {name: id, type: bigint, primaryKey: true, generated: identity}
    - {name: body, type: text, allowNull: false}
  indexes:
    - {fields: [body]}
"""


def _registry(url: str, names: list[str]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.tripwire (id int)")
        conn.execute("CREATE TABLE public.registry (name text)")
        with conn.cursor() as cursor:
            cursor.executemany("INSERT INTO public.registry VALUES (%s)", [(n,) for n in names])


def _tables_in(url: str, schema: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = 'r'",
            (schema,),
        ).fetchall()
    return {str(r[0]) for r in rows}


def test_quoting_alone_keeps_hostile_tenant_names_from_running_as_sql(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "config/repo.yaml", REPO)
    write(tmp_path / "config/notes.yaml", NOTES)
    assert run_cli("generate-migrations", cwd=tmp_path).code == 0
    _registry(database_url, ["plain", *HOSTILE])
    monkeypatch.setenv("APP_URL", database_url)
    monkeypatch.setattr(tenants, "IDENTIFIER", re.compile(r".{1,63}", re.S))  # as if the name check had a hole
    cfg = config.load(tmp_path / "config", base=tmp_path)
    runner = Runner(cfg, tmp_path)
    repo = cfg.repos[0]

    results = runner.tenant_rollout(repo).run(rollout.Options())
    assert {r.tenant: r.status for r in results} == {n: "migrated" for n in ["plain", *HOSTILE]}
    for name in HOSTILE:  # each name became exactly one schema of that name, with the tables inside
        assert _tables_in(database_url, name) == {"notes", "schema_migrations"}, name
    assert "tripwire" in _tables_in(database_url, "public")
    status = {row["tenant"]: row for row in runner.tenant_status(repo)["tenants"]}
    assert all(status[n]["pending"] == [] and len(status[n]["applied"]) == 1 for n in HOSTILE)

    back = runner.tenant_rollout(repo).run(rollout.Options(action=Action.ROLLBACK))
    assert {r.status for r in back} == {"rolled back"}
    assert all(_tables_in(database_url, n) == {"schema_migrations"} for n in HOSTILE)
    assert "tripwire" in _tables_in(database_url, "public")


def test_hostile_tenant_names_are_refused_by_a_real_rollout(tmp_path: Path, database_url: str) -> None:
    write(tmp_path / "config/repo.yaml", REPO)
    write(tmp_path / "config/notes.yaml", NOTES)
    assert run_cli("generate-migrations", cwd=tmp_path).code == 0
    _registry(database_url, ["plain", *HOSTILE])
    result = run_cli("migrate", "--tenants", cwd=tmp_path, env={"APP_URL": database_url})
    assert result.code == 1  # the hostile names are failed tenants; the valid one is migrated
    assert _tables_in(database_url, "plain") == {"notes", "schema_migrations"}
    with psycopg.connect(database_url) as conn:
        found = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", (HOSTILE,)).fetchall()
    assert found == []
    assert "tripwire" in _tables_in(database_url, "public")


# -- the API token -----------------------------------------------------------------------------------------


def _request(authorization: str | None) -> Request:
    headers = [(b"authorization", authorization.encode())] if authorization is not None else []
    return Request({"type": "http", "method": "POST", "path": "/rollouts", "headers": headers})


def test_the_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert http._authorize(_request("Bearer right"), "right") is None
    wrong = http._authorize(_request("Bearer righ"), "right")
    missing = http._authorize(_request(None), "right")
    assert wrong is not None and wrong.status_code == 401
    assert missing is not None and missing.status_code == 401
    assert len(calls) == 3, "every comparison goes through hmac.compare_digest"
    unset = http._authorize(_request("Bearer anything"), None)
    assert unset is not None and unset.status_code == 403


def test_the_token_never_reaches_logs_status_or_metrics(tmp_path: Path, database_url: str) -> None:
    from tests.test_daemon import manifests, register

    token, guess = "tok-9f8e7d6c5b4a-secret", "tok-guess-0123456789"
    manifests(tmp_path / "config")
    daemon = Daemon(tmp_path, database_url, tmp_path / "config", token=token)
    try:
        register(database_url, "acme")
        eventually(lambda: daemon.get("/readyz")[0] == 200)
        assert daemon.post("/rollouts", {"repo": "app"})[0] == 401
        assert daemon.post("/rollouts", {"repo": "app"}, token=guess)[0] == 401
        code, created = daemon.post("/rollouts", {"repo": "app"}, token=token)
        assert code == 202
        eventually(lambda: daemon.get(f"/rollouts/{created['id']}")[1]["status"] == "done")
        served = [str(daemon.get(path)[1]) for path in ("/status", "/metrics", "/", f"/rollouts/{created['id']}")]
    finally:
        code, out, stderr = _stop(daemon)
    assert code == 0
    for text in [stderr, out, *served]:
        assert token not in text and guess not in text


def _stop(daemon: Daemon) -> tuple[int, str, str]:
    """SIGTERM; the exit code and everything the daemon printed."""
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.proc.wait(timeout=60)
    return daemon.proc.returncode, "", daemon.logged()


# -- passwords in URLs -------------------------------------------------------------------------------------

PASSWORD = "Pw-7c1d-s3cret"


def _with_password(url: str, form: str) -> str:
    params = conninfo.conninfo_to_dict(url)
    if form == "keyword":
        return conninfo.make_conninfo(url, password=PASSWORD)
    host = urllib.parse.quote(str(params.get("host", "127.0.0.1")), safe="")
    return (
        f"postgresql://{params.get('user', 'postgres')}:{PASSWORD}@{host}:{params.get('port', 5432)}/{params['dbname']}"
    )


@pytest.mark.parametrize("form", ["keyword", "url"])
def test_passwords_never_reach_output_logs_status_or_errors(tmp_path: Path, database_url: str, form: str) -> None:
    url = _with_password(database_url, form)
    write(tmp_path / "config/repo.yaml", REPO)
    write(tmp_path / "config/notes.yaml", NOTES)
    _registry(database_url, ["acme", "globex", "x;bad"])
    with psycopg.connect(database_url, autocommit=True) as conn:  # globex fails: its table is in the way
        conn.execute("CREATE SCHEMA globex")
        conn.execute("CREATE TABLE globex.notes (id int)")
    env = {"APP_URL": url}
    seen: list[str] = []
    for command in [
        ("generate-migrations",),
        ("migrate",),
        ("migrate", "--tenants"),
        ("migrate", "--tenants", "--json"),
        ("status",),
        ("status", "--tenants", "--json"),
        ("tenants",),
        ("validate",),
        ("serve", "--once", "--listen", "127.0.0.1:0"),
        ("serve", "--once", "--json", "--listen", "127.0.0.1:0"),
    ]:
        result = run_cli(*command, cwd=tmp_path, env=env)
        seen += [result.out, result.err]
    assert any("globex" in text and "failed" in text for text in seen), "the failure path was taken"
    nowhere = conninfo.make_conninfo(database_url, host="127.0.0.1", port="1")  # nothing listens on port 1
    unreachable = {"APP_URL": _with_password(nowhere, form)}
    for command in [
        ("migrate",),
        ("status", "--tenants"),
        ("tenants",),
        ("serve", "--once", "--listen", "127.0.0.1:0"),
    ]:
        result = run_cli(*command, cwd=tmp_path, env=unreachable)
        assert result.code != 0
        seen += [result.out, result.err]
    assert any("cannot connect" in text or "connection" in text for text in seen[-8:]), "the error path was taken"
    daemon = Daemon(tmp_path, url, tmp_path / "config")
    try:
        eventually(lambda: daemon.get("/healthz")[0] == 200)
        seen += [str(daemon.get(path)[1]) for path in ("/status", "/metrics", "/")]
    finally:
        _, out, stderr = _stop(daemon)
    seen += [out, stderr]
    leaks = [text for text in seen if PASSWORD in text]
    assert leaks == [], leaks[0][:2000] if leaks else ""
