"""Turn one catalog table into a Resource document: plain data in the manifest format, defaults left out.

What the format would fill in by itself is never written: a name equal to its default (``<table>_pkey``,
``<table>_<col>_fkey``, ``<table>_<name>_index``, ``<table>_<col>_<col>_index``), ``allowNull`` on a primary-key,
identity or serial column, ``noAction``, ``simple``, ``btree``. A name that differs from the default is written,
so the round trip gives the same catalog. What cannot be said (a primary key with another name, a foreign key
to a table that is not imported, a stored generated column, ...) is returned as ``Unsupported`` next to the
document, never dropped silently.

Literal defaults are recognised from PostgreSQL's printed form (``'todo'::text`` -> ``todo``, ``0``, ``true``)
only when the literal renders back to the same value; anything else stays ``defaultSql`` as PostgreSQL prints it.
A ``nextval`` default of a sequence owned by the column is a serial column: ``serial``/``bigserial``/
``smallserial``, which the generator creates with the same default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from orchestrator import pgtypes
from orchestrator.catalog import read
from orchestrator.importer.inspect import Extras, Unsupported

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
METHODS = frozenset({"btree", "hash", "gist", "gin", "spgist", "brin"})
MAX_NAME = 63
_SERIAL = {"integer": "serial", "bigint": "bigserial", "smallint": "smallserial"}
_STRING = re.compile(r"^'((?:[^']|'')*)'::[^']+$", re.DOTALL)
_QUOTED_NUMBER = re.compile(r"^'(-?\d+(?:\.\d+)?)'::[a-z ]+$")
_NUMERIC = frozenset({"numeric", "real", "double precision"})
_DEFERRABLE: dict[str, Any] = {"immediate": True, "deferred": "initiallyDeferred"}


@dataclass(frozen=True)
class Target:
    """A table a foreign key may point at: its resource and primary key."""

    resource: str
    primary_key: tuple[str, ...]
    tenant: bool


@dataclass
class Context:
    """What building one document needs to know about the others."""

    repo: str
    template: str | None
    """The tenant schema the tenant tables are read from (their foreign keys inside it stay unqualified)."""
    targets: dict[tuple[str, str], Target]
    """(schema, table) -> target, for imported tables and tables the config already defines (tenant tables
    under the template's name)."""
    extras: Extras


@dataclass
class Built:
    """One table's document and what it could not say."""

    document: dict[str, Any]
    notes: list[Unsupported] = field(default_factory=list)


def importable(table: read.CatalogTable) -> str | None:
    """Why the table cannot be a Resource at all (None: it can)."""
    for name in (table.name, *(c.name for c in table.columns)):
        if not IDENTIFIER.match(name):
            return f"name {name!r} is not a manifest identifier (letters, digits and _)"
    for column in table.columns:
        try:
            pgtypes.normalise(column.type)
        except ValueError as exc:
            return f"column {column.name}: {exc}"
    if not table.columns:
        return "a table without columns"
    return None


def document(table: read.CatalogTable, resource: str, ctx: Context) -> Built:
    """Return the Resource document of ``table`` (a tenant table when its schema is the template)."""
    return _Builder(table, resource, ctx).build()


class _Builder:
    def __init__(self, table: read.CatalogTable, resource: str, ctx: Context) -> None:
        self.table = table
        self.resource = resource
        self.ctx = ctx
        self.tenant = table.schema == ctx.template
        self.notes: list[Unsupported] = []
        self.used_indexes: set[str] = set()

    def note(self, kind: str, name: str, detail: str) -> None:
        self.notes.append(Unsupported(kind, self.table.schema, name, detail, self.table.name))

    def build(self) -> Built:
        spec: dict[str, Any] = {"repo": self.ctx.repo, "table": self.table.name}
        if self.tenant:
            spec["multitenancy"] = {"strategy": "context"}
        elif self.table.schema != "public":
            spec["schema"] = self.table.schema
        pk = self._primary_key()
        if len(pk) > 1:
            spec["primaryKey"] = list(pk)
        single, multi = self._foreign_keys()
        spec["attributes"] = [self._attribute(c, pk, single.get(c.name)) for c in self.table.columns]
        for key, items in (
            ("identities", self._identities()),
            ("indexes", self._indexes()),
            ("foreignKeys", multi),
            ("checkConstraints", self._checks()),
        ):
            if items:
                spec[key] = items
        doc = {"apiVersion": "orchestrator/v1", "kind": "Resource", "metadata": {"name": self.resource}, "spec": spec}
        return Built(doc, self.notes)

    # -- columns ---------------------------------------------------------------------------------------------

    def _primary_key(self) -> tuple[str, ...]:
        pk = self.table.primary_key
        if pk is None:
            return ()
        if pk.name != f"{self.table.name}_pkey":
            self.note("primary key name", pk.name, f"the manifests name it {self.table.name}_pkey")
        return pk.columns

    def _attribute(self, column: read.Column, pk: tuple[str, ...], reference: dict[str, Any] | None) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": column.name, "type": column.type}
        implied_not_null = column.name in pk or column.identity is not None
        if len(pk) == 1 and pk[0] == column.name:
            entry["primaryKey"] = True
        serial = self._serial(column)
        if serial:
            entry["type"] = serial
            implied_not_null = True
        if column.not_null and not implied_not_null:
            entry["allowNull"] = False
        if column.identity is not None:
            entry["generated"] = column.identity
            options = self.ctx.extras.identity_options.get((self.table.schema, self.table.name, column.name))
            if options:
                self.note(
                    "identity options",
                    f"{self.table.name}.{column.name}",
                    f"{options} is not kept (the new sequence has the defaults)",
                )
        elif column.default is not None and not serial:
            entry.update(self._default(column))
        if reference is not None:
            entry["references"] = reference
        return entry

    def _serial(self, column: read.Column) -> str | None:
        key = (self.table.schema, self.table.name, column.name)
        sequence = self.ctx.extras.serial.get(key)
        serial = _SERIAL.get(column.type)
        if sequence is None or serial is None or not (column.default or "").startswith("nextval("):
            return None
        if not column.not_null:
            self.note(
                "column", f"{self.table.name}.{column.name}", "a serial column that allows NULL: imported as NOT NULL"
            )
        if sequence != f"{self.table.name}_{column.name}_seq":
            self.note(
                "sequence name",
                sequence,
                f"serial {column.name}: the new sequence is named {self.table.name}_{column.name}_seq",
            )
        return serial

    def _default(self, column: read.Column) -> dict[str, Any]:
        text = str(column.default)
        if text.startswith("GENERATED ALWAYS AS"):
            self.note(
                "generated column",
                f"{self.table.name}.{column.name}",
                f"{text} is not kept (imported as a plain column)",
            )
            return {}
        value = literal(text, column.type)
        return {"defaultSql": text} if value is None else {"default": value}

    # -- foreign keys ----------------------------------------------------------------------------------------

    def _foreign_keys(self) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        single: dict[str, dict[str, Any]] = {}
        multi: list[dict[str, Any]] = []
        for fk in self.table.foreign_keys:
            target = self._target(fk)
            if target is None:
                continue
            if fk.match == "partial":
                self.note("foreign key", fk.name, "MATCH PARTIAL is not supported")
                continue
            if (self.table.schema, self.table.name, fk.name) in self.ctx.extras.not_valid_keys:
                self.note("foreign key", fk.name, "NOT VALID: imported as a validated foreign key")
            if len(fk.columns) == 1 and fk.columns[0] not in single:
                single[fk.columns[0]] = self._reference(fk, target)
            else:
                multi.append(self._multi(fk, target))
        return single, multi

    def _target(self, fk: read.ForeignKey) -> Target | None:
        target = self.ctx.targets.get((fk.ref_schema, fk.ref_table))
        shown = f"{fk.ref_schema}.{fk.ref_table}"
        if target is None:
            self.note("foreign key", fk.name, f"references {shown}, which is not imported")
        elif target.tenant and not self.tenant:
            self.note("foreign key", fk.name, f"a global table references tenant table {shown}")
            return None
        return target

    def _actions(self, fk: read.ForeignKey) -> dict[str, Any]:
        entry: dict[str, Any] = {}
        for key, action in (("onDelete", fk.on_delete), ("onUpdate", fk.on_update)):
            if action.columns:
                entry[key] = {action.kind: list(action.columns)}
            elif action.kind != "noAction":
                entry[key] = action.kind
        if fk.deferrable != "no":
            entry["deferrable"] = _DEFERRABLE[fk.deferrable]
        if fk.match == "full":
            entry["match"] = "full"
        return entry

    def _reference(self, fk: read.ForeignKey, target: Target) -> dict[str, Any]:
        column = fk.columns[0]
        entry: dict[str, Any] = {"resource": target.resource}
        if target.primary_key != fk.ref_columns:
            entry["column"] = fk.ref_columns[0]
        entry.update(self._actions(fk))
        if self._take_fk_index(fk.columns):
            entry["index"] = True
        if fk.name != f"{self.table.name}_{column}_fkey":
            entry["name"] = fk.name
        return entry

    def _multi(self, fk: read.ForeignKey, target: Target) -> dict[str, Any]:
        entry: dict[str, Any] = {}
        if fk.name != "_".join((self.table.name, *fk.columns, "fkey")):
            entry["name"] = fk.name
        entry["columns"] = list(fk.columns)
        references: dict[str, Any] = {"resource": target.resource}
        if target.primary_key != fk.ref_columns:
            references["columns"] = list(fk.ref_columns)
        entry["references"] = references
        entry.update(self._actions(fk))
        if self._take_fk_index(fk.columns):
            entry["index"] = True
        return entry

    def _take_fk_index(self, columns: tuple[str, ...]) -> bool:
        """Use the plain index ``<table>_<cols>_index`` on exactly the key's columns as its ``index: true``."""
        name = "_".join((self.table.name, *columns, "index"))
        for index in self._live_indexes():
            plain = not index.unique and index.method == "btree" and not index.predicate and not index.include
            if index.name == name and plain and index.keys == columns and index.nulls_distinct:
                self.used_indexes.add(index.name)
                return True
        return False

    # -- indexes ---------------------------------------------------------------------------------------------

    def _live_indexes(self) -> list[read.Index]:
        skipped = self.ctx.extras.skipped_indexes
        return [i for i in self.table.indexes if (self.table.schema, i.name) not in skipped]

    def _identities(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        names: set[str] = set()
        for index in self._live_indexes():
            if index.name in self.used_indexes or not _identity_shaped(index):
                continue
            if index.constraint and (index.include or index.method != "btree"):
                continue  # reported by _indexes
            self.used_indexes.add(index.name)
            found.append(self._identity(index, names))
        return found

    def _identity(self, index: read.Index, names: set[str]) -> dict[str, Any]:
        prefix, suffix = f"{self.table.name}_", "_index"
        own = index.name[len(prefix) : -len(suffix)] if index.name.startswith(prefix) else ""
        if index.name.endswith(suffix) and IDENTIFIER.match(own) and own not in names:
            name, index_name = own, None
        else:
            name, index_name = unique_name("unique_" + "_".join(index.keys), names), index.name
        names.add(name)
        entry: dict[str, Any] = {"name": name, "keys": list(index.keys)}
        if index.constraint:
            entry["constraint"] = True
            if index.deferrable != "no":
                entry["deferrable"] = _DEFERRABLE[index.deferrable]
        if index.predicate:
            entry["where"] = index.predicate
        if not index.nulls_distinct:
            entry["nullsDistinct"] = False
        if index_name:
            entry["indexName"] = index_name
        return entry

    def _indexes(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for index in self._live_indexes():
            if index.name in self.used_indexes:
                continue
            if index.method not in METHODS:
                self.note("index", index.name, f"index method {index.method} is not supported")
                continue
            if index.constraint:
                self.note(
                    "unique constraint",
                    index.name,
                    "with INCLUDE or a non-btree method: imported as a unique index, not a constraint",
                )
            found.append(self._index(index))
        return found

    def _index(self, index: read.Index) -> dict[str, Any]:
        entry: dict[str, Any] = {"fields": list(index.keys)}
        plain = all(IDENTIFIER.match(k) for k in index.keys)
        if not plain or index.name != "_".join((self.table.name, *index.keys, "index")):
            entry["name"] = index.name
        if index.unique:
            entry["unique"] = True
        if index.method != "btree":
            entry["using"] = index.method
        if index.predicate:
            entry["where"] = index.predicate
        if index.include:
            entry["include"] = list(index.include)
        if index.unique and not index.nulls_distinct:
            entry["nullsDistinct"] = False
        return entry

    # -- checks ----------------------------------------------------------------------------------------------

    def _checks(self) -> list[dict[str, Any]]:
        found = []
        for check in self.table.checks:
            text = check.definition
            if text.endswith(" NOT VALID"):
                text = text[: -len(" NOT VALID")]
                self.note("check", check.name, "NOT VALID: imported as a validated check")
            if text.endswith(" NO INHERIT"):
                text = text[: -len(" NO INHERIT")]
                self.note("check", check.name, "NO INHERIT is not kept")
            if not IDENTIFIER.match(check.name) or not (text.startswith("CHECK (") and text.endswith(")")):
                self.note("check", check.name, f"cannot be expressed: {check.definition}")
                continue
            found.append({"name": check.name, "check": text[len("CHECK (") : -1]})
        return found


def _identity_shaped(index: read.Index) -> bool:
    """A unique btree index over plain columns: what an identity (or a UNIQUE constraint) is."""
    return (
        index.unique and index.method == "btree" and not index.include and all(IDENTIFIER.match(k) for k in index.keys)
    )


def unique_name(base: str, taken: set[str]) -> str:
    base = base[:MAX_NAME]
    name, n = base, 2
    while name in taken:
        suffix = f"_{n}"
        name, n = base[: MAX_NAME - len(suffix)] + suffix, n + 1
    return name


def literal(text: str, type_: str) -> str | int | float | bool | None:
    """Return the manifest literal for a printed default, or None when it must stay ``defaultSql``."""
    if type_.endswith("[]"):
        return None
    base = pgtypes.base_type(type_)
    if base == "boolean":
        return {"true": True, "false": False}.get(text)
    if base in pgtypes.INTEGER_TYPES or base in _NUMERIC:
        quoted = _QUOTED_NUMBER.match(text)
        number = quoted.group(1) if quoted else text
        if re.fullmatch(r"-?\d+", number):
            return int(number)
        if base in _NUMERIC and re.fullmatch(r"-?\d+\.\d+", number) and repr(float(number)) == number:
            return float(number)
        return None
    match = _STRING.match(text)
    if match is None:
        return None
    return match.group(1).replace("''", "'")
