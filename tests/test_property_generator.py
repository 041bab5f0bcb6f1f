"""Property: any sequence of manifest edits goes generate → up → live catalog matches → ... → down → live
catalog matches the previous manifests, on a real PostgreSQL.

Each example works in a schema of its own (the database is shared by the examples of one run) and a fresh
directory for migrations and snapshots. Edits: add/drop/rename tables, add/drop/rename columns (some with SQL
defaults, volatile or not), type, nullability and default changes, unique identities, indexes (partial ones
too), check constraints and foreign keys. Tables stay empty, so every cast in the type pool converts.

Each step is generated first as users do, without allowing blocking changes: it must be refused exactly when
applying it (generated again with ``allow_blocking``) rewrites a table that existed, as PostgreSQL tells by the
table's new ``relfilenode``, and the refusal names exactly those tables.
"""

from __future__ import annotations

import copy
import itertools
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.errors import ConfigError
from orchestrator.generator import generate
from tests.harness import Project

TYPES = ["integer", "bigint", "text", "varchar(50)", "numeric(10,2)"]
DEFAULTS = {"integer": 0, "bigint": 7, "text": "x", "varchar(50)": "y", "numeric(10,2)": 1.5}
SQL_DEFAULTS = {  # volatile or not: a column added with one of these rewrites its table, or does not
    "integer": ["(random() * 100)::integer", "extract(year from now())::integer"],
    "text": ["md5(random()::text)", "lower('A(b)') || now()::text"],
}
NAMES = ["alpha", "beta", "gamma", "delta"]
COLUMNS = ["c1", "c2", "c3", "c4", "c5"]
_counter = itertools.count()

Tables = dict[str, dict[str, Any]]


def new_table(name: str) -> dict[str, Any]:
    return {"table": name, "attributes": [{"name": "id", "type": "bigint", "primaryKey": True}]}


def columns(table: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in table["attributes"] if a["name"] != "id"]


def forget_column(table: dict[str, Any], name: str) -> None:
    """Drop everything in ``table`` that names column ``name``."""
    for key in ("identities", "indexes", "checkConstraints"):
        table[key] = [x for x in table.get(key, []) if name not in str(x.get("keys", x.get("fields", x.get("check"))))]
        if not table[key]:
            del table[key]


def edit(data: st.DataObject, tables: Tables) -> None:
    kinds = ["add_table", "add_column"]
    if tables:
        kinds += ["drop_table", "rename_table"] + ["identity", "index", "check", "fk"] * 2
    if any(columns(t) for t in tables.values()):
        kinds += ["drop_column", "rename_column", "nullability", "default"] * 2 + ["retype"] * 4
    kind = data.draw(st.sampled_from(kinds), label="edit")
    free_tables = [n for n in NAMES if n not in {t["table"] for t in tables.values()}]
    if kind == "add_table" or not tables:
        if free_tables:
            name = data.draw(st.sampled_from(free_tables))
            tables[name] = new_table(name)
        return
    key = data.draw(st.sampled_from(sorted(tables)))
    table = tables[key]
    cols = columns(table)
    col = data.draw(st.sampled_from(cols)) if cols else None
    if kind == "drop_table":
        del tables[key]
        for other in tables.values():  # foreign keys to it go too
            for a in other["attributes"]:
                if a.get("references", {}).get("resource") == key:
                    del a["references"]
    elif kind == "rename_table" and free_tables:
        table["renamedFrom"], table["table"] = table["table"], data.draw(st.sampled_from(free_tables))
    elif kind == "add_column":
        free = [c for c in COLUMNS if c not in {a["name"] for a in table["attributes"]}]
        if free:
            type_ = data.draw(st.sampled_from(TYPES))
            column: dict[str, Any] = {"name": data.draw(st.sampled_from(free)), "type": type_}
            default = data.draw(st.sampled_from([None, *SQL_DEFAULTS.get(type_, [])]))
            if default:
                column["defaultSql"] = default
            table["attributes"].append(column)
    elif col is None:
        return
    elif kind == "drop_column":
        table["attributes"].remove(col)
        forget_column(table, col["name"])
    elif kind == "rename_column":
        free = [c for c in COLUMNS if c not in {a["name"] for a in table["attributes"]}]
        if free and not col.get("references"):
            forget_column(table, col["name"])
            col["renamedFrom"], col["name"] = col["name"], data.draw(st.sampled_from(free))
    elif kind == "retype" and not col.get("references"):
        col["type"] = data.draw(st.sampled_from(TYPES))
        col.pop("defaultSql", None)
        if "default" in col:
            col["default"] = DEFAULTS[col["type"]]
    elif kind == "nullability":
        col["allowNull"] = not col.get("allowNull", True)
    elif kind == "default" and col["type"] in DEFAULTS:
        if "default" in col or "defaultSql" in col:
            col.pop("default", None)
            col.pop("defaultSql", None)
        else:
            col["default"] = DEFAULTS[col["type"]]
    elif kind == "identity":
        table.setdefault("identities", []).append({"name": f"u_{col['name']}", "keys": [col["name"]]})
    elif kind == "index":
        where = data.draw(st.sampled_from([None, f"{col['name']} IS NOT NULL"]))
        index: dict[str, Any] = {"fields": [col["name"], "id"]}
        if where:
            index["where"] = where
        table.setdefault("indexes", []).append(index)
    elif kind == "check":
        table.setdefault("checkConstraints", []).append(
            {"name": f"ck_{col['name']}", "check": f"{col['name']} IS NOT NULL OR id > 0"}
        )
    elif kind == "fk" and col["type"] == "bigint":
        target = data.draw(st.sampled_from(sorted(tables)))
        col["references"] = {"resource": target, "onDelete": data.draw(st.sampled_from(["cascade", "setNull"]))}
        col["allowNull"] = True


