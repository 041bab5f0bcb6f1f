"""Which database errors are worth retrying, and the retry loop itself (tenacity, jittered backoff).

Transient errors are the ones a second attempt can get past: the connection was lost or refused, the server is
shutting down or out of connections, a serialization failure or deadlock, or a lock that was not granted
within ``lock_timeout`` (55P03). They are classified by SQLSTATE, falling back to its two-character class as
psycopg does. Everything else (a syntax error, a missing table, a violated constraint, a statement timeout)
fails at once: retrying would fail the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import psycopg
import tenacity

from orchestrator import model

T = TypeVar("T")

# 57P05 / 25P03: the server closed an idle (pooled) connection
TRANSIENT_STATES = frozenset({"40001", "40P01", "55P03", "57P01", "57P02", "57P03", "57P05", "25P03", "53300", "53400"})
TRANSIENT_CLASSES = frozenset({"08"})  # connection exceptions


def is_transient(exc: BaseException) -> bool:
    """Return True when a retry may succeed."""
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:  # no answer from the server at all: the connection failed or was lost
        return isinstance(exc, psycopg.OperationalError)
    return state in TRANSIENT_STATES or state[:2] in TRANSIENT_CLASSES


def run(
    policy: model.Retry, work: Callable[[], T], *, on_retry: Callable[[int, BaseException], None] | None = None
) -> T:
    """Call ``work`` until it succeeds, a permanent error is raised, or ``policy.attempts`` are spent.

    Delays grow exponentially from ``initial_delay`` up to ``max_delay``, with full jitter, so replicas that
    failed together do not retry together.
    """

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            exc = state.outcome.exception()
            if exc is not None:
                on_retry(state.attempt_number, exc)

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.attempts),
        wait=tenacity.wait_random_exponential(
            multiplier=policy.initial_delay_ms / 1000, max=policy.max_delay_ms / 1000
        ),
        retry=tenacity.retry_if_exception(is_transient),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(work)
