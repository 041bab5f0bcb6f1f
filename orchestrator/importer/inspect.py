"""Read from the catalog what ``catalog.read`` leaves out and the importer needs.

``catalog.read`` describes tables in the terms of the manifest format. Everything else an existing database may
hold is read here so that nothing is dropped silently: each object the format cannot express becomes an
``Unsupported`` entry with its kind, its qualified name and why. Serial columns are found here too (a sequence
owned by its column), because the catalog reader shows them as their integer type with a ``nextval`` default.

Every query covers all imported schemas at once and runs under ``search_path = pg_catalog, public``, like the
catalog reader, so printed names are qualified the same way. Objects that belong to an extension are skipped:
``CREATE EXTENSION`` makes them, not the schema's owner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")
BOOKKEEPING_SCHEMA = "orchestrator"


@dataclass(frozen=True)
class Unsupported:
    """One object the manifests cannot express; ``table`` is set when it belongs to an imported table."""

    kind: str
    schema: str
    name: str
    detail: str = ""
    table: str | None = None

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name

    def __str__(self) -> str:
        return f"{self.kind} {self.qualified}" + (f": {self.detail}" if self.detail else "")

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "schema": self.schema, "name": self.name, "table": self.table, "detail": self.detail}


@dataclass
class Extras:
    """What the importer needs beyond ``catalog.read``, for a set of schemas."""

    unsupported: list[Unsupported] = field(default_factory=list)
    skipped_tables: set[tuple[str, str]] = field(default_factory=set)
    """Tables not imported at all (partitioned tables and partitions, inheritance children)."""
    skipped_indexes: set[tuple[str, str]] = field(default_factory=set)
    """(schema, index) of indexes not imported: exclusion constraints' and invalid ones."""
    serial: dict[tuple[str, str, str], str] = field(default_factory=dict)
    """(schema, table, column) -> the name of the sequence the column owns (a serial column)."""
    collations: dict[tuple[str, str, str], str] = field(default_factory=dict)
    """(schema, table, column) -> a collation other than the type's default."""
    not_valid_keys: set[tuple[str, str, str]] = field(default_factory=set)
    """(schema, table, constraint) of foreign keys added NOT VALID and never validated."""
    identity_options: dict[tuple[str, str, str], str] = field(default_factory=dict)
    """(schema, table, column) -> the identity's sequence options that differ from the defaults, as SQL."""


def list_schemas(conn: psycopg.Connection[Any]) -> list[str]:
    """Every schema of the database except PostgreSQL's own (pg_*, information_schema)."""
    rows = conn.execute(
        "SELECT nspname::text FROM pg_catalog.pg_namespace "
        "WHERE nspname NOT LIKE 'pg\\_%%' AND nspname <> ALL(%s) ORDER BY 1",
        (list(SYSTEM_SCHEMAS),),
    ).fetchall()
    return [str(r[0]) for r in rows]


def extensions(conn: psycopg.Connection[Any]) -> list[str]:
    """Installed extensions other than plpgsql (always there)."""
    rows = conn.execute("SELECT extname::text FROM pg_catalog.pg_extension WHERE extname <> 'plpgsql' ORDER BY 1")
    return [str(r[0]) for r in rows.fetchall()]


_RELATIONS = """
SELECT n.nspname::text, c.relname::text, c.relkind::text, c.relispartition, c.relrowsecurity,
       EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid),
       EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::regclass
               AND d.objid = c.oid AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i'))
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e
                  WHERE e.classid = 'pg_catalog.pg_class'::regclass AND e.objid = c.oid AND e.deptype = 'e')
ORDER BY 1, 2
"""

_SERIAL = """
SELECT n.nspname::text, t.relname::text, a.attname::text, s.relname::text
FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_catalog.pg_class t ON t.oid = d.refobjid
JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
  AND d.deptype = 'a' AND n.nspname = ANY(%(schemas)s)
"""

_TRIGGERS = """
SELECT n.nspname::text, c.relname::text, t.tgname::text
FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(%(schemas)s) AND NOT t.tgisinternal ORDER BY 1, 2, 3
"""

