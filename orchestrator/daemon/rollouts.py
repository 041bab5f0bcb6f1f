"""Ops-triggered rollouts: the request body checked before anything runs, and the records kept for the API.

A body is a JSON object with at most ``repo`` (a configured repo), ``tenants`` (names the repo's tenant source
lists; needs ``repo`` when several repos have tenants) and ``dry_run`` (a boolean). Anything else — another
type, an unknown field (``repos`` for ``repo``), an unknown repo or tenant — is refused with the reason before
a record exists, so a typo never turns into a rollout over every repo. Records are kept for the API (newest
first); finished ones beyond ``KEPT`` are pruned.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator import model

FIELDS = ("repo", "tenants", "dry_run")
KEPT = 50
"""Finished rollout records kept (running and pending ones are never pruned)."""


class BadRollout(ValueError):
    """A rollout body the API refuses (400), with the reason."""


@dataclass(frozen=True)
class Request:
    repo: str | None = None
    tenants: tuple[str, ...] | None = None
    dry_run: bool = False


def parse(body: Any, cfg: model.Config | None) -> Request:
    """Check the body's shape and names against the loaded config (tenant names are checked by ``check_tenants``)."""
    if not isinstance(body, dict):
        raise BadRollout(f"the body must be a JSON object with {', '.join(FIELDS)} (all optional), not {_kind(body)}")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise BadRollout(f"unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(FIELDS)}")
    repo, tenants, dry_run = body.get("repo"), body.get("tenants"), body.get("dry_run", False)
    if repo is not None and not isinstance(repo, str):
        raise BadRollout(f"repo must be a string, not {_kind(repo)}")
    if not isinstance(dry_run, bool):
        raise BadRollout(f"dry_run must be true or false, not {_kind(dry_run)}")
    if tenants is not None and (not isinstance(tenants, list) or not all(isinstance(t, str) and t for t in tenants)):
        raise BadRollout("tenants must be a list of tenant names (strings)")
    if cfg is None:
        raise BadRollout("no valid configuration is loaded yet; nothing can be rolled out")
    names = [r.name for r in cfg.repos]
    if repo is not None and repo not in names:
        raise BadRollout(f"unknown repo {repo!r}; configured: {', '.join(names) or 'none'}")
    if tenants is not None:
        repo = repo or _only_tenant_repo(cfg)
        if next(r for r in cfg.repos if r.name == repo).tenants is None:
            raise BadRollout(f"repo {repo!r} has no tenants (spec.tenants), so tenants cannot be named")
    return Request(repo, tuple(tenants) if tenants is not None else None, dry_run)


def check_tenants(request: Request, listed: Sequence[str]) -> None:
    """Refuse tenant names the repo's tenant source does not list (``listed``)."""
    unknown = [t for t in request.tenants or () if t not in set(listed)]
    if unknown:
        raise BadRollout(f"repo {request.repo!r} has no tenant(s) {', '.join(map(repr, unknown))}")


def _only_tenant_repo(cfg: model.Config) -> str:
    with_tenants = [r.name for r in cfg.repos if r.tenants is not None]
    if len(with_tenants) != 1:
        raise BadRollout(f"tenants need a repo: the repos with tenants are {', '.join(with_tenants) or 'none'}")
    return with_tenants[0]


def _kind(value: Any) -> str:
    return {type(None): "null", list: "an array", dict: "an object", str: "a string", bool: "a boolean"}.get(
        type(value), "a number"
    )


@dataclass
class Rollout:
    """One ops-triggered rollout, as the API shows it."""

    id: str
    repo: str | None
    tenants: list[str] | None
    dry_run: bool
    status: str = "pending"  # running, done, failed, stopped
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result: dict[str, Any] = field(default_factory=dict)
    plan: list[dict[str, Any]] = field(default_factory=list)  # a dry run: the SQL per target
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.status in ("done", "failed", "stopped")

    def as_dict(self, *, full: bool = True) -> dict[str, Any]:
        shown = {k: v for k, v in vars(self).items() if full or k not in ("result", "plan")}
        if not full:
            result = dict(self.result)  # a copy: the running job adds repos to it
            statuses = [t["status"] for entry in result.values() for t in entry.get("tenants", [])]
            shown["tenants_by_status"] = {s: statuses.count(s) for s in sorted(set(statuses))}
        return shown


@dataclass
class Registry:
    _records: dict[str, Rollout] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, request: Request) -> Rollout:
        tenants = list(request.tenants) if request.tenants is not None else None
        record = Rollout(uuid.uuid4().hex[:12], request.repo, tenants, request.dry_run)
        with self._lock:
            self._records[record.id] = record
            finished = [r for r in self._records.values() if r.done]
            for old in sorted(finished, key=lambda r: r.created)[: max(0, len(finished) - KEPT)]:
                del self._records[old.id]
        return record

    def get(self, rollout_id: str) -> Rollout | None:
        with self._lock:
            return self._records.get(rollout_id)

    def recent(self) -> list[Rollout]:
        with self._lock:
            return sorted(self._records.values(), key=lambda r: r.created, reverse=True)

    def each_pending(self, change: Callable[[Rollout], None]) -> None:
        with self._lock:
            for record in self._records.values():
                if not record.done:
                    change(record)
