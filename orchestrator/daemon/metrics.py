"""Every Prometheus metric of the daemon, in one place (prometheus_client's default registry)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("orchestrator_reconciles_total", "Reconciles run, by result.", ["result"])
RECONCILE_SECONDS = Histogram("orchestrator_reconcile_duration_seconds", "Duration of full reconciles.")
MIGRATIONS_APPLIED = Counter("orchestrator_migrations_applied_total", "Global migrations applied, by repo.", ["repo"])
TENANT_MIGRATIONS = Counter(
    "orchestrator_tenant_rollouts_total", "Tenants handled by rollouts, by repo and status.", ["repo", "status"]
)
TENANTS_FAILED = Gauge(
    "orchestrator_tenants_failed", "Tenants whose last run failed (until a run succeeds there), by repo.", ["repo"]
)
TENANTS_BEHIND = Gauge(
    "orchestrator_tenants_behind",
    "Tenants not at the newest tenant migration (failed ones included), by repo.",
    ["repo"],
)
DRIFT_TARGETS = Gauge(
    "orchestrator_drift_targets",
    "Targets (the global schemas, each tenant schema) whose live catalog differs from the model of their applied "
    "version, at the last successful drift check, by repo.",
    ["repo"],
)
LAST_SUCCESS = Gauge("orchestrator_last_successful_reconcile_timestamp_seconds", "When the last reconcile succeeded.")
CONNECTIONS_ABANDONED = Counter(
    "orchestrator_connections_abandoned_total", "Connections given up as silent (half-open) by the watchdog.", ["repo"]
)
RETRIES = Counter("orchestrator_retries_total", "Attempts retried after a transient error, by repo.", ["repo"])
CONFIG_VALID = Gauge("orchestrator_config_valid", "1 when the manifests are valid, 0 when the last edit was not.")


def count_tenants(repo: str, results: Iterable[Any]) -> None:
    """Count what a run did per tenant (the gauges are set from the daemon's tenant book, across passes)."""
    for result in results:
        if result.status != "up to date":
            TENANT_MIGRATIONS.labels(repo=repo, status=result.status).inc()
