"""Explain how two resources that define the same table disagree: the first part that differs, located in both.

Two resources may share a table only if they mean the same table (``Table.canonical()`` is equal). When they do
not, "differently" is not enough for a user: this module names the first part that differs (multitenancy, the
primary key, a column, an identity, an index, a check constraint, a statement, or their order) and how, with
where each side wrote it. Parts are compared on the model, so aliases (``int8`` and ``bigint``) never differ.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from orchestrator import model
from orchestrator.manifests.loader import Document, Path_

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABELS = {
    "allow_null": "allowNull",
    "primary_key": "primaryKey",
    "default_sql": "defaultSql",
    "on_delete": "onDelete",
    "on_update": "onUpdate",
    "index_name": "indexName",
    "nulls_distinct": "nullsDistinct",
    "ref_columns": "references.columns",
}
"""Model field names as the manifests spell them; the others are spelt the same."""
_IGNORED = frozenset({"name", "renamed_from"})
"""A part's own fields not compared: parts are matched by name, and renames do not shape the table."""
_PARTS = (
    ("attributes", "column"),
    ("identities", "identity"),
    ("indexes", "index"),
    ("checkConstraints", "check constraint"),
    ("statements", "statement"),
    ("foreignKeys", "foreign key"),
)


@dataclasses.dataclass(frozen=True)
class Difference:
    """The first part two definitions of a table disagree on, and where each of them wrote it."""

    part: str
    field: str
    here: str
    there: str
    path_here: Path_
    path_there: Path_

    def describe(self, there: str) -> str:
        """Return ``part: field <here> here, <there> in <there>`` (``there``: the other side's file:line)."""
        what = f"{self.field} " if self.field else ""
        return f"{self.part}: {what}{self.here} here, {self.there} in {there}"


def explain(here: model.Table, here_doc: Document, there: model.Table, there_doc: Document) -> Difference | None:
    """Return the first difference between two definitions of one table, or None if none is found."""
    found = _multitenancy(here, here_doc, there, there_doc) or _primary_key(here, here_doc, there, there_doc)
    for key, kind in _PARTS:
        if found is not None:
            return found
        mine, theirs = _items(here, here_doc, key), _items(there, there_doc, key)
        found = _named(kind, mine, theirs, (_container(here_doc, key), _container(there_doc, key)))
    return found


def written(doc: Document, path: Path_) -> Path_:
    """Return ``path`` cut back to its nearest part that is written in ``doc`` (for the field of a Problem)."""
    while path and path not in doc.marks and path not in doc.key_marks:
        path = path[:-1]
    return path


# -- Parts ---------------------------------------------------------------------------------------------------


def _multitenancy(here: model.Table, here_doc: Document, there: model.Table, there_doc: Document) -> Difference | None:
    if here.multitenancy == there.multitenancy and here.schema == there.schema:
        return None
    return Difference(
        "multitenancy",
        "",
        _show_multitenancy(here.multitenancy),
        _show_multitenancy(there.multitenancy),
        _multitenancy_path(here_doc),
        _multitenancy_path(there_doc),
    )


def _show_multitenancy(value: model.Multitenancy) -> str:
    if value.strategy == "none":
        return "none"
    suffix = f" ({value.attribute})" if value.attribute else ""
    return f"strategy {value.strategy}{suffix}"


def _multitenancy_path(doc: Document) -> Path_:
    return ("spec", "multitenancy") if "multitenancy" in doc.data["spec"] else ("spec", "table")


def _primary_key(here: model.Table, here_doc: Document, there: model.Table, there_doc: Document) -> Difference | None:
    if here.primary_key == there.primary_key:
        return None
    return Difference(
        "primary key",
        "",
        _show(here.primary_key) if here.primary_key else "none",
        _show(there.primary_key) if there.primary_key else "none",
        _primary_key_path(here_doc),
        _primary_key_path(there_doc),
    )


def _primary_key_path(doc: Document) -> Path_:
    spec = doc.data["spec"]
    if "primaryKey" in spec:
        return ("spec", "primaryKey")
    flagged = (i for i, raw in enumerate(spec["attributes"]) if raw.get("primaryKey"))
    index = next(flagged, None)
    return ("spec", "attributes") if index is None else ("spec", "attributes", index, "primaryKey")


def _items(table: model.Table, doc: Document, key: str) -> dict[str, tuple[Any, Path_]]:
    """Return the table's parts under ``key`` by name, each with the path of the manifest entry it came from."""
    parts: Sequence[Any] = {
        "attributes": table.attributes,
        "identities": table.identities,
        "indexes": table.indexes,
        "checkConstraints": table.check_constraints,
        "statements": table.statements,
        "foreignKeys": table.foreign_keys,
    }[key]
    raw_names = [raw.get("name") for raw in doc.data["spec"].get(key, ())]
    items: dict[str, tuple[Any, Path_]] = {}
    for i, part in enumerate(parts):
        # a duplicate column is not in the model, so columns are found by name; the other parts are one per entry
        index = raw_names.index(part.name) if key == "attributes" and part.name in raw_names else i
        items.setdefault(part.name, (part, ("spec", key, index)))
    return items


def _container(doc: Document, key: str) -> Path_:
    """Return where the list ``key`` is written, or the table's name when the document has no such list."""
    return ("spec", key) if key in doc.data["spec"] else ("spec", "table")


def _named(
    kind: str, here: dict[str, tuple[Any, Path_]], there: dict[str, tuple[Any, Path_]], lists: tuple[Path_, Path_]
) -> Difference | None:
    """Compare parts matched by name: one only here, one that differs, one only there, then their order.

    ``lists`` is where each side writes its list of such parts (located at when a part is missing there).
    """
    for name, (part, path) in here.items():
        if name not in there:
            return Difference(f"{kind} {name}", "", "defined", "missing", path, lists[1])
        other, other_path = there[name]
        found = _first_field(part, other)
        if found is not None:
            field, mine, theirs = found
            sub = tuple(field.split("."))
            return Difference(f"{kind} {name}", field, mine, theirs, (*path, *sub), (*other_path, *sub))
    for name, (_, path) in there.items():
        if name not in here:
            return Difference(f"{kind} {name}", "", "missing", "defined", lists[0], path)
    if list(here) != list(there):
        return Difference(f"{kind} order", "", _show(tuple(here)), _show(tuple(there)), *lists)
    return None


def _first_field(mine: Any, theirs: Any, prefix: str = "") -> tuple[str, str, str] | None:
    """Return (field, my value, their value) for the first compared field that differs, nested ones included."""
    for spec in dataclasses.fields(mine):
        if not spec.compare or (spec.name in _IGNORED and not prefix):
            continue
        a, b = getattr(mine, spec.name), getattr(theirs, spec.name)
        if a == b:
            continue
        label = prefix + _LABELS.get(spec.name, spec.name)
        if dataclasses.is_dataclass(a) and type(a) is type(b):
            nested = _first_field(a, b, label + ".")
            if nested is not None:
                return nested
        return label, _show(a, label), _show(b, label)
    return None


# -- Values --------------------------------------------------------------------------------------------------


def _show(value: Any, field: str = "") -> str:
    """Render a model value as a user would write it: types and names bare, SQL text quoted."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "(" + ", ".join(_show(v) for v in value) + ")"
    if isinstance(value, model.Reference):
        return f"{value.schema + '.' if value.schema else ''}{value.table}({value.column})"
    if isinstance(value, model.Action):
        return value.kind + (f" {_show(value.columns)}" if value.columns else "")
    if isinstance(value, str) and (field == "type" or _PLAIN.match(value)):
        return value
    return repr(value)
