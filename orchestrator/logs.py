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
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def get(name: str) -> Any:
    import structlog

    return structlog.get_logger(name)
