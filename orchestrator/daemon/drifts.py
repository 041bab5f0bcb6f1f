"""The daemon's record of drift checks, per repo, as /status and the page show it.

A check's result replaces the previous one; a failed check keeps the last result and adds its error, which
stays until a check succeeds (an operator sees both what drifted last and that checking stopped working).
Long lists are capped: a fleet where every tenant drifted must not make /status megabytes long; the counts
stay exact.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.daemon import metrics

if TYPE_CHECKING:
    from orchestrator.drift import RepoDrift, TargetDrift

MAX_TARGETS = 20
"""Drifted targets (and missing tenant schemas) listed per repo; the rest are counted."""
MAX_DIFFERENCES = 20
"""Differences listed per target; the rest are counted."""


@dataclass
class Book:
    _repos: dict[str, dict[str, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, repo: str, reports: Sequence[RepoDrift], started: float) -> int:
        """Keep a successful check's result; return the number of drifted targets."""
        drifted = [t for r in reports for t in r.drifted]
        missing = [t for r in reports for t in r.missing]
        entry = {
            "checked_at": time.time(),
            "seconds": round(time.time() - started, 3),
            "targets_checked": sum(len(r.targets) for r in reports),
            "drifted": len(drifted),
            "targets": [_target(t) for t in drifted[:MAX_TARGETS]],
            "missing": len(missing),
            "missing_tenants": [t.schema for t in missing[:MAX_TARGETS]],
            "error": None,
            "failed_at": None,
        }
        with self._lock:
            self._repos[repo] = entry
        return len(drifted)

    def failed(self, repo: str, error: str, started: float) -> None:
        with self._lock:
            entry = self._repos.setdefault(repo, {"checked_at": None, "drifted": None, "targets": []})
            entry["error"], entry["failed_at"] = error, started

    def get(self, repo: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._repos.get(repo)
            return dict(entry) if entry is not None else None

    def retain(self, repos: set[str]) -> None:
        """Forget removed repos, and clear their gauge."""
        with self._lock:
            gone = [name for name in self._repos if name not in repos]
            for name in gone:
                del self._repos[name]
        for name in gone:
            with contextlib.suppress(KeyError):
                metrics.DRIFT_TARGETS.remove(name)


def _target(target: TargetDrift) -> dict[str, Any]:
    return {
        "target": target.target,
        "tenant": target.schema,
        "version": target.version,
        "differences": list(target.differences[:MAX_DIFFERENCES]),
        "differences_count": len(target.differences),
    }
