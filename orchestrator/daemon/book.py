"""What the daemon knows of every tenant, kept across passes: current, behind, failed (with error and retry).

A pass does not visit every tenant (a failed tenant waits out its backoff; an ops-triggered rollout names a
few), so each pass's results are merged into the book instead of replacing it: a tenant left out keeps what
was known of it, and a failed tenant stays failed — in /status, on the page and in the metrics — until a run
succeeds there. Only a complete pass (every listed tenant considered) forgets tenants the source no longer
lists.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator import model

if TYPE_CHECKING:
    from orchestrator.migrations.rollout import TenantResult

MAX_BACKOFF_S = 600.0
"""The longest a failed tenant waits before its next retry."""

CURRENT = ("migrated", "up to date")
"""Results after which a tenant has every tenant migration."""


@dataclass
class TenantState:
    """One tenant as of the last run that visited it."""

    status: str  # current, behind, failed
    error: str | None = None
    failures: int = 0  # consecutive failed runs
    since: float | None = None  # wall clock of the first failure of this streak
    retry_at: float | None = None  # monotonic: when the tenants job may try it again
    next_retry: float | None = None  # the same as wall clock, for people


@dataclass
class Book:
    """Per repo, per tenant; thread-safe (jobs write, HTTP handlers read)."""

    _repos: dict[str, dict[str, TenantState]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def merge(
        self, repo: model.Repo, results: Iterable[TenantResult], *, complete: bool, left_out: Sequence[str] = ()
    ) -> None:
        """Take a run's results; ``complete``: the run considered every listed tenant but ``left_out``, so a
        tenant in neither is no longer listed and is forgotten."""
        now, wall = time.monotonic(), time.time()
        with self._lock:
            known = self._repos.setdefault(repo.name, {})
            seen = set(left_out)
            for result in results:
                seen.add(result.tenant)
                known[result.tenant] = _next(known.get(result.tenant), result, repo, now, wall)
            if complete:
                for gone in [t for t in known if t not in seen]:
                    del known[gone]

    def waiting(self, repo: str) -> list[str]:
        """Failed tenants still inside their backoff: the tenants job leaves them out of its pass."""
        now = time.monotonic()
        with self._lock:
            known = self._repos.get(repo, {})
            return sorted(t for t, s in known.items() if s.retry_at is not None and s.retry_at > now)

    def retain(self, repos: set[str]) -> None:
        with self._lock:
            for gone in [name for name in self._repos if name not in repos]:
                del self._repos[gone]

    def counts(self, repo: str) -> tuple[int, int, int]:
        """Tenants known, behind (failed ones included: not at the newest tenant migration), failed."""
        with self._lock:
            states = list(self._repos.get(repo, {}).values())
        behind = sum(s.status != "current" for s in states)
        return len(states), behind, sum(s.status == "failed" for s in states)

    def summary(self, repo: model.Repo) -> dict[str, Any]:
        """The repo's tenants for /status: counts, the failed ones with error and next retry, held ones."""
        with self._lock:
            known = dict(self._repos.get(repo.name, {}))
        failed = sorted((t, s) for t, s in known.items() if s.status == "failed")
        canaries = set(repo.rollout.canary)
        return {
            "tenants": len(known),
            "tenants_current": sum(s.status == "current" for s in known.values()),
            "tenants_behind": sum(s.status != "current" for s in known.values()),
            "tenants_failed": [t for t, _ in failed],
            "failures": [
                {
                    "tenant": tenant,
                    "error": s.error,
                    "failures": s.failures,
                    "since": s.since,
                    "next_retry": s.next_retry,
                    "canary": tenant in canaries,
                }
                for tenant, s in failed
            ],
            "held_by_canary": [t for t, s in failed if t in canaries],  # no other tenant gets what they failed on
        }


def _next(before: TenantState | None, result: TenantResult, repo: model.Repo, now: float, wall: float) -> TenantState:
    if result.status in CURRENT:
        return TenantState("current")
    if result.status == "failed":
        failures = (before.failures if before else 0) + 1
        delay = min(repo.retry.initial_delay_ms / 1000 * 2 ** min(failures - 1, 30), MAX_BACKOFF_S)
        since = before.since if before and before.since is not None else wall
        return TenantState("failed", result.error, failures, since, now + delay, wall + delay)
    if before is not None and before.status == "failed":
        return before  # not run this time (a canary held it, the rollout stopped): still failed as it was
    return TenantState("behind", result.error)
