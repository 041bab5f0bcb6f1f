"""The daemon as a subprocess, over real HTTP and real PostgreSQL: edits rolled out, ConfigMap symlink swaps,
invalid edits, new tenants, the API token, metrics, SIGTERM, and ``serve --once``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import columns, run_cli, wait_for, write
from tests.harness import res

REPO = """apiVersion: orchestrator/v1
kind: Repo
metadata: {name: app}
spec:
  url: ${APP_URL}
  tenants: {query: "SELECT name FROM public.registry ORDER BY 1", createSchemas: true}
"""
REGISTRY = res("registry", "registry", "    - {name: name, type: text, primaryKey: true}\n")
ID = "    - {name: id, type: bigint, primaryKey: true}\n"
CONTEXT = "  multitenancy: {strategy: context}\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Daemon:
    def __init__(
        self, root: Path, url: str, config: Path, token: str | None = None, extra: tuple[str, ...] = ()
    ) -> None:
        self.root, self.url, self.port = root, url, free_port()
        self.log = root / f"daemon-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")} | {"APP_URL": url}
        if token:
            env["ORCHESTRATOR_API_TOKEN"] = token
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orchestrator",
                "serve",
                "--config",
                str(config),
                "--interval",
                "1s",
                "--listen",
                f"127.0.0.1:{self.port}",
                *extra,
            ],
            cwd=root,
            env=env,
            stdout=self.log.open("w"),  # a file, not a pipe: a chatty daemon never blocks on a full pipe
            stderr=subprocess.STDOUT,
            text=True,
        )

    def logged(self) -> str:
        return self.log.read_text()

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                body = response.read().decode()
                return response.status, json.loads(body) if "json" in response.headers.get("content-type", "") else body
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read().decode() or "null")

    def post(self, path: str, body: dict[str, Any], token: str | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.loads(response.read().decode())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read().decode() or "null")

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        return self.proc.returncode, self.logged()


def eventually(check: Callable[[], bool], seconds: float = 60) -> None:
    """Poll ``check`` (an HTTP call or a query: the daemon may not be listening yet, or a table not created)."""
    wait_for(check, f"{check.__qualname__} to hold", timeout=seconds, interval=0.2, ignore=(OSError, psycopg.Error))


def manifests(directory: Path, extra: str = "") -> None:
    write(directory / "repo.yaml", REPO)
    write(directory / "registry.yaml", REGISTRY)
    write(directory / "accounts.yaml", res("account", "accounts", ID + extra))
    write(directory / "notes.yaml", res("note", "notes", ID + extra, CONTEXT))


def register(url: str, *names: str) -> None:
    """Add tenants to the registry table, once the daemon's first migration has created it."""

    def insert() -> bool:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO registry SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING", (list(names),))
        return True

    eventually(insert)


@pytest.fixture
def daemon(tmp_path: Path, database_url: str) -> Iterator[Daemon]:
    manifests(tmp_path / "config")
    running = Daemon(tmp_path, database_url, tmp_path / "config", token="s3cret-token")
    register(database_url, "acme", "globex")
    eventually(lambda: columns(database_url, "globex", "notes") == ["id"])
    yield running
    if running.proc.poll() is None:
        running.stop()


def test_an_edit_is_rolled_out_to_the_global_table_and_every_tenant(daemon: Daemon, tmp_path: Path) -> None:
    eventually(lambda: daemon.get("/readyz")[0] == 200)
    first = daemon.get("/status")[1]["revision"]
    manifests(tmp_path / "config", "    - {name: label, type: text}\n")
    eventually(lambda: columns(daemon.url, "acme", "notes") == ["id", "label"])
    assert columns(daemon.url, "public", "accounts") == ["id", "label"]
    assert columns(daemon.url, "globex", "notes") == ["id", "label"]
    eventually(lambda: daemon.get("/readyz")[0] == 200 and daemon.get("/status")[1]["revision"] != first)
    repo = daemon.get("/status")[1]["repos"][0]
    latest = max(int(p.name[:14]) for p in (tmp_path / "priv/app/tenant_migrations").glob("*.sql"))
    assert repo["latest_tenant_version"] == latest and repo["tenants"] == 2 and repo["tenants_failed"] == []
    assert daemon.get("/healthz") == (200, {"status": "ok"})
    code, page = daemon.get("/")
    assert code == 200 and "orchestrator" in page and "ready" in page
    code, metrics = daemon.get("/metrics")
    assert code == 200 and 'orchestrator_reconciles_total{result="ok"}' in metrics
    assert "orchestrator_config_valid 1.0" in metrics


