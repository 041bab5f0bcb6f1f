"""Session advisory locks, one per target (a repo's database, or one tenant schema in it).

``pg_try_advisory_lock`` is polled with jittered, capped backoff until ``lockWait`` instead of blocking in
``pg_advisory_lock``: a blocking wait can deadlock with ``CREATE INDEX CONCURRENTLY`` (which waits for every
other transaction, including a session stuck waiting for our lock), and a poll can give up on time. The lock
belongs to the session, so PostgreSQL releases it when the process dies; we release it on every other path.
The key is derived from the database and schema names, so different tenants proceed in parallel.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from orchestrator.errors import OrchestratorError


class LockNotAcquired(OrchestratorError):
    """Another runner held the target's lock for longer than lockWait."""


def key(database: str, schema: str) -> int:
    """A signed 64-bit key for the target, stable across processes and machines."""
    digest = hashlib.sha256(f"orchestrator:{database}:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def advisory_lock(
    conn: psycopg.Connection[Any],
    lock_key: int,
    wait_ms: int,
    what: str,
    *,
    on_wait: Callable[[int], None] | None = None,
) -> Iterator[None]:
    """Hold the session advisory lock ``lock_key`` on ``conn`` for the duration of the block.

    ``on_wait`` hears how many milliseconds it waited, when another runner held the lock first.
    """
    started = time.monotonic()
    deadline = started + wait_ms / 1000
    delay = 0.02
    waited = False
    while not _try(conn, lock_key):
        waited = True
        if time.monotonic() >= deadline:
            raise LockNotAcquired(f"{what}: another runner holds the lock; gave up after lockWait {wait_ms} ms")
        time.sleep(min(delay * random.uniform(0.5, 1.5), max(deadline - time.monotonic(), 0)))
        delay = min(delay * 2, 1.0)
    if waited and on_wait is not None:
        on_wait(int((time.monotonic() - started) * 1000))
    try:
        yield
    finally:
        if not conn.closed and not conn.broken:
            conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key,))


def _try(conn: psycopg.Connection[Any], lock_key: int) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_key,)).fetchone()
    return bool(row and row[0])
