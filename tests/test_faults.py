"""Breaking things on purpose: lost connections, killed runners and daemons, PostgreSQL restarts mid-rollout.

The promise under test: whatever breaks, no tenant is left half-migrated, nothing is applied twice and nothing
is lost. After every fault the live database is checked (``Project.check``): each tenant's versions are a
prefix of the migration files, recorded once each, and its schema matches the model of that version in
``pg_catalog``. At the end every tenant is at the latest version.

``make test`` runs these at a scale that keeps the suite quick; ``make soak`` (``ORCHESTRATOR_SOAK=1``) runs
the long version: 20 kills each of the runner and of the daemon, more PostgreSQL restarts, denser faults.
Each test prints its figures (run with ``-s`` to see them).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import sql

from tests.cluster import Cluster
from tests.faultproxy import FaultProxy
from tests.fleet import Project, names
from tests.test_daemon import free_port


@dataclass(frozen=True)
class Scale:
    tenants: int
    kills: int
    restarts: int
    fault_interval: float  # mean seconds between injected connection faults
    fault_rounds: int  # rollouts through the fault proxy: the first migrates, each later one rolls back and migrates


SOAK = os.environ.get("ORCHESTRATOR_SOAK") == "1"
SCALE = Scale(200, kills=20, restarts=6, fault_interval=0.15, fault_rounds=5) if SOAK else Scale(200, 4, 2, 0.3, 1)
SEED = int(os.environ.get("ORCHESTRATOR_FAULT_SEED", "7"))
KILL_WINDOW = (0.5, 1.8)
"""A kill lands this many seconds after the process starts (start-up included: that is a moment too)."""

pytestmark = pytest.mark.slow
T = TypeVar("T")


def figures(name: str, **values: object) -> None:
    print(f"\n[{name}] " + ", ".join(f"{k}={v}" for k, v in values.items()))


def ready(root: Path, url: str, *, backfill_per_kill: int = 0) -> tuple[Project, list[str]]:
    """Two generations of migrations, the global ones applied, the tenants registered but not migrated.

    With ``backfill_per_kill``, a slow backfill makes the whole rollout last about that many kill windows,
    so every kill lands inside it.
    """
    project = Project(root, url)
    project.generate(1)
    project.generate(2)
    tenants = names(SCALE.tenants)
    if backfill_per_kill:
        seconds = backfill_per_kill * KILL_WINDOW[1] * 4 / len(tenants)  # concurrency 4
        project.add_backfill(round(seconds, 3))
    migrated = project.cli("migrate")
    assert migrated.code == 0, migrated.err
    project.register(tenants)
    return project, tenants


def test_connection_faults_during_a_200_tenant_rollout(tmp_path: Path, database_url: str) -> None:
    """Migrate every tenant through the fault proxy; in the soak, then roll back a step and migrate again,
    several times, each under faults and each followed by the consistency check."""
    project, tenants = ready(tmp_path, database_url)
    retries, rollouts = 0, []
    with FaultProxy(database_url, seed=SEED, mean_interval=SCALE.fault_interval, max_stall=1.0) as proxy:
        for round_ in range(SCALE.fault_rounds):
            steps = [("migrate", "--tenants")] if round_ == 0 else [("rollback", "--tenants"), ("migrate", "--tenants")]
            for step in steps:
                proxy.armed.set()
                result = project.cli(*step, "--json", url=proxy.url())
                proxy.armed.clear()
                assert result.code == 0, result.err
                report = json.loads(result.out)["repos"][0]["tenants"]
                expected = "migrated" if step[0] == "migrate" else "rolled back"
                assert sorted(t["tenant"] for t in report if t["status"] == expected) == tenants
                retries += sum(t["attempts"] - 1 for t in report)
                checked = project.check(tenants, finished=step[0] == "migrate")
                rollouts.append(f"{step[0]}:{proxy.total}")
    assert proxy.total >= 5, "the proxy injected faults"
    assert retries >= 1, "some tenant needed a retry"
    figures(
        "connection faults",
        tenants=checked.tenants,
        rollouts=len(rollouts),
        faults=proxy.total,
        kinds=dict(proxy.faults),
        faults_after_each=rollouts,
        connections=proxy.connections,
        tenant_retries=retries,
        consistent="after every rollout",
    )


def test_kill_9_of_the_runner_at_random_moments(tmp_path: Path, database_url: str) -> None:
    project, tenants = ready(tmp_path, database_url, backfill_per_kill=SCALE.kills + 2)
    rng = random.Random(SEED)
    progress = []
    for _ in range(SCALE.kills):
        runner = project.popen("migrate", "--tenants")
        time.sleep(rng.uniform(*KILL_WINDOW))
        assert runner.poll() is None, "the kill lands before the rollout ends"
        runner.kill()
        runner.wait()
        progress.append(project.check(tenants).finished)  # no tenant half-migrated, nothing twice
    assert progress[-1] < len(tenants), "every kill landed inside the rollout"
    final = project.cli("migrate", "--tenants")
    assert final.code == 0, final.err
    checked = project.check(tenants, finished=True)
    figures("kill -9 runner", tenants=checked.tenants, kills=SCALE.kills, finished_after_each=progress, consistent=True)


def test_kill_9_of_the_daemon_at_random_moments(tmp_path: Path, database_url: str) -> None:
    project, tenants = ready(tmp_path, database_url, backfill_per_kill=SCALE.kills + 2)
    rng = random.Random(SEED + 1)
    port = free_port()
    serve = ("serve", "--config", "config", "--interval", "1s", "--listen", f"127.0.0.1:{port}")
    progress = []
    for _ in range(SCALE.kills):
        daemon = project.popen(*serve)
        time.sleep(rng.uniform(KILL_WINDOW[0] + 0.3, KILL_WINDOW[1] + 0.3))  # it also loads and validates
        assert daemon.poll() is None, daemon.stderr.read() if daemon.stderr else ""
        daemon.kill()
        daemon.wait()
        progress.append(project.check(tenants).finished)
    assert progress[-1] < len(tenants), "every kill landed inside the rollout"
    daemon = project.popen(*serve)
    try:
        checked = _eventually(lambda: project.check(tenants, finished=True), timeout=240)
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=120)
    assert code == 0
    figures("kill -9 daemon", tenants=checked.tenants, kills=SCALE.kills, finished_after_each=progress, consistent=True)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A PostgreSQL this test may restart."""
    owned = Cluster()
    owned.start()
    with psycopg.connect(owned.url(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier("app")))
    yield owned
    owned.destroy()


