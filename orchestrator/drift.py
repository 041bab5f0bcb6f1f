"""Drift: how each target's live catalog differs from the model of the version it has applied.

The model of a target is read from the snapshots, not the manifests: per table folder the newest snapshot whose
version is at most the target's newest applied migration (a tombstone there: the table is not in the model). So
a tenant that lags behind is compared with what *it* should have, and an unapplied manifest edit is not drift.

Cost does not grow with round trips per tenant: the applied versions come from ``bulk.states`` and the catalogs
of the tenant schemas from ``catalog.read.read_schemas``, a handful of queries per batch of ``BATCH`` schemas.
Check constraints are compared in the server's own printing (``catalog.checks``), probed once per table and set
of checks, whatever the number of tenants.

Not drift: ``schema_migrations``; tables of the same repo's other scope; tables other repos of the config define
(a shared database); tables an extension owns; indexes, constraints and tables named in a table's custom
``statements`` (their SQL is the user's, we cannot model it). The bookkeeping schema is never read.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator import model, tenants
from orchestrator.catalog import checks, compare, expect, read
from orchestrator.generator import snapshots
from orchestrator.migrations import bulk, recorder
from orchestrator.migrations.rollout import select

if TYPE_CHECKING:
    import psycopg

    from orchestrator.migrations.runner import Runner

BATCH = 2000
"""Tenant schemas read per round of catalog queries: few round trips, bounded memory for a large fleet."""

IGNORED = frozenset({"schema_migrations"})

_EXTENSION_TABLES = """
SELECT n.nspname::text, c.relname::text
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
WHERE n.nspname = ANY(%s)
"""
_WORD = re.compile(r'"((?:[^"]|"")+)"|([A-Za-z_][A-Za-z0-9_$]*)')


@dataclass(frozen=True)
class TargetDrift:
    """One target's result: ``ok``, ``drifted`` (with its differences) or ``missing`` (no tenant schema)."""

    target: str
    schema: str | None  # the tenant schema; None for the repo's global target
    version: int | None  # the newest applied migration the model was taken at
    status: str
    differences: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "tenant": self.schema,
            "version": self.version,
            "status": self.status,
            "differences": list(self.differences),
        }


@dataclass
class RepoDrift:
    repo: str
    scope: str  # "global" or "tenant"
    targets: list[TargetDrift] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def drifted(self) -> list[TargetDrift]:
        return [t for t in self.targets if t.status == "drifted"]

    @property
    def missing(self) -> list[TargetDrift]:
        return [t for t in self.targets if t.status == "missing"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "scope": self.scope,
            "checked": len(self.targets),
            "drifted": len(self.drifted),
            "missing": len(self.missing),
            "seconds": round(self.seconds, 3),
            "targets": [t.as_dict() for t in self.targets if t.status != "ok"],
        }


# -- entry points ------------------------------------------------------------------------------------------