_FUNCTIONS = """
SELECT n.nspname::text, p.proname::text, pg_catalog.pg_get_function_identity_arguments(p.oid), p.prokind::text
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = ANY(%(schemas)s)
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e
                  WHERE e.classid = 'pg_catalog.pg_proc'::regclass AND e.objid = p.oid AND e.deptype = 'e')
ORDER BY 1, 2, 3
"""

_POLICIES = """
SELECT n.nspname::text, c.relname::text, p.polname::text
FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(%(schemas)s) ORDER BY 1, 2, 3
"""

_EXCLUSIONS = """
SELECT n.nspname::text, c.relname::text, con.conname::text, ic.relname::text,
       pg_catalog.pg_get_constraintdef(con.oid, true)
FROM pg_catalog.pg_constraint con JOIN pg_catalog.pg_class c ON c.oid = con.conrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_class ic ON ic.oid = con.conindid
WHERE n.nspname = ANY(%(schemas)s) AND con.contype = 'x' ORDER BY 1, 2, 3
"""

_INVALID_INDEXES = """
SELECT n.nspname::text, c.relname::text, ic.relname::text
FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(%(schemas)s) AND NOT i.indisvalid ORDER BY 1, 2, 3
"""

_TYPES = """
SELECT n.nspname::text, t.typname::text, t.typtype::text
FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
LEFT JOIN pg_catalog.pg_class c ON c.oid = t.typrelid
WHERE n.nspname = ANY(%(schemas)s) AND (t.typtype IN ('e', 'd', 'r') OR (t.typtype = 'c' AND c.relkind = 'c'))
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e
                  WHERE e.classid = 'pg_catalog.pg_type'::regclass AND e.objid = t.oid AND e.deptype = 'e')
ORDER BY 1, 2
"""

_COLLATIONS = """
SELECT n.nspname::text, c.relname::text, a.attname::text, co.collname::text
FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
  AND a.attcollation <> 0 AND a.attcollation <> t.typcollation
"""

_NOT_VALID_KEYS = """
SELECT n.nspname::text, c.relname::text, con.conname::text
FROM pg_catalog.pg_constraint con JOIN pg_catalog.pg_class c ON c.oid = con.conrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(%(schemas)s) AND con.contype = 'f' AND NOT con.convalidated
"""

# An identity's sequence options other than what GENERATED ... AS IDENTITY gives without options (a manifest
# cannot say them): START/MINVALUE 1 (MAXVALUE/-1 descending), INCREMENT 1, MAXVALUE the type's, CACHE 1, NO CYCLE.
_IDENTITY_OPTIONS = """
SELECT n.nspname::text, t.relname::text, a.attname::text,
       concat_ws(' ',
         CASE WHEN q.seqstart <> CASE WHEN q.seqincrement > 0 THEN q.seqmin ELSE q.seqmax END
              THEN 'START ' || q.seqstart END,
         CASE WHEN q.seqincrement <> 1 THEN 'INCREMENT ' || q.seqincrement END,
         CASE WHEN q.seqmin <> CASE WHEN q.seqincrement > 0 THEN 1 ELSE lim.low END
              THEN 'MINVALUE ' || q.seqmin END,
         CASE WHEN q.seqmax <> CASE WHEN q.seqincrement > 0 THEN lim.high ELSE -1 END
              THEN 'MAXVALUE ' || q.seqmax END,
         CASE WHEN q.seqcache <> 1 THEN 'CACHE ' || q.seqcache END,
         CASE WHEN q.seqcycle THEN 'CYCLE' END)
FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_sequence q ON q.seqrelid = d.objid
JOIN pg_catalog.pg_class t ON t.oid = d.refobjid
JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
CROSS JOIN LATERAL (SELECT CASE q.seqtypid WHEN 'pg_catalog.int2'::regtype THEN 32767
                                           WHEN 'pg_catalog.int4'::regtype THEN 2147483647
                                           ELSE 9223372036854775807 END::bigint AS high,
                           CASE q.seqtypid WHEN 'pg_catalog.int2'::regtype THEN -32768
                                           WHEN 'pg_catalog.int4'::regtype THEN -2147483648
                                           ELSE -9223372036854775808 END::bigint AS low) lim
WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
  AND d.deptype = 'i' AND a.attidentity <> '' AND n.nspname = ANY(%(schemas)s)
"""