def documents(tables: Tables, schema: str) -> list[str]:
    docs = []
    for key, table in sorted(tables.items()):
        spec = {"repo": "app", "schema": schema, **copy.deepcopy(table)}
        docs.append(
            yaml.safe_dump(
                {"apiVersion": "orchestrator/v1", "kind": "Resource", "metadata": {"name": key}, "spec": spec},
                sort_keys=False,
            )
        )
    return docs


def settle(tables: Tables) -> None:
    """After a step, hints are applied: drop renamedFrom so the next step does not see them again."""
    for table in tables.values():
        table.pop("renamedFrom", None)
        for a in table["attributes"]:
            a.pop("renamedFrom", None)


def step(project: Project, documents: list[str]) -> None:
    """``project.step``, generated first without allowing blocking changes: refused exactly when the migration
    rewrites tables that existed, naming those tables."""
    cfg = project.configure(*documents)
    try:
        plan = project.make(cfg, allow_destructive=True)
        refused: set[str] = set()
    except generate.BlockingChangeError as exc:
        refused = set(re.findall(r"rewrites table (\S+)", str(exc)))
        assert refused, str(exc)
        plan = project.make(cfg, allow_destructive=True, allow_blocking=True)
    before = project.storage()
    project.apply(plan.migrations, "up")
    after = project.storage()
    rewritten = {name for oid, (name, node) in after.items() if oid in before and before[oid][1] != node}
    assert refused == rewritten
    project.check(cfg)
    project.history.append((cfg, plan.migrations))


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_edit_sequences_round_trip(database_url: str, data: st.DataObject) -> None:
    schema = f"p{next(_counter)}"
    project = Project(Path(tempfile.mkdtemp()), database_url)
    tables: Tables = {}
    for name in data.draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True), label="tables"):
        tables[name] = new_table(name)
        for column in data.draw(st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=3, unique=True)):
            tables[name]["attributes"].append({"name": column, "type": data.draw(st.sampled_from(TYPES))})
    steps = 0
    for _ in range(data.draw(st.integers(1, 5), label="steps")):
        for _ in range(data.draw(st.integers(1, 3), label="edits")):
            edit(data, tables)
        try:
            project.configure(*documents(tables, schema))
        except ConfigError:
            continue  # an edit combination the validator refuses (it says where): not a generator case
        step(project, documents(tables, schema))
        settle(tables)
        steps += 1
    for _ in range(steps):
        project.undo()
