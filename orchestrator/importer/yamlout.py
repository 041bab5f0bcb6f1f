"""Write a Resource document as YAML that reads like the hand-written examples in ``config/``.

A general YAML dumper writes either everything in block style or everything in flow style, and quotes by its
own rules. The examples mix them: block style for the document's structure, one flow-style line per short
attribute, identity or index (``- {name: id, type: bigint, primaryKey: true}``), a long entry in block style
with its nested values in flow style, and strings quoted only when YAML would otherwise read them differently.
That is what ``dump`` writes. Every scalar is checked by loading it back, so what is written always means
exactly the document's value.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

LINE = 116
"""A flow entry longer than this is written in block style, one key per line."""
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_./()-]*$")


def dump(document: dict[str, Any], header: list[str]) -> str:
    """Return the document as YAML text, after the ``header`` comment lines."""
    lines = [f"# {line}" if line else "#" for line in header]
    _block(document, 0, lines)
    return "\n".join(lines) + "\n"


def _block(mapping: dict[str, Any], indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for key, value in mapping.items():
        if isinstance(value, dict) and (indent == 0 or not _short(value, indent + len(key) + 2)):
            lines.append(f"{pad}{key}:")
            _block(value, indent + 2, lines)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{pad}{key}:")
            for item in value:
                _item(item, indent + 2, lines)
        else:
            lines.append(f"{pad}{key}: {flow(value)}")


def _item(item: dict[str, Any], indent: int, lines: list[str]) -> None:
    """One list entry: a flow line when it fits and nests no mapping (a reference reads better on a line of
    its own, as in the examples), else block style with flow values."""
    pad = " " * indent
    text = flow(item)
    if indent + 2 + len(text) <= LINE and not any(isinstance(v, dict) for v in item.values()):
        lines.append(f"{pad}- {text}")
        return
    for i, (key, value) in enumerate(item.items()):
        lead = "- " if i == 0 else "  "
        lines += _wrapped(f"{pad}{lead}{key}: ", value)


def _wrapped(prefix: str, value: Any) -> list[str]:
    """``prefix`` and a flow mapping, continued on lines aligned after its brace when it is too long
    (``references: {resource: user, ...,`` / ``deferrable: ...}``, as in the design's example)."""
    text = flow(value)
    if len(prefix) + len(text) <= LINE or not isinstance(value, dict):
        return [prefix + text]
    lines: list[str] = []
    current = prefix + "{"
    align = " " * len(current)
    parts = [f"{k}: {flow(v)}" for k, v in value.items()]
    for i, part in enumerate(parts):
        piece = part + ("}" if i == len(parts) - 1 else ",")
        if not current.endswith("{") and len(current) + 1 + len(piece) > LINE:
            lines.append(current)
            current = align + piece
        else:
            current += ("" if current.endswith("{") else " ") + piece
    lines.append(current)
    return lines


def _short(value: dict[str, Any], indent: int) -> bool:
    return (
        len(value) <= 3
        and all(not isinstance(v, dict | list) for v in value.values())
        and (indent + len(flow(value)) <= LINE)
    )


def flow(value: Any) -> str:
    """Return ``value`` in YAML flow style."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    return scalar(value)


def scalar(value: Any) -> str:
    """Return a scalar as YAML: plain when that reads back as the same value, else double-quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if value is None:
        return "null"
    text = str(value)
    if _PLAIN.match(text) and _reads_as(text, text):
        return text
    quoted = json.dumps(text, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar
    if not _reads_as(quoted, text):
        raise ValueError(f"cannot write {text!r} as YAML")
    return quoted


def _reads_as(written: str, value: str) -> bool:
    try:
        loaded = yaml.safe_load(f"key: [{written}]")
    except yaml.YAMLError:
        return False
    return isinstance(loaded, dict) and loaded.get("key") == [value]
