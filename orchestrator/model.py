"""The validated, normalised model: what the manifests mean, independent of how they were written.

Everything here is a frozen dataclass of plain values, built only by ``manifests.build`` after validation, so
code further down (the generator, the runner) can trust it: names are valid identifiers, types are in their
canonical spelling, derived names (``<table>_pkey``, ``<table>_<col>_fkey``, index names) are filled in, and
references point at concrete tables.

``Table.canonical()`` is the table's "essence": the form snapshots store and the generator diffs. It contains
only what shapes the database (not the resource name, nor where the manifest was written), with sorted keys,
so two manifests that mean the same table give the same bytes and the same ``content_hash``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

Scalar = str | int | float | bool
TenantKind = Literal["query", "static", "schemaPattern"]
Strategy = Literal["none", "context", "attribute"]
Deferrable = Literal["no", "immediate", "deferred"]


@dataclass(frozen=True)
class Source:
    """Where a manifest document was written, for messages."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


# -- Repo ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TenantSource:
    """How to list a repo's tenant schemas; exactly one of query, static or schema_pattern is set."""

    kind: TenantKind
    query: str | None = None
    static: tuple[str, ...] = ()
    schema_pattern: str | None = None
    create_schemas: bool = False


@dataclass(frozen=True)
class Rollout:
    concurrency: int = 4
    """Tenants migrated at once: enough to hide round trips, few enough not to starve the app's pool."""
    canary: tuple[str, ...] = ()
    max_failures: int | None = None
    """None: keep going whatever fails; each failure is reported."""


@dataclass(frozen=True)
class Timeouts:
    lock_timeout_ms: int = 5_000
    """A DDL statement waiting longer than this for a table lock blocks the app's queries behind it."""
    statement_timeout_ms: int = 0
    """0: no limit; backfills and index builds can legitimately take long."""
    lock_wait_ms: int = 60_000
    """How long to wait for another runner holding the target's advisory lock."""


@dataclass(frozen=True)
class Retry:
    attempts: int = 5
    initial_delay_ms: int = 1_000
    max_delay_ms: int = 30_000


@dataclass(frozen=True)
class Repo:
    """A database. ``url`` is the template as written (``${VAR}`` unresolved): see ``connect``."""

    name: str
    url: str | None = None
    url_file: str | None = None
    migrations_path: str = ""
    tenant_migrations_path: str = ""
    snapshots_path: str = ""
    extensions: tuple[str, ...] = ()
    tenants: TenantSource | None = None
    rollout: Rollout = Rollout()
    timeouts: Timeouts = Timeouts()
    retry: Retry = Retry()
    allow_destructive: bool = False
    allow_blocking: bool = False
    online_safe: bool = True
    source: Source = field(default=Source("<none>", 0), compare=False)

    @property
    def embedded(self) -> bool:
        """True when the repo uses the embedded PostgreSQL (no URL configured at all)."""
        return not self.url and not self.url_file


# -- Table ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """A referential action; ``columns`` restricts SET NULL / SET DEFAULT to some columns (PostgreSQL 15+)."""

    kind: Literal["cascade", "restrict", "noAction", "setNull", "setDefault"]
    columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Reference:
    """A foreign key, resolved: ``schema`` is None when the target is a tenant table in the same tenant."""

    table: str
    schema: str | None
    column: str
    name: str
    on_delete: Action | None = None
    on_update: Action | None = None
    deferrable: Deferrable = "no"
    match: Literal["simple", "full"] = "simple"
    index: bool = False
    index_name: str | None = None


@dataclass(frozen=True)
class ForeignKey:
    """A table-level (multi-column) foreign key, resolved like ``Reference``: ``schema`` is None when the
    target is a tenant table in the same tenant; ``ref_columns`` pair up with ``columns`` in order."""

    name: str
    columns: tuple[str, ...]
    table: str
    schema: str | None
    ref_columns: tuple[str, ...]
    on_delete: Action | None = None
    on_update: Action | None = None
    deferrable: Deferrable = "no"
    match: Literal["simple", "full"] = "simple"
    index: bool = False
    index_name: str | None = None


