"""The daemon's drift check, as a subprocess over real HTTP and PostgreSQL: a tenant changed by hand shows in
/status, on the page and in ``orchestrator_drift_targets{repo}`` within the drift interval, and clears once
fixed by hand."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import columns
from tests.test_daemon import Daemon, eventually, manifests, register


def drift_of(daemon: Daemon) -> dict[str, Any]:
    return dict(daemon.get("/status")[1]["repos"][0]["drift"] or {})


def gauge(daemon: Daemon) -> float | None:
    """``orchestrator_drift_targets{repo="app"}``, read with Prometheus' own parser (the exposition must parse)."""
    for family in text_string_to_metric_families(daemon.get("/metrics")[1]):
        for sample in family.samples:
            if sample.name == "orchestrator_drift_targets" and sample.labels == {"repo": "app"}:
                return float(sample.value)
    return None


def promtool_problems(exposition: str) -> str:
    """What Prometheus' own linter (``promtool check metrics``, Debian's prometheus package) says about the
    exposition: "" when it accepts it (names, HELP/TYPE, units and suffixes)."""
    proc = subprocess.run(
        ["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True, check=False, timeout=60
    )
    return "" if proc.returncode == 0 else (proc.stdout + proc.stderr).strip() or f"exit {proc.returncode}"


def test_a_tenant_changed_by_hand_shows_as_drift_until_fixed(tmp_path: Path, database_url: str) -> None:
    manifests(tmp_path / "config")
    daemon = Daemon(tmp_path, database_url, tmp_path / "config", extra=("--drift-interval", "1s"))
    try:
        register(database_url, "acme", "globex")
        eventually(lambda: columns(database_url, "globex", "notes") == ["id"])
        eventually(lambda: drift_of(daemon).get("targets_checked") == 3 and gauge(daemon) == 0)
        assert drift_of(daemon)["drifted"] == 0 and drift_of(daemon)["error"] is None

        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE acme.notes ADD COLUMN note_of_hand text")
        eventually(lambda: drift_of(daemon).get("drifted") == 1)
        [target] = drift_of(daemon)["targets"]
        assert target["target"] == "app/acme" and target["tenant"] == "acme"
        assert target["differences"] == ["column acme.notes.note_of_hand: not in the model"]
        assert target["differences_count"] == 1
        eventually(lambda: gauge(daemon) == 1)
        assert promtool_problems(daemon.get("/metrics")[1]) == ""
        code, page = daemon.get("/")
        assert code == 200 and "app/acme" in page and "column acme.notes.note_of_hand: not in the model" in page
        assert '"event": "drift.found"' in daemon.logged() and '"tenant": "acme"' in daemon.logged()

        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE acme.notes DROP COLUMN note_of_hand")
        eventually(lambda: drift_of(daemon).get("drifted") == 0 and gauge(daemon) == 0)
        assert "app/acme" not in daemon.get("/")[1]
    finally:
        assert daemon.stop()[0] == 0


def test_a_failed_check_stays_reported_until_a_check_succeeds(tmp_path: Path, database_url: str) -> None:
    manifests(tmp_path / "config")
    daemon = Daemon(tmp_path, database_url, tmp_path / "config", extra=("--drift-interval", "1s"))
    try:
        register(database_url, "acme")
        eventually(lambda: drift_of(daemon).get("targets_checked") == 2)
        snapshot = next((tmp_path / "priv" / "resource_snapshots" / "app" / "tenants" / "notes").glob("*.json"))
        kept = snapshot.read_text()
        snapshot.write_text("{ not json")
        eventually(lambda: drift_of(daemon).get("error") is not None)
        assert "cannot read snapshot" in drift_of(daemon)["error"]
        assert drift_of(daemon)["targets_checked"] == 2  # the last result stays beside the error
        assert "Drift check failed" in daemon.get("/")[1]
        assert '"event": "drift.error"' in daemon.logged()
        snapshot.write_text(kept)
        eventually(lambda: drift_of(daemon).get("error") is None)
        assert "Drift check failed" not in daemon.get("/")[1]
    finally:
        assert daemon.stop()[0] == 0
