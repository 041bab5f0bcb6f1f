"""The daemon as operators rely on it, as a subprocess over real HTTP and PostgreSQL: failed tenants stay
counted across passes, a failing canary holds every other tenant (new ones included), a byte-identical GitOps
revert recovers, bad rollout bodies are refused with the reason, dry runs show their SQL, and the probes:
readiness survives failures, liveness fails while a job is stuck."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import columns, write
from tests.harness import res
from tests.test_daemon import CONTEXT, ID, REGISTRY, REPO, Daemon, eventually, register

TOKEN = "ops-token-4d2c"


def configure(directory: Path, repo_extra: str = "", notes_extra: str = "") -> None:
    write(directory / "repo.yaml", REPO + repo_extra)
    write(directory / "registry.yaml", REGISTRY)
    write(directory / "accounts.yaml", res("account", "accounts", ID))
    write(directory / "notes.yaml", res("note", "notes", ID + notes_extra, CONTEXT))


def repo_status(daemon: Daemon) -> dict[str, Any]:
    status: dict[str, Any] = daemon.get("/status")[1]["repos"][0]
    return status


def gauge(daemon: Daemon, name: str) -> float:
    text = daemon.get("/metrics")[1]
    found = re.search(rf'^{name}\{{repo="app"\}} (\S+)$', text, re.M)
    assert found, f"{name} is not exported"
    return float(found.group(1))


def tenant_passes(daemon: Daemon) -> float:
    """When the tenants job last finished: a new value is a new pass."""
    return float(daemon.get("/status")[1]["jobs"]["tenants"]["last_finished"] or 0)


def post_raw(daemon: Daemon, body: bytes, token: str = TOKEN) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{daemon.port}/rollouts",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read().decode())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read().decode() or "null")


def start(root: Path, url: str, stopped: list[Daemon], repo_extra: str = "", extra: tuple[str, ...] = ()) -> Daemon:
    """Write the manifests and start a daemon on them (stopped by the ``stopped`` fixture)."""
    configure(root / "config", repo_extra)
    daemon = Daemon(root, url, root / "config", token=TOKEN, extra=extra)
    stopped.append(daemon)
    return daemon


@pytest.fixture
def stopped() -> Iterator[list[Daemon]]:
    """Daemons a test started, stopped (SIGTERM, exit 0) at the end whatever happened."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.proc.poll() is None:
            code, log = daemon.stop()
            assert code == 0, log[-3000:]