@dataclass(frozen=True)
class Attribute:
    name: str
    type: str
    allow_null: bool = True
    primary_key: bool = False
    default: Scalar | None = None
    default_sql: str | None = None
    generated: Literal["identity", "always"] | None = None
    renamed_from: str | None = None
    references: Reference | None = None

    def default_expression(self) -> str | None:
        """Return the default as SQL: ``defaultSql`` as written, a literal quoted (``'it''s'``), or None."""
        if self.default_sql is not None:
            return self.default_sql
        if self.default is None:
            return None
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        if isinstance(self.default, int | float):
            return repr(self.default)
        return "'" + self.default.replace("'", "''") + "'"


@dataclass(frozen=True)
class Identity:
    """A unique index over ``keys`` (the tenant column first under attribute multitenancy); with ``constraint`` a
    UNIQUE constraint named ``index_name`` (its index has the same name), maybe deferrable."""

    name: str
    keys: tuple[str, ...]
    index_name: str
    where: str | None = None
    nulls_distinct: bool = True
    constraint: bool = field(default=False, metadata={"omit_default": True})
    deferrable: Deferrable = field(default="no", metadata={"omit_default": True})


@dataclass(frozen=True)
class Index:
    """A custom index; a field that is not a column name is an SQL expression."""

    name: str
    fields: tuple[str, ...]
    unique: bool = False
    using: str | None = None
    where: str | None = None
    include: tuple[str, ...] = ()
    nulls_distinct: bool = True
    concurrently: bool = False


@dataclass(frozen=True)
class CheckConstraint:
    name: str
    check: str


@dataclass(frozen=True)
class Statement:
    name: str
    up: str
    down: str


@dataclass(frozen=True)
class Multitenancy:
    strategy: Strategy = "none"
    attribute: str | None = None


@dataclass(frozen=True)
class Table:
    """A table as the manifests define it. ``schema`` is None for a context (per-tenant) table."""

    resource: str
    repo: str
    name: str
    schema: str | None
    attributes: tuple[Attribute, ...]
    primary_key: tuple[str, ...] = ()
    multitenancy: Multitenancy = Multitenancy()
    renamed_from: str | None = None
    identities: tuple[Identity, ...] = ()
    indexes: tuple[Index, ...] = ()
    check_constraints: tuple[CheckConstraint, ...] = ()
    statements: tuple[Statement, ...] = ()
    source: Source = field(default=Source("<none>", 0), compare=False)
    foreign_keys: tuple[ForeignKey, ...] = field(default=(), metadata={"omit_default": True})
    """Table-level foreign keys (several columns); a one-column key stays on its attribute (``references``)."""

    @property
    def is_tenant(self) -> bool:
        """True for a context table: one copy in every tenant schema, migrated by tenant migrations."""
        return self.multitenancy.strategy == "context"

    @property
    def key(self) -> str:
        """A name unique within the repo: ``schema.table``, or ``tenants.table`` for a context table."""
        return f"{self.schema or 'tenants'}.{self.name}"

    def column(self, name: str) -> Attribute | None:
        return next((a for a in self.attributes if a.name == name), None)

    def canonical(self) -> dict[str, Any]:
        """Return the table's essence as JSON-ready data (what snapshots store and diffs compare)."""
        data: dict[str, Any] = _plain(self)
        for dropped in ("resource", "repo", "renamed_from"):
            data.pop(dropped)
        for attribute in data["attributes"]:
            attribute.pop("renamed_from")
        return data

    def canonical_json(self) -> str:
        """Return ``canonical()`` as deterministic JSON text (sorted keys, two-space indent, final newline)."""
        return json.dumps(self.canonical(), sort_keys=True, indent=2, ensure_ascii=False) + "\n"

    def content_hash(self) -> str:
        """Return the sha256 of the canonical JSON: equal for tables that mean the same thing."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


@dataclass(frozen=True)
class Config:
    """Every repo and table of a valid configuration, in a stable order (by name)."""

    repos: tuple[Repo, ...]
    tables: tuple[Table, ...]

    def repo(self, name: str) -> Repo | None:
        return next((r for r in self.repos if r.name == name), None)

    def tables_of(self, repo: str) -> tuple[Table, ...]:
        return tuple(t for t in self.tables if t.repo == repo)


def _plain(value: Any) -> Any:
    """Turn dataclasses and tuples into dicts and lists, recursively."""
    if hasattr(value, "__dataclass_fields__"):
        return {
            name: _plain(getattr(value, name))
            for name, spec in value.__dataclass_fields__.items()
            if spec.compare and not (spec.metadata.get("omit_default") and getattr(value, name) == spec.default)
        }
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value
