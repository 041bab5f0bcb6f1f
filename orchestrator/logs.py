"""structlog set-up: JSON lines when stderr is not a terminal (containers, CI), readable lines when it is.

Events have fixed names (``embedded.start``, ``tenants.listed``) and carry context as key-value pairs bound
with contextvars (repo, tenant, version), so one rollout's lines can be filtered without parsing prose.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import structlog


def configure(*, json: bool | None = None, level: int = logging.INFO) -> None:
    """Configure structlog to write to stderr; ``json=None`` picks JSON unless stderr is a terminal."""
    import structlog  # imported when logging is set up: commands that do not log do not pay for it

    use_json = not sys.stderr.isatty() if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),  # one write a line: never interleaved
        cache_logger_on_first_use=False,
    )


def capture_stdlib(*, level: int = logging.WARNING) -> None:
    """Route the standard library's logging (APScheduler, psycopg, psycopg_pool, uvicorn) through the same
    renderer as our own events, so a daemon's log is one format from end to end: no plain-text lines."""
    import structlog

    use_json = not sys.stderr.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_logger_name,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "apscheduler", "psycopg", "psycopg.pool"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # A job that overruns its interval is skipped (warning, every interval) and psycopg warns of each pipeline
    # it could not end on a lost connection: both are said better by our own events. Their errors still show.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    logging.getLogger("psycopg").setLevel(logging.ERROR)
    logging.captureWarnings(True)  # Python warnings (platformdirs, ...) as log lines too, not raw text


def get(name: str) -> Any:
    import structlog

    return structlog.get_logger(name)