def test_a_failing_tenant_stays_counted_over_ten_passes_then_clears(
    tmp_path: Path, database_url: str, stopped: list[Daemon]
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA broken; CREATE TABLE broken.notes (conflict int)")
    daemon = start(tmp_path, database_url, stopped, "  retry: {attempts: 1, initialDelay: 100ms}\n")
    register(database_url, "acme", "broken")
    eventually(lambda: repo_status(daemon)["tenants_failed"] == ["broken"])
    seen, last = 0, tenant_passes(daemon)
    while seen < 10:  # ten passes of the tenants job, each one checked
        eventually(lambda last=last: tenant_passes(daemon) > last)  # type: ignore[misc]
        last, seen = tenant_passes(daemon), seen + 1
        repo = repo_status(daemon)
        assert repo["tenants_failed"] == ["broken"] and repo["tenants"] == 2 and repo["tenants_current"] == 1
        failure = repo["failures"][0]
        assert "already exists" in failure["error"] and failure["failures"] >= 1 and failure["next_retry"]
        assert gauge(daemon, "orchestrator_tenants_failed") == 1
        assert gauge(daemon, "orchestrator_tenants_behind") == 1
        assert daemon.get("/readyz")[0] == 200, "one failing tenant does not take readiness"
        assert daemon.get("/startupz")[0] == 200 and daemon.get("/healthz")[0] == 200
    page = daemon.get("/")[1]
    assert "broken" in page and "already exists" in page
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP TABLE broken.notes")
    eventually(lambda: repo_status(daemon)["tenants_failed"] == [], seconds=90)
    assert columns(database_url, "broken", "notes") == ["id"]
    assert gauge(daemon, "orchestrator_tenants_failed") == 0 and gauge(daemon, "orchestrator_tenants_behind") == 0
    _, log = daemon.stop()
    failed = [json.loads(line) for line in log.splitlines() if '"tenant.failed"' in line]
    assert failed and all(e["level"] == "error" and e["tenant"] == "broken" and e["error"] for e in failed)


def test_a_failing_canary_holds_every_other_tenant_including_new_ones(
    tmp_path: Path, database_url: str, stopped: list[Daemon]
) -> None:
    canary = "  rollout: {canary: [acme], concurrency: 2}\n  retry: {attempts: 1, initialDelay: 100ms}\n"
    daemon = start(tmp_path, database_url, stopped, canary)
    register(database_url, "acme", "globex")
    eventually(
        lambda: columns(database_url, "globex", "notes") == ["id"] and repo_status(daemon)["tenants_current"] == 2
    )
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE acme.notes ADD COLUMN extra int")  # the canary will fail on the next migration
    configure(tmp_path / "config", canary, "    - {name: extra, type: text}\n")
    eventually(lambda: repo_status(daemon)["tenants_failed"] == ["acme"])
    register(database_url, "initech")  # a new tenant while the canary fails
    eventually(lambda: columns(database_url, "initech", "notes") == ["id"])
    for _ in range(3):  # passes of the tenants job, the canary waiting out its backoff in some of them
        last = tenant_passes(daemon)
        eventually(lambda last=last: tenant_passes(daemon) > last)  # type: ignore[misc]
        assert columns(database_url, "globex", "notes") == ["id"], "a tenant got what the canary failed on"
        assert columns(database_url, "initech", "notes") == ["id"], "the new tenant got what the canary failed on"
        repo = repo_status(daemon)
        assert repo["held_by_canary"] == ["acme"] and repo["failures"][0]["canary"] is True
        assert repo["tenants_behind"] == 3 and repo["tenants_current"] == 0
    # an ops-triggered rollout of the held tenants is held too; a dry run of the canary shows its SQL
    code, created = daemon.post("/rollouts", {"repo": "app", "tenants": ["globex"]}, token=TOKEN)
    assert code == 202
    eventually(lambda: daemon.get(f"/rollouts/{created['id']}")[1]["status"] == "failed")
    held = daemon.get(f"/rollouts/{created['id']}")[1]
    assert [t["status"] for t in held["result"]["app"]["tenants"]] == ["held"]
    assert "canary acme" in held["result"]["app"]["tenants"][0]["error"]
    assert columns(database_url, "globex", "notes") == ["id"]
    code, planned = daemon.post("/rollouts", {"repo": "app", "tenants": ["acme"], "dry_run": True}, token=TOKEN)
    assert code == 202
    eventually(lambda: daemon.get(f"/rollouts/{planned['id']}")[1]["status"] != "pending")
    eventually(lambda: daemon.get(f"/rollouts/{planned['id']}")[1]["status"] not in ("pending", "running"))
    plan = daemon.get(f"/rollouts/{planned['id']}")[1]["plan"]
    assert [p["target"] for p in plan] == ["app/acme"]
    assert any('ADD COLUMN "extra"' in statement for statement in plan[0]["sql"]), plan
    listed = daemon.get("/rollouts")[1]["rollouts"]
    assert [r["id"] for r in listed][:2] == [planned["id"], created["id"]]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE acme.notes DROP COLUMN extra")
    for tenant in ("acme", "globex", "initech"):
        eventually(lambda tenant=tenant: columns(database_url, tenant, "notes") == ["id", "extra"], seconds=90)  # type: ignore[misc]
    eventually(lambda: repo_status(daemon)["held_by_canary"] == [] and repo_status(daemon)["tenants_current"] == 3)


def test_a_byte_identical_revert_recovers_within_an_interval(
    tmp_path: Path, database_url: str, stopped: list[Daemon]
) -> None:
    daemon = start(tmp_path, database_url, stopped)
    eventually(lambda: daemon.get("/startupz")[0] == 200)
    live = daemon.get("/status")[1]["revision"]
    good = (tmp_path / "config/accounts.yaml").read_bytes()
    (tmp_path / "config/accounts.yaml").write_bytes(good.replace(b"bigint", b"bigintt"))
    eventually(lambda: not daemon.get("/status")[1]["config_valid"])
    status = daemon.get("/status")[1]
    assert status["revision"] == live and status["rejected_revision"] not in (None, live)
    assert status["problems"][0]["file"].endswith("accounts.yaml") and status["problems"][0]["line"]
    assert daemon.get("/readyz")[0] == 200, "a bad edit after start does not take readiness"
    assert "orchestrator_config_valid 0.0" in daemon.get("/metrics")[1]
    (tmp_path / "config/accounts.yaml").write_bytes(good)  # git revert / ConfigMap rollback: the same bytes
    eventually(lambda: daemon.get("/status")[1]["config_valid"], seconds=15)
    status = daemon.get("/status")[1]
    assert status["revision"] == live and status["rejected_revision"] is None and status["problems"] == []
    assert "orchestrator_config_valid 1.0" in daemon.get("/metrics")[1]
    _, log = daemon.stop()
    invalid = [json.loads(line) for line in log.splitlines() if '"config.invalid"' in line]
    assert invalid and invalid[0]["level"] == "error" and "accounts.yaml:" in invalid[0]["problems"][0]


BAD_BODIES = [
    (b"null", "JSON object"),
    (b"[1, 2]", "JSON object"),
    (b"not json", "not JSON"),
    (b'{"repos": "app"}', "unknown field"),
    (b'{"repo": "nope"}', "unknown repo 'nope'"),
    (b'{"repo": 1}', "repo must be a string"),
    (b'{"dry_run": "yes"}', "dry_run must be true or false"),
    (b'{"tenants": "acme"}', "list of tenant names"),
    (b'{"repo": "app", "tenants": ["nope"]}', "no tenant(s) 'nope'"),
]


def test_bad_rollout_bodies_are_refused_with_the_reason(
    tmp_path: Path, database_url: str, stopped: list[Daemon]
) -> None:
    daemon = start(tmp_path, database_url, stopped)
    register(database_url, "acme")
    eventually(lambda: daemon.get("/startupz")[0] == 200)
    for body, reason in BAD_BODIES:
        code, answer = post_raw(daemon, body)
        assert code == 400 and reason in answer["error"], (body, answer)
    assert daemon.get("/rollouts")[1] == {"rollouts": []}, "nothing was recorded for a refused body"
    code, created = post_raw(daemon, b'{"repo": "app", "tenants": ["acme"]}')
    assert code == 202
    eventually(lambda: daemon.get(f"/rollouts/{created['id']}")[1]["status"] == "done")


def test_liveness_fails_while_a_job_is_stuck_and_recovers(
    tmp_path: Path, database_url: str, stopped: list[Daemon]
) -> None:
    daemon = start(tmp_path, database_url, stopped, "  timeouts: {lockTimeout: 120s}\n", extra=("--stuck-after", "1s"))
    eventually(lambda: daemon.get("/startupz")[0] == 200)
    with psycopg.connect(database_url) as blocker:
        blocker.execute("LOCK TABLE public.accounts IN ACCESS EXCLUSIVE MODE")
        write(tmp_path / "config/accounts.yaml", res("account", "accounts", ID + "    - {name: label, type: text}\n"))
        eventually(lambda: daemon.get("/healthz")[0] == 503)
        _, health = daemon.get("/healthz")
        assert health["status"] == "stuck" and "reconcile" in health["reason"]
        assert daemon.get("/readyz")[0] == 200
    eventually(lambda: daemon.get("/healthz")[0] == 200)
    eventually(lambda: columns(database_url, "public", "accounts") == ["id", "label"])