def test_an_invalid_edit_keeps_serving_applies_nothing_and_a_fix_resumes(daemon: Daemon, tmp_path: Path) -> None:
    eventually(lambda: daemon.get("/readyz")[0] == 200)
    write(tmp_path / "config" / "accounts.yaml", res("account", "accounts", ID + "    - {name: label, type: strng}\n"))
    eventually(lambda: not daemon.get("/status")[1]["config_valid"])
    status = daemon.get("/status")[1]
    assert status["problems"][0]["field"] == "spec.attributes[1].type" and status["problems"][0]["line"] == 9
    assert daemon.get("/healthz")[0] == 200
    assert "orchestrator_config_valid 0.0" in daemon.get("/metrics")[1]
    assert columns(daemon.url, "public", "accounts") == ["id"]
    manifests(tmp_path / "config", "    - {name: label, type: text}\n")
    eventually(lambda: columns(daemon.url, "public", "accounts") == ["id", "label"])
    eventually(lambda: daemon.get("/status")[1]["config_valid"] and daemon.get("/readyz")[0] == 200)


def test_a_new_tenant_is_migrated_within_an_interval(daemon: Daemon) -> None:
    eventually(lambda: daemon.get("/readyz")[0] == 200)
    register(daemon.url, "initech")
    eventually(lambda: columns(daemon.url, "initech", "notes") == ["id"], seconds=5)


def test_rollouts_need_the_token(daemon: Daemon) -> None:
    eventually(lambda: daemon.get("/readyz")[0] == 200)
    assert daemon.post("/rollouts", {})[0] == 401
    assert daemon.post("/rollouts", {}, token="wrong")[0] == 401
    code, created = daemon.post(
        "/rollouts", {"repo": "app", "tenants": ["acme"], "dry_run": True}, token="s3cret-token"
    )
    assert code == 202
    eventually(lambda: daemon.get(f"/rollouts/{created['id']}")[1]["status"] == "done")
    assert daemon.get("/rollouts/nope")[0] == 404
    code, stderr = daemon.stop()
    assert code == 0 and "s3cret-token" not in stderr and '"event": "serve.stop"' in stderr


def test_no_token_configured_means_403(tmp_path: Path, database_url: str) -> None:
    manifests(tmp_path / "config")
    running = Daemon(tmp_path, database_url, tmp_path / "config")
    try:
        eventually(lambda: running.get("/healthz")[0] == 200)
        assert running.post("/rollouts", {}, token="anything")[0] == 403
    finally:
        assert running.stop()[0] == 0


def test_a_configmap_symlink_swap_is_seen(tmp_path: Path, database_url: str) -> None:
    """A mounted ConfigMap: visible names link into ..data, which is swapped atomically to a new directory."""
    mount = tmp_path / "mount"
    manifests(mount / "..2026_01_01_00_00_00.1")
    os.symlink("..2026_01_01_00_00_00.1", mount / "..data")
    for name in ("repo.yaml", "registry.yaml", "accounts.yaml", "notes.yaml"):
        os.symlink(f"..data/{name}", mount / name)
    running = Daemon(tmp_path, database_url, mount)
    try:
        register(database_url, "acme")
        eventually(lambda: columns(database_url, "acme", "notes") == ["id"])
        manifests(mount / "..2026_01_01_00_01_00.2", "    - {name: label, type: text}\n")
        os.symlink("..2026_01_01_00_01_00.2", mount / "..data_tmp")
        os.replace(mount / "..data_tmp", mount / "..data")
        eventually(lambda: columns(database_url, "acme", "notes") == ["id", "label"])
        assert columns(database_url, "public", "accounts") == ["id", "label"]
    finally:
        assert running.stop()[0] == 0


def test_serve_once_exits_like_migrate(tmp_path: Path, database_url: str) -> None:
    manifests(tmp_path / "config")
    env = {"APP_URL": database_url}
    first = run_cli("serve", "--once", cwd=tmp_path, env=env)
    assert first.code == 0 and "ok" in first.out
    register(database_url, "acme")
    done = run_cli("serve", "--once", cwd=tmp_path, env=env)
    assert done.code == 0 and "ok" in done.out
    assert columns(database_url, "acme", "notes") == ["id"]
    write(tmp_path / "config" / "notes.yaml", res("note", "notes", "    - {name: id, type: strng}\n", CONTEXT))
    assert run_cli("serve", "--once", cwd=tmp_path, env=env).code == 2


SLOW = (
    '  statements:\n    - {name: slow, up: "SELECT pg_sleep(0.3)", down: "SELECT 1"}\n'
    "  multitenancy: {strategy: context}\n"
)


def tenant_rows(url: str, tenants: list[str]) -> dict[str, int]:
    """schema_migrations rows per tenant (0 when untouched: no bookkeeping table)."""
    found = {}
    with psycopg.connect(url) as conn:
        for tenant in tenants:
            exists = conn.execute("SELECT to_regclass(%s)", (f'"{tenant}".schema_migrations',)).fetchone()
            if exists and exists[0]:
                row = conn.execute(
                    psycopg.sql.SQL("SELECT count(*) FROM {}").format(
                        psycopg.sql.Identifier(tenant, "schema_migrations")
                    )
                ).fetchone()
                found[tenant] = int(row[0]) if row else 0
            else:
                found[tenant] = 0
    return found