def check(
    run: Runner,
    repo: model.Repo,
    *,
    tenant_scope: bool,
    only: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> RepoDrift:
    """Compare the repo's global target (or, with ``tenant_scope``, its tenant schemas) with their models."""
    started = time.monotonic()
    models = Models(run.store(repo).read(repo.snapshots_path), repo)
    if tenant_scope:
        own = [m.version for m in run.tenant_migrations(repo)]

        def work(conn: psycopg.Connection[Any]) -> RepoDrift:
            names = select(tenants.list_tenants(repo, conn).tenants, only, exclude)
            return RepoDrift(repo.name, "tenant", check_tenants(conn, repo, models, own, names))

    else:
        scope = Scope(
            own=[m.version for m in run.migrations(repo)],
            configured=[t for t in run.cfg.tables_of(repo.name) if not t.is_tenant],
            others={tuple(t.key.split(".", 1)) for t in run.cfg.tables if t.repo != repo.name},
        )

        def work(conn: psycopg.Connection[Any]) -> RepoDrift:
            return RepoDrift(repo.name, "global", [check_global(conn, repo, models, scope)])

    result = run.endpoint(repo).control.run(work)
    result.seconds = time.monotonic() - started
    return result


@dataclass(frozen=True)
class Scope:
    """What the global target is compared against besides the snapshots."""

    own: Sequence[int]  # the repo's global migration versions
    configured: Sequence[model.Table] = ()  # the manifests' global tables: their schemas are read too
    others: Collection[tuple[str, ...]] = ()  # (schema, table) other repos of the config define


def check_global(conn: psycopg.Connection[Any], repo: model.Repo, models: Models, scope: Scope) -> TargetDrift:
    """The global target: the schemas of the global tables (modelled or configured), the bookkeeping aside."""
    applied = recorder.applied(conn, "public")
    version = applied_version(applied, scope.own)
    modelled = models.at(model_bound(applied, scope.own, version)).values()
    tables = [t for t in modelled if not t.is_tenant]
    schemas = sorted({str(t.schema) for t in [*tables, *scope.configured]} - {recorder.SCHEMA})
    live = read.read_schemas(conn, schemas)
    skip = _extension_tables(conn, schemas) | set(scope.others)
    tenant_tables = {t.name for t in modelled if t.is_tenant}
    found = []
    probes = Probes(conn)
    for schema in schemas:
        here = live.get(schema, {})
        present = {name for name in here if (schema, name) not in skip and name not in tenant_tables}
        found += differences([t for t in tables if t.schema == schema], schema, here, present, probes)
    return _result(repo.name, None, version, found)


def check_tenants(
    conn: psycopg.Connection[Any],
    repo: model.Repo,
    models: Models,
    own: Sequence[int],
    names: Sequence[str],
    batch: int = BATCH,
) -> list[TargetDrift]:
    """Every tenant schema of ``names``, read ``batch`` schemas at a time."""
    results: list[TargetDrift] = []
    probes = Probes(conn)
    for start in range(0, len(names), batch):
        chunk = list(names[start : start + batch])
        states = bulk.states(conn, chunk)
        live = read.read_schemas(conn, [n for n in chunk if states[n].exists])
        for name in chunk:
            applied = states[name].applied
            version = applied_version(applied, own)
            modelled = models.at(model_bound(applied, own, version))
            results.append(_tenant(repo, modelled, version, name, states[name], live.get(name, {}), probes))
    return results


def _tenant(
    repo: model.Repo,
    modelled: Mapping[str, model.Table],
    version: int | None,
    name: str,
    state: bulk.TenantState,
    live: Mapping[str, read.CatalogTable],
    probes: Probes,
) -> TargetDrift:
    if not state.exists:
        return TargetDrift(f"{repo.name}/{name}", name, None, "missing", (f"schema {name}: does not exist",))
    if state.foreign:
        return _result(repo.name, name, None, [f"table {name}.schema_migrations: {state.foreign}"])
    tables = [t for t in modelled.values() if t.is_tenant]
    present = set(live) - {t.name for t in modelled.values() if not t.is_tenant and t.schema == name}
    return _result(repo.name, name, version, differences(tables, name, live, present, probes))


def _result(repo: str, schema: str | None, version: int | None, found: list[str]) -> TargetDrift:
    target = repo if schema is None else f"{repo}/{schema}"
    return TargetDrift(target, schema, version, "drifted" if found else "ok", tuple(found))


# -- comparing one schema ----------------------------------------------------------------------------------


def differences(
    tables: Sequence[model.Table],
    schema: str,
    live: Mapping[str, read.CatalogTable],
    present: Collection[str],
    probes: Probes,
) -> list[str]:
    """Every difference between the model ``tables`` placed in ``schema`` and its ``live`` tables; ``present``:
    the live tables that count (a table in it the model lacks is reported as not in the model)."""
    found: list[str] = []
    named = _statement_names(tables)
    for table in tables:
        actual = live.get(table.name)
        if actual is None:
            found.append(f"table {schema}.{table.name}: missing")
            continue
        found += [line for line in probes.compare(table, schema, actual) if not _from_statements(line, named)]
    modelled = {t.name for t in tables} | IGNORED | named
    found += [f"table {schema}.{name}: not in the model" for name in sorted(present) if name not in modelled]
    return found


def _statement_names(tables: Iterable[model.Table]) -> set[str]:
    """Every identifier in the tables' custom statements: what they create is the user's, not drift."""
    return {m.group(1) or m.group(2) for t in tables for s in t.statements for m in _WORD.finditer(s.up)}


def _from_statements(line: str, named: set[str]) -> bool:
    label, _, what = line.partition(": ")
    return what == "not in the model" and label.rpartition(".")[2] in named


def _extension_tables(conn: psycopg.Connection[Any], schemas: list[str]) -> set[tuple[str, ...]]:
    return {(str(r[0]), str(r[1])) for r in conn.execute(_EXTENSION_TABLES, (schemas,)).fetchall()}


# -- the model at a version ----------------------------------------------------------------------------------


class Models:
    """The repo's snapshots, and the model they describe at any version (cached per version)."""

    def __init__(self, stored: Mapping[str, str], repo: model.Repo) -> None:
        self.repo = repo
        self.prefix = repo.snapshots_path.rstrip("/")
        self.files = {p: (int(v), t) for p, t in stored.items() if (v := _version_of(p)) is not None}
        self._at: dict[int | None, dict[str, model.Table]] = {}

    def at(self, version: int | None) -> dict[str, model.Table]:
        """key -> table: per folder the newest snapshot at or below ``version`` (None: an empty model)."""
        if version not in self._at:
            kept = {p: t for p, (v, t) in self.files.items() if version is not None and v <= version}
            loaded = snapshots.load(kept, self.prefix, self.repo.name)
            self._at[version] = {key: table for key, (_, table) in loaded.items()}
        return self._at[version]


def applied_version(applied: Collection[int], own: Collection[int]) -> int | None:
    """The newest applied version of the repo's own migrations ``own`` (a shared ``public.schema_migrations``
    holds other repos' versions too); with no files to tell (none found), the newest applied one."""
    if not own:
        return max(applied, default=None)
    known = set(own)
    return max((v for v in applied if v in known), default=None)


def model_bound(applied: Collection[int], own: Sequence[int], version: int | None) -> int | None:
    """The newest snapshot version the model of a target at ``version`` includes: up to (not including) its
    next migration not applied, so a snapshot written with no migration of its scope (a tenant table's reference
    to a renamed global table) counts from the migrations before it; None: nothing applied, an empty model."""
    if version is None:
        return None
    later = [v for v in own if v > version and v not in applied]
    return min(later) - 1 if later else _NEWEST


_NEWEST = 99_999_999_999_999
"""Above every version (YYYYMMDDHHMMSS): the whole model."""


def _version_of(path: str) -> str | None:
    name = path.rpartition("/")[2]
    return name[:-5] if len(name) == 19 and name.endswith(".json") and name[:14].isdigit() else None


class Probes:
    """Compare live tables with model tables, fast for a fleet of identical tenants.

    Expected checks are taken in the server's printing, probed once per table name and set of checks (a probe on
    a drifted copy that could not take every check is not reused: the next tenant's copy is tried). Results are
    cached per model table and live table with the tenant schema taken out (``_neutral``): a thousand tenants
    at one version with the same catalog are compared once.
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self._checks: dict[tuple[str, tuple[model.CheckConstraint, ...]], tuple[read.Check, ...]] = {}
        self._compared: dict[tuple[int, read.CatalogTable], list[str]] = {}
        self._tables: list[model.Table] = []  # keeps the cached model tables (and so their ids) alive

    def checks(self, schema: str, table: model.Table) -> tuple[read.Check, ...]:
        key = (table.name, table.check_constraints)
        if key in self._checks:
            return self._checks[key]
        forms, complete = checks.probe(self.conn, schema, table.name, table.check_constraints)
        if complete:
            self._checks[key] = forms
        return forms

    def compare(self, table: model.Table, schema: str, actual: read.CatalogTable) -> list[str]:
        """Every difference of ``actual`` (in ``schema``) from ``table`` placed there."""
        if schema == "public":  # a public serial's sequence prints unqualified: nothing to take out
            want = dataclasses.replace(expect.expected(table, schema), checks=self.checks(schema, table))
            return compare.differences(want, actual)
        key = (id(table), _neutral(actual, schema))
        if key not in self._compared:
            want = dataclasses.replace(expect.expected(table, _HERE), checks=self.checks(schema, table))
            self._compared[key] = compare.differences(want, key[1])
            self._tables.append(table)
        return [line.replace(_HERE, schema) for line in self._compared[key]]


_HERE = "<schema>"
"""Stands for the schema in a neutral table: no schema name can contain it (names are checked identifiers),
and it reads as itself inside a printed value."""


def _neutral(table: read.CatalogTable, schema: str) -> read.CatalogTable:
    """``table`` with ``schema`` replaced by ``_HERE`` where ``expect.expected`` puts the schema it is given."""
    qualified = f"'{schema}."
    return dataclasses.replace(
        table,
        schema=_HERE,
        columns=tuple(
            dataclasses.replace(c, default=c.default.replace(qualified, f"'{_HERE}."))
            if c.default and qualified in c.default
            else c
            for c in table.columns
        ),
        foreign_keys=tuple(
            dataclasses.replace(f, ref_schema=_HERE) if f.ref_schema == schema else f for f in table.foreign_keys
        ),
    )
