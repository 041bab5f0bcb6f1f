"""Snapshots: the state the next diff starts from, one JSON file per table and version.

Layout (DESIGN.md): ``<snapshotsPath>/<table>/<version>.json`` for a table in ``public``,
``<schema>.<table>/`` for another schema, ``tenants/<table>/`` for a context (per-tenant) table. The newest
file of a folder is the table's state. A table that was dropped, renamed or moved away gets a *tombstone*
(``{"dropped": true}``), so it is not dropped again by the next run. ``extensions.json`` holds the repo's
installed extensions.

Files carry the canonical JSON of the table (sorted keys) and its sha256, so snapshots are byte-stable: the
same model always writes the same file, and review diffs show only real changes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import model
from orchestrator.errors import OrchestratorError

FORMAT = 1
_VERSION_FILE = re.compile(r"^(\d{14})\.json$")


class SnapshotError(OrchestratorError):
    """A snapshot file cannot be read; the user must repair or remove it."""


@dataclass(frozen=True)
class SnapshotFile:
    path: Path
    text: str


def folder(key: str) -> str:
    """Return the folder of a table key: ``public.users`` -> ``users``, ``tenants.tasks`` -> ``tenants/tasks``."""
    schema, _, table = key.partition(".")
    if schema == "tenants":
        return f"tenants/{table}"
    return table if schema == "public" else key


def render(table: model.Table | None) -> str:
    """Return the file text for a table's snapshot, or a tombstone for None."""
    if table is None:
        return json.dumps({"dropped": True, "format": FORMAT}, indent=2) + "\n"
    body = {"format": FORMAT, "hash": table.content_hash(), "table": table.canonical()}
    return json.dumps(body, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def load(stored: Mapping[str, str], prefix: str, repo: str) -> dict[str, tuple[str, model.Table]]:
    """Return key -> (version, table) for every table whose newest snapshot is not a tombstone.

    ``stored`` maps paths (relative to the root) to texts: every file under ``prefix``, the snapshots path.
    """
    newest: dict[str, str] = {}
    for path in stored:
        folder_path, _, file_name = path.rpartition("/")
        match = _VERSION_FILE.match(file_name)
        if match and folder_path.startswith(prefix.rstrip("/") + "/") and match.group(1) > newest.get(folder_path, ""):
            newest[folder_path] = match.group(1)
    found: dict[str, tuple[str, model.Table]] = {}
    for folder_path, version in sorted(newest.items()):
        path = f"{folder_path}/{version}.json"
        data = _read(path, stored[path])
        if data.get("dropped"):
            continue
        table = from_canonical(data["table"], repo)
        found[table.key] = (version, table)
    return found


def load_extensions(stored: Mapping[str, str], prefix: str) -> tuple[str, ...]:
    path = f"{prefix.rstrip('/')}/extensions.json"
    return tuple(_read(path, stored[path]).get("installed", ())) if path in stored else ()


def render_extensions(names: tuple[str, ...]) -> str:
    return json.dumps({"format": FORMAT, "installed": sorted(names)}, indent=2) + "\n"


def _read(path: str, text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SnapshotError(f"cannot read snapshot {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SnapshotError(f"snapshot {path} is not an orchestrator snapshot (format {FORMAT})")
    return data


# -- canonical JSON -> model ---------------------------------------------------------------------------------


def from_canonical(data: dict[str, Any], repo: str) -> model.Table:
    """Rebuild a ``Table`` from ``Table.canonical()`` output (the inverse of that method)."""
    try:
        return model.Table(
            resource="",
            repo=repo,
            name=data["name"],
            schema=data["schema"],
            attributes=tuple(_attribute(a) for a in data["attributes"]),
            primary_key=tuple(data["primary_key"]),
            multitenancy=model.Multitenancy(**data["multitenancy"]),
            identities=tuple(model.Identity(**{**i, "keys": tuple(i["keys"])}) for i in data["identities"]),
            indexes=tuple(_index(i) for i in data["indexes"]),
            check_constraints=tuple(model.CheckConstraint(**c) for c in data["check_constraints"]),
            statements=tuple(model.Statement(**s) for s in data["statements"]),
            foreign_keys=tuple(_foreign_key(f) for f in data.get("foreign_keys", ())),
        )
    except (KeyError, TypeError) as exc:
        raise SnapshotError(f"snapshot of {data.get('name', '?')} is malformed: {exc}") from None


def _attribute(data: dict[str, Any]) -> model.Attribute:
    reference = data.get("references")
    return model.Attribute(**{**data, "references": _reference(reference) if reference else None})


def _reference(data: dict[str, Any]) -> model.Reference:
    return model.Reference(**{**data, "on_delete": _action(data["on_delete"]), "on_update": _action(data["on_update"])})


def _action(data: dict[str, Any] | None) -> model.Action | None:
    return model.Action(data["kind"], tuple(data["columns"])) if data else None


def _index(data: dict[str, Any]) -> model.Index:
    return model.Index(**{**data, "fields": tuple(data["fields"]), "include": tuple(data["include"])})


def _foreign_key(data: dict[str, Any]) -> model.ForeignKey:
    """A table-level foreign key (absent from snapshots written before they existed)."""
    return model.ForeignKey(
        **{
            **data,
            "columns": tuple(data["columns"]),
            "ref_columns": tuple(data["ref_columns"]),
            "on_delete": _action(data["on_delete"]),
            "on_update": _action(data["on_update"]),
        }
    )