def test_sigterm_during_a_long_rollout_stops_cleanly_and_a_restart_finishes(tmp_path: Path, database_url: str) -> None:
    names = [f"t{i:02d}" for i in range(30)]
    manifests(tmp_path / "config")
    write(tmp_path / "config" / "notes.yaml", res("note", "notes", ID, SLOW))
    first = run_cli("serve", "--once", cwd=tmp_path, env={"APP_URL": database_url})  # the registry exists now
    assert first.code == 0, first.err
    register(database_url, *names)
    running = Daemon(tmp_path, database_url, tmp_path / "config")
    eventually(lambda: sum(tenant_rows(database_url, names).values()) >= 2)
    started = time.monotonic()
    code, err = running.stop()
    assert code == 0 and time.monotonic() - started < 15, err[-2000:]
    rows = tenant_rows(database_url, names)
    assert set(rows.values()) <= {0, 1} and 0 < sum(rows.values()) < len(names), rows
    for tenant, count in rows.items():  # fully migrated and recorded, or untouched
        assert (columns(database_url, tenant, "notes") == ["id"]) == (count == 1), tenant
    again = run_cli("serve", "--once", cwd=tmp_path, env={"APP_URL": database_url})
    assert again.code == 0, again.err
    assert set(tenant_rows(database_url, names).values()) == {1}


def _outcomes(url: str) -> list[tuple[object, ...]]:
    """Every recorded tenant outcome, for a failure message."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT rollout_id, tenant, status, attempts, applied, last_error FROM orchestrator.rollout_tenants "
            "ORDER BY 1, 2"
        ).fetchall()


def test_two_daemons_on_one_database_migrate_each_tenant_once(tmp_path: Path, database_url: str) -> None:
    names = [f"t{i:02d}" for i in range(20)]
    manifests(tmp_path / "config")
    extra = ("--state", "database")
    first = run_cli("serve", "--once", "--state", "database", cwd=tmp_path, env={"APP_URL": database_url})
    assert first.code == 0, first.err
    register(database_url, *names)
    daemons = [Daemon(tmp_path, database_url, tmp_path / "config", extra=extra) for _ in range(2)]
    try:
        eventually(lambda: set(tenant_rows(database_url, names).values()) == {1}, seconds=30)
    finally:
        assert all(d.stop()[0] == 0 for d in daemons)
    with psycopg.connect(database_url) as conn:
        migrated = conn.execute(
            "SELECT tenant, count(*) FROM orchestrator.rollout_tenants WHERE status = 'migrated' GROUP BY 1 ORDER BY 1"
        ).fetchall()
        files = conn.execute(
            "SELECT count(*) FROM orchestrator.state_files WHERE path LIKE 'priv/app/tenant_migrations/%'"
        )
        assert files.fetchone() == (1,)
    assert migrated == [(name, 1) for name in names], _outcomes(database_url)


def test_a_failing_tenant_is_retried_with_backoff(tmp_path: Path, database_url: str) -> None:
    """In process: the failed tenant sits out passes inside its backoff (still failed in status, readiness
    unaffected), then is retried and forgotten."""
    from orchestrator.daemon.service import Service

    write(
        tmp_path / "config" / "repo.yaml",
        REPO.replace(REPO.splitlines()[5], "  tenants: {static: [good, bad], createSchemas: true}")
        + "  retry: {attempts: 1, initialDelay: 100ms}\n",
    )
    write(tmp_path / "config" / "notes.yaml", res("note", "notes", ID, CONTEXT))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA bad; CREATE TABLE bad.notes (conflict int)")
    os.environ["APP_URL"] = database_url
    try:
        service = Service(tmp_path / "config", tmp_path)
        service.reconcile_job()
        repo = service.status()["repos"][0]
        assert repo["tenants_failed"] == ["bad"] and repo["failures"][0]["failures"] == 1
        assert service.ready and service.started, "a failing tenant takes neither readiness nor the startup gate"
        assert service.tenants.waiting("app") == ["bad"]
        service.tenants_job()  # inside the backoff: not tried again, still failed
        with psycopg.connect(database_url) as conn:
            tries = conn.execute("SELECT count(*) FROM orchestrator.rollout_tenants WHERE tenant = 'bad'").fetchone()
        assert tries == (1,) and service.status()["repos"][0]["tenants_failed"] == ["bad"]
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DROP TABLE bad.notes")

        def retried() -> bool:
            service.tenants_job()  # a pass; the tenant is tried once its backoff (100 ms) has run out
            return bool(service.status()["repos"][0]["tenants_failed"] == [])

        wait_for(retried, "the failed tenant to be retried after its backoff", timeout=30, interval=0.05)
        assert columns(database_url, "bad", "notes") == ["id"]
        assert service.status()["repos"][0]["tenants_current"] == 2
    finally:
        os.environ.pop("APP_URL")
        service.close()
