"""Compare two catalog descriptions of a table and say, one readable line each, how they differ.

Names, types, nullability, identity, keys, index shape, foreign-key targets and actions are compared exactly.
SQL text (defaults, index predicates and expressions, check bodies) is compared after ``normalise_sql``,
because PostgreSQL stores a parsed tree and prints it back its own way (``'todo'::text``, ``(NOT archived)``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from orchestrator import indexfield
from orchestrator.catalog.read import CatalogTable, Named, PrimaryKey

# A cast as PostgreSQL prints it: ::name, ::schema.name, ::"quoted", multi-word names, a typmod, array brackets.
_NAME = r'(?:"[^"]+"|[a-z_][a-z0-9_$]*)'
_CAST = re.compile(
    rf"::\s*{_NAME}(?:\s*\.\s*{_NAME})?"
    r"(?:\s+(?:varying|precision))?"
    r"(?:\s*\(\s*\d+(?:\s*,\s*\d+)?\s*\))?"
    r"(?:\s+with(?:out)?\s+time\s+zone)?"
    r"(?:\s*\[\s*\d*\s*\])*",
    re.IGNORECASE,
)
_QUOTED_NUMBER = re.compile(r"'(-?\d+(?:\.\d+)?(?:e[+-]?\d+)?)'", re.IGNORECASE)
_NOISE = re.compile(r'[\s()"]+')
_SQL_FIELDS = frozenset({"default", "predicate", "definition"})
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


def normalise_sql(text: str) -> str:
    """Reduce SQL text to what survives PostgreSQL's reprinting: drop casts, unquote numbers
    (``'-1'::integer``), drop double quotes, parentheses and whitespace, lower-case the rest."""
    text = _CAST.sub("", text)
    text = _QUOTED_NUMBER.sub(r"\1", text)
    return _NOISE.sub("", text).lower()


def differences(expected: CatalogTable, actual: CatalogTable) -> list[str]:
    """Return every way ``actual`` differs from ``expected``, one readable line each; [] when they match."""
    label = f"{expected.schema}.{expected.name}"
    found: list[str] = []
    if (actual.schema, actual.name) != (expected.schema, expected.name):
        found.append(f"table {label}: compared with {actual.schema}.{actual.name}")
    found += _diff_named(f"column {label}", expected.columns, actual.columns)
    found += _diff_primary_key(label, expected.primary_key, actual.primary_key)
    found += _diff_named(f"index {label}", expected.indexes, actual.indexes)
    found += _diff_named(f"foreign key {label}", expected.foreign_keys, actual.foreign_keys)
    found += _diff_named(f"check {label}", expected.checks, actual.checks)
    return found


def _diff_primary_key(label: str, expected: PrimaryKey | None, actual: PrimaryKey | None) -> list[str]:
    if expected is None and actual is None:
        return []
    if expected is None or actual is None:
        return [f"primary key {label}: {_show(actual)}, expected {_show(expected)}"]
    return _diff_named(f"primary key {label}", [expected], [actual])


def _diff_named(label: str, expected: Sequence[Named], actual: Sequence[Named]) -> list[str]:
    """Pair items by name: report the missing, the unexpected, then each field that differs."""
    wanted = {item.name: item for item in expected}
    present = {item.name: item for item in actual}
    found = [f"{label}.{name}: missing" for name in wanted if name not in present]
    found += [f"{label}.{name}: not in the model" for name in present if name not in wanted]
    for name in wanted.keys() & present.keys():
        found += _diff_fields(f"{label}.{name}", wanted[name], present[name])
    return sorted(found)


def _diff_fields(label: str, expected: Any, actual: Any) -> list[str]:
    found = []
    for spec in fields(expected):
        want, got = getattr(expected, spec.name), getattr(actual, spec.name)
        if not _same(spec.name, want, got):
            found.append(f"{label}: {spec.name} = {_show(got)}, expected {_show(want)}")
    return found


def _same(field: str, want: Any, got: Any) -> bool:
    if field in _SQL_FIELDS:
        return want is got is None or (want is not None and got is not None and _same_sql(want, got))
    if field == "keys":
        return len(want) == len(got) and all(_same_key(w, g) for w, g in zip(want, got, strict=True))
    return bool(want == got)


def _same_key(want: str, got: str) -> bool:
    """A column key must match exactly; an expression key matches after normalisation."""
    if _PLAIN_NAME.fullmatch(want) and _PLAIN_NAME.fullmatch(got):
        return want == got
    column_keys = indexfield.same(want, got)  # a column with an operator class or ordering: still exact
    if column_keys is not None:
        return column_keys
    return _same_sql(want, got)


def _same_sql(want: str, got: str) -> bool:
    return normalise_sql(want) == normalise_sql(got)


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "(" + ", ".join(str(v) for v in value) + ")"
    if isinstance(value, PrimaryKey):
        return f"{value.name} {_show(value.columns)}"
    return repr(value) if isinstance(value, str) else str(value)