_TYPE_KINDS = {"e": "enum", "d": "domain", "r": "range type", "c": "composite type"}
_FUNCTION_KINDS = {"f": "function", "p": "procedure", "a": "aggregate", "w": "window function"}
_RELATION_KINDS = {"v": "view", "m": "materialized view", "f": "foreign table", "S": "sequence"}


def read_extras(conn: psycopg.Connection[Any], schemas: Sequence[str]) -> Extras:
    """Read serial columns and every unsupported object of ``schemas`` (a few queries for all of them)."""
    rows: dict[str, list[Any]] = {}
    params = {"schemas": sorted(schemas)}
    with conn.transaction(force_rollback=True):
        conn.execute("SELECT pg_catalog.set_config('search_path', 'pg_catalog, public', true)")
        for key, query in _QUERIES.items():
            rows[key] = conn.execute(query, params).fetchall()
    extras = Extras()
    extras.serial = {(r[0], r[1], r[2]): r[3] for r in rows["serial"]}
    extras.collations = {(r[0], r[1], r[2]): r[3] for r in rows["collations"]}
    extras.not_valid_keys = {(r[0], r[1], r[2]) for r in rows["not_valid_keys"]}
    extras.identity_options = {(r[0], r[1], r[2]): r[3] for r in rows["identity_options"] if r[3]}
    _relations(rows["relations"], extras)
    add = extras.unsupported.append
    for schema, table, name in rows["triggers"]:
        add(Unsupported("trigger", schema, name, f"on {table}", table))
    for schema, name, arguments, kind in rows["functions"]:
        add(Unsupported(_FUNCTION_KINDS.get(kind, "function"), schema, f"{name}({arguments})"))
    for schema, table, name in rows["policies"]:
        add(Unsupported("policy", schema, name, f"row-level security policy on {table}", table))
    for schema, table, name, index, definition in rows["exclusions"]:
        add(Unsupported("exclusion constraint", schema, name, f"on {table}: {definition}", table))
        extras.skipped_indexes.add((schema, index))
    for schema, table, index in rows["invalid_indexes"]:
        add(Unsupported("invalid index", schema, index, f"on {table} (a failed concurrent build?)", table))
        extras.skipped_indexes.add((schema, index))
    for schema, name, kind in rows["types"]:
        usable = " (usable as a column type; create it yourself before migrating an empty database)"
        add(Unsupported(_TYPE_KINDS[kind], schema, name, "not created by the manifests" + usable))
    for (schema, table, column), collation in sorted(extras.collations.items()):
        add(Unsupported("column collation", schema, f"{table}.{column}", f"COLLATE {collation} is not kept", table))
    return extras


def _relations(rows: list[Any], extras: Extras) -> None:
    add = extras.unsupported.append
    for schema, name, kind, partition, row_security, inherits, owned in rows:
        if kind == "p":
            add(Unsupported("partitioned table", schema, name, "not imported", name))
            extras.skipped_tables.add((schema, name))
        elif kind == "r" and partition:
            add(Unsupported("partition", schema, name, "not imported", name))
            extras.skipped_tables.add((schema, name))
        elif kind == "r" and inherits:
            add(Unsupported("inheritance child table", schema, name, "not imported", name))
            extras.skipped_tables.add((schema, name))
        elif kind == "S" and owned:
            continue  # a serial's or identity's sequence: made again by the column
        elif kind in _RELATION_KINDS:
            detail = "not owned by a column" if kind == "S" else ""
            add(Unsupported(_RELATION_KINDS[kind], schema, name, detail))
        if kind in ("r", "p") and row_security:
            add(Unsupported("row-level security", schema, name, "ENABLE ROW LEVEL SECURITY is not kept", name))


_QUERIES = {
    "relations": _RELATIONS,
    "serial": _SERIAL,
    "triggers": _TRIGGERS,
    "functions": _FUNCTIONS,
    "policies": _POLICIES,
    "exclusions": _EXCLUSIONS,
    "invalid_indexes": _INVALID_INDEXES,
    "types": _TYPES,
    "collations": _COLLATIONS,
    "not_valid_keys": _NOT_VALID_KEYS,
    "identity_options": _IDENTITY_OPTIONS,
}
