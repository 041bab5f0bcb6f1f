"""Durations as manifests write them (``500ms``, ``5s``, ``2m``, ``1h``), kept as whole milliseconds."""

from __future__ import annotations

import re

_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
_DURATION = re.compile(r"^(\d{1,9})(ms|s|m|h)$")


def parse_ms(text: str) -> int:
    """Return the duration in milliseconds, or raise ``ValueError``."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration: write e.g. 500ms, 5s, 2m, 1h (0s: no limit)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def format_ms(ms: int) -> str:
    """Return the shortest exact spelling: 90000 -> ``90s``, 120000 -> ``2m``."""
    for unit in ("h", "m", "s"):
        if ms and ms % _UNITS[unit] == 0:
            return f"{ms // _UNITS[unit]}{unit}"
    return f"{ms}ms" if ms else "0s"