def test_postgres_restarts_mid_rollout(tmp_path: Path, cluster: Cluster) -> None:
    project, tenants = ready(tmp_path, cluster.url("app"), backfill_per_kill=2 * SCALE.restarts + 2)
    rng = random.Random(SEED + 2)
    runner = project.popen("migrate", "--tenants")
    progress = []
    modes = ["fast", "immediate"] * SCALE.restarts
    for mode in modes[: SCALE.restarts]:
        time.sleep(rng.uniform(*KILL_WINDOW))
        assert runner.poll() is None, "the restart lands inside the rollout"
        cluster.restart(mode)  # immediate: a crash, then WAL recovery
        progress.append(project.check(tenants).finished)
    code = runner.wait(timeout=600)
    assert code == 0, runner.stderr.read() if runner.stderr else ""
    checked = project.check(tenants, finished=True)
    figures(
        "postgres restarts",
        tenants=checked.tenants,
        restarts=SCALE.restarts,
        finished_after_each=progress,
        consistent=True,
    )


def _eventually(check: Callable[[], T], *, timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def test_a_lock_held_past_lock_timeout_fails_one_tenant_only(tmp_path: Path, database_url: str) -> None:
    project = Project(tmp_path, database_url)
    project.generate(1)
    tenants = names(SCALE.tenants)
    assert project.cli("migrate").code == 0
    project.register(tenants)
    assert project.cli("migrate", "--tenants").code == 0
    project.generate(2)
    repo = (tmp_path / "config/repo.yaml").read_text()
    fast = repo.replace("lockTimeout: 2s", "lockTimeout: 300ms").replace("attempts: 20", "attempts: 3")
    (tmp_path / "config/repo.yaml").write_text(fast)
    locked = tenants[len(tenants) // 2]
    with psycopg.connect(database_url) as blocker:  # holds the lock until the rollout is over
        blocker.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(sql.Identifier(locked, "tasks")))
        started = time.monotonic()
        result = project.cli("migrate", "--tenants", "--json")
        seconds = time.monotonic() - started
    assert result.code == 1
    report = {t["tenant"]: t for t in json.loads(result.out)["repos"][0]["tenants"]}
    assert report[locked]["status"] == "failed" and report[locked]["attempts"] == 3
    assert "55P03" in report[locked]["error"]
    assert all(report[t]["status"] == "migrated" for t in tenants if t != locked)
    status = project.cli("status", "--tenants", "--json")
    assert status.code == 1
    rows = {row["tenant"]: row for row in json.loads(status.out)["repos"][0]["tenants"]}
    assert rows[locked]["last_status"] == "failed" and rows[locked]["pending"]
    checked = project.check(tenants)  # the locked tenant is whole at generation 1, the others at 2 (all its steps)
    assert checked.at == {1: 1, len(project.tenant_versions()): len(tenants) - 1}
    assert project.cli("migrate", "--tenants", "--retry-failed").code == 0
    project.check(tenants, finished=True)
    figures("lock contention", tenants=len(tenants), failed=[locked], attempts=3, rollout_seconds=round(seconds, 1))


FREEZE_TENANTS = 200 if SOAK else 60
FREEZE_ROUNDS = 3 if SOAK else 1


def _timeouts(project: Project, statement_timeout: str) -> None:
    """The repo timeouts of the half-open tests: a short lockWait, so an orphan holding a lock would show."""
    path = project.root / "config/repo.yaml"
    text = path.read_text().replace(
        "timeouts: {lockTimeout: 2s, lockWait: 60s}",
        f"timeouts: {{statementTimeout: {statement_timeout}, lockTimeout: 2s, lockWait: 10s}}",
    )
    path.write_text(text.replace("attempts: 20", "attempts: 30"))


def _sessions_left(url: str) -> list[tuple[int, str, str]]:
    """The orchestrator's sessions the server still has in this test's database."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, application_name, state FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name LIKE 'orchestrator%%' AND pid <> pg_backend_pid()"
        ).fetchall()
    return [(int(pid), str(name), str(state)) for pid, name, state in rows]


def _frozen_ready(root: Path, url: str, statement_timeout: str) -> tuple[Project, list[str]]:
    project = Project(root, url)
    project.generate(1)
    project.generate(2)
    project.add_backfill(0.05)  # each tenant takes a moment: freezes land inside statements too
    _timeouts(project, statement_timeout)
    assert project.cli("migrate").code == 0
    tenants = names(FREEZE_TENANTS)
    project.register(tenants)
    return project, tenants


@pytest.mark.parametrize("statement_timeout", ["5s", "0s"])
def test_half_open_connections_are_abandoned_and_the_rollout_finishes(
    tmp_path: Path, database_url: str, statement_timeout: str
) -> None:
    """A proxy freezes one connection every 0.5-3 s without closing either side (the kernel keeps ACKing, so
    keepalives never fire). Without the watchdog the rollout waits forever (run_cli's 120 s limit fails it)."""
    project, tenants = _frozen_ready(tmp_path, database_url, statement_timeout)
    abandoned, seconds = 0, []
    with FaultProxy(database_url, seed=SEED, kinds=("freeze",), every=(0.5, 3.0)) as proxy:
        for round_ in range(FREEZE_ROUNDS + 5):
            if round_ >= FREEZE_ROUNDS and proxy.faults["freeze"] >= 2 and abandoned >= 1:
                break  # a fast server finishes a rollout between two freezes: more rounds until enough struck
            steps = [("migrate",)] if round_ == 0 else [("rollback",), ("migrate",)]
            for (step,) in steps:
                proxy.armed.set()
                started = time.monotonic()
                # slow is allowed (every freeze costs its worker seconds), hanging is not: run_cli dumps the stacks
                result = project.cli(step, "--tenants", "--json", url=proxy.url(), timeout=300)
                seconds.append(round(time.monotonic() - started, 1))
                proxy.armed.clear()
                assert result.code == 0, result.err[-3000:]
                report = json.loads(result.out)["repos"][0]["tenants"]
                expected = "migrated" if step == "migrate" else "rolled back"
                assert sorted(t["tenant"] for t in report if t["status"] == expected) == tenants
                abandoned += result.err.count('"connection.abandoned"')
                checked = project.check(tenants, finished=step == "migrate")  # every tenant whole, each version once
                latest = len(project.tenant_versions())
                assert checked.at == {latest if step == "migrate" else latest - 1: len(tenants)}, "exactly one step"
                # the frozen sockets are still open on the proxy: the server would keep their sessions
                assert _sessions_left(database_url) == [], "an orchestrator session outlived the run"
    assert proxy.faults["freeze"] >= 2, "the proxy froze connections during the rollout"
    assert abandoned >= 1, "some attempt was caught by a frozen connection and abandoned"
    figures(
        f"half-open, statementTimeout {statement_timeout}",
        tenants=len(tenants),
        rollouts=len(seconds),
        freezes=proxy.faults["freeze"],
        abandoned=abandoned,
        seconds=seconds,
        sessions_left=0,
    )


def test_connects_frozen_mid_handshake_leave_no_session_behind(tmp_path: Path, database_url: str) -> None:
    """A connection can freeze before the client hears the end of the start-up: the server has a ready session
    whose pid nobody learnt, and the client's connect times out. The connect is retried, and that session is
    found (ours, never used, older than the connect's timeout) and terminated, not left idle on the server."""
    project = Project(tmp_path, database_url)
    project.generate(1)
    assert project.cli("migrate").code == 0
    tenants = names(6)
    project.register(tenants)
    with FaultProxy(database_url, seed=SEED, kinds=("freeze",)) as proxy:
        proxy.mute_handshakes = 3  # the control connection and two workers' first connects
        result = project.cli("migrate", "--tenants", "--json", url=f"{proxy.url()} connect_timeout=2")
        assert result.code == 0, result.err[-3000:]
        assert proxy.faults["mute-handshake"] == 3
        report = json.loads(result.out)["repos"][0]["tenants"]
        assert sorted(t["tenant"] for t in report if t["status"] == "migrated") == tenants
        assert _sessions_left(database_url) == [], "a session of a timed-out connect outlived the run"
    project.check(tenants, finished=True)


def test_half_open_connections_in_the_daemon(tmp_path: Path, database_url: str) -> None:
    """The daemon's reconcile through a proxy that freezes a connection every 0.5-3 s: it finishes, /status
    shows the abandoned connections (and the metric counts them), and SIGTERM leaves no session behind."""
    project, tenants = _frozen_ready(tmp_path, database_url, "5s")
    port = free_port()
    with FaultProxy(database_url, seed=SEED + 3, kinds=("freeze",), every=(0.5, 3.0)) as proxy:
        proxy.armed.set()
        daemon = project.popen(
            "serve", "--config", "config", "--interval", "1s", "--listen", f"127.0.0.1:{port}", url=proxy.url()
        )
        try:
            # wait on /status, then check the catalogs once: the full check (every tenant's catalog, temporary
            # tables) run in a loop holds snapshots that the tenants' CREATE INDEX CONCURRENTLY must wait for
            _eventually(lambda: _current_in_status(port, len(tenants)), timeout=240)
            checked = project.check(tenants, finished=True)
            status = _eventually(lambda: _abandoned_in_status(port), timeout=120)
            metrics = _http(port, "/metrics")
        finally:
            proxy.armed.clear()  # the network heals; the daemon is stopped with its job done
            code = _stop(daemon, project)
        assert code == 0, project.logged()[-5000:]
        assert _sessions_left(database_url) == [], "an orchestrator session outlived the daemon"
    lines = [line for line in project.logged().splitlines() if line.strip()]
    logged = [json.loads(line) for line in lines]  # every line of the daemon's log is JSON, psycopg's included
    assert all("event" in entry and "level" in entry for entry in logged)
    warned = [e for e in logged if e["event"] == "connection.abandoned"]
    assert warned and all(e["level"] == "warning" and e["repo"] == "app" for e in warned)
    abandoned = [e for e in status["recent_events"] if e["event"] == "connection.abandoned"]
    assert all(e["repo"] == "app" and e["reason"] and e["backend_pid"] for e in abandoned)
    assert re.search(r'orchestrator_connections_abandoned_total\{repo="app"\} [1-9]', metrics)
    figures(
        "half-open, daemon",
        tenants=checked.tenants,
        freezes=proxy.faults["freeze"],
        abandoned_in_status=len(abandoned),
        reasons=sorted({e["reason"].split(" for ")[0] for e in abandoned}),
    )


def _stop(process: subprocess.Popen[str], project: Project, timeout: float = 120) -> int:
    """SIGTERM, then wait; a process that does not exit is made to dump every thread's stack (faulthandler)."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        process.wait(timeout=30)
        lines = [line for line in project.logged().splitlines() if not line.startswith("{")]
        raise AssertionError("did not exit after SIGTERM:\n" + "\n".join(lines[-80:])) from None


def _http(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return str(response.read().decode())


def _current_in_status(port: int, count: int) -> None:
    repos = json.loads(_http(port, "/status"))["repos"]
    assert repos, "no configuration loaded yet"
    assert repos[0]["tenants_current"] == count, {k: v for k, v in repos[0].items() if k.startswith("tenants")}


def _abandoned_in_status(port: int) -> dict[str, Any]:
    status: dict[str, Any] = json.loads(_http(port, "/status"))
    assert any(e["event"] == "connection.abandoned" for e in status["recent_events"]), status["recent_events"]
    return status


STORM_TENANTS, STORM_RUNS = (120, 5) if SOAK else (120, 1)


@pytest.mark.parametrize("kind", ["storm", "storm-leak"])
def test_reset_storms_fail_no_tenant(tmp_path: Path, database_url: str, kind: str) -> None:
    """Every open connection reset at once, every 0.3-1.5 s, while 120 tenants migrate (and roll back, in the
    soak): with 30 attempts of 100 ms-1 s, no tenant may run out of attempts. ``storm-leak``: the proxy keeps
    the server side of each reset connection open, so PostgreSQL keeps that session, idle, with the tenant's
    advisory lock (what failed one tenant 30 times in a row before orphaned sessions were swept)."""
    project = Project(tmp_path, database_url)
    project.generate(1)
    project.generate(2)
    path = project.root / "config/repo.yaml"
    path.write_text(path.read_text().replace("retry: {attempts: 20, initialDelay: 50ms, maxDelay: 1s}", RETRY_30))
    assert RETRY_30 in path.read_text()
    assert project.cli("migrate").code == 0
    tenants = names(STORM_TENANTS)
    project.register(tenants)
    runs, attempts_max, retried = [], 0, 0
    with FaultProxy(database_url, seed=SEED + 4, kinds=(kind,), every=(0.3, 1.5)) as proxy:
        for run in range(STORM_RUNS + 10):
            if run >= STORM_RUNS and proxy.faults[kind] >= 3 and proxy.reset_by_storms >= 10:
                break  # a fast server finishes a rollout between two storms: more rollouts until enough struck
            for step in ("migrate",) if run == 0 else ("rollback", "migrate"):
                proxy.armed.set()
                result = project.cli(step, "--tenants", "--json", url=proxy.url())
                proxy.armed.clear()
                assert result.code == 0, result.err[-3000:]
                report = json.loads(result.out)["repos"][0]["tenants"]
                failed = [t for t in report if t["status"] == "failed"]
                assert failed == [], failed
                attempts_max = max(attempts_max, *(t["attempts"] for t in report))
                retried += sum(t["attempts"] > 1 for t in report)
                checked = project.check(tenants, finished=step == "migrate")
                runs.append(f"{step}:{proxy.faults[kind]}")
    assert proxy.faults[kind] >= 3 and proxy.reset_by_storms >= 10, "the storms reset connections"
    figures(
        f"reset storms ({kind})",
        tenants=checked.tenants,
        rollouts=len(runs),
        storms=proxy.faults[kind],
        connections_reset=proxy.reset_by_storms,
        tenants_retried=retried,
        most_attempts=attempts_max,
        failed=0,
    )


RETRY_30 = "retry: {attempts: 30, initialDelay: 100ms, maxDelay: 1s}"
