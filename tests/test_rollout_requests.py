"""Ops-triggered rollout bodies and records, without a server: what is refused (and why), and pruning."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orchestrator import config, model
from orchestrator.daemon import rollouts
from tests.conftest import write

REPO = """apiVersion: orchestrator/v1
kind: Repo
metadata: {{name: {name}}}
spec:
  url: postgresql://localhost/{name}
{tenants}"""


@pytest.fixture
def cfg(tmp_path: Path) -> model.Config:
    write(tmp_path / "app.yaml", REPO.format(name="app", tenants="  tenants: {static: [acme, globex]}\n"))
    write(tmp_path / "analytics.yaml", REPO.format(name="analytics", tenants=""))
    return config.load(tmp_path, base=tmp_path)


def test_a_good_body_names_the_repo_of_the_tenants(cfg: model.Config) -> None:
    assert rollouts.parse({}, cfg) == rollouts.Request()
    request = rollouts.parse({"tenants": ["acme"], "dry_run": True}, cfg)
    assert request == rollouts.Request("app", ("acme",), True), "the only repo with tenants is implied"
    rollouts.check_tenants(request, ["acme", "globex"])
    with pytest.raises(rollouts.BadRollout, match="no tenant\\(s\\) 'nope'"):
        rollouts.check_tenants(rollouts.Request("app", ("nope",)), ["acme", "globex"])


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (None, "not null"),
        ([1, 2], "not an array"),
        ("app", "not a string"),
        ({"repos": "app"}, "unknown field(s) 'repos'"),
        ({"repo": "nope"}, "unknown repo 'nope'; configured: analytics, app"),
        ({"repo": ["app"]}, "repo must be a string"),
        ({"dry_run": 1}, "dry_run must be true or false, not a number"),
        ({"tenants": [""]}, "list of tenant names"),
        ({"repo": "analytics", "tenants": ["acme"]}, "repo 'analytics' has no tenants"),
    ],
)
def test_bad_bodies_are_refused_with_the_reason(cfg: model.Config, body: object, reason: str) -> None:
    with pytest.raises(rollouts.BadRollout) as refused:
        rollouts.parse(body, cfg)
    assert reason in str(refused.value)


def test_nothing_can_be_rolled_out_before_a_configuration_is_loaded() -> None:
    with pytest.raises(rollouts.BadRollout, match="no valid configuration"):
        rollouts.parse({}, None)


def test_finished_records_are_pruned_running_ones_kept() -> None:
    registry = rollouts.Registry()
    running = registry.add(rollouts.Request())
    running.status = "running"
    finished = []
    for _ in range(rollouts.KEPT + 10):
        record = registry.add(rollouts.Request())
        record.status = "done"
        finished.append(record)
    registry.add(rollouts.Request())  # pruning happens as records are added
    kept = {r.id for r in registry.recent()}
    assert running.id in kept and len(kept) == rollouts.KEPT + 2
    assert not any(r.id in kept for r in finished[:10]) and all(r.id in kept for r in finished[10:])


def test_a_tenant_failing_for_ever_waits_at_most_ten_minutes(cfg: model.Config) -> None:
    """The backoff doubles from ``retry.initialDelay`` and stops at 10 minutes, however many failures."""
    from orchestrator.daemon import book
    from orchestrator.migrations.rollout import TenantResult

    repo = next(r for r in cfg.repos if r.name == "app")
    tenants = book.Book()
    delays = []
    for _ in range(2000):
        before = time.time()
        tenants.merge(repo, [TenantResult("acme", "failed", error="boom")], complete=False)
        delays.append(tenants.summary(repo)["failures"][0]["next_retry"] - before)
    assert tenants.summary(repo)["failures"][0]["failures"] == 2000
    assert delays[1] == pytest.approx(2 * delays[0], rel=0.2) and max(delays) <= book.MAX_BACKOFF_S + 1
