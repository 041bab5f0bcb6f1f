"""``generate-migrations``: diff every repo's tables against their snapshots and write migrations.

Per repo and scope (global, tenant) the ordered operations become one migration, or, for tables that already
exist, the consecutive steps of an online change (``online``: constraints validated and indexes built
concurrently in migrations of their own). Snapshots are written for the tables that changed
only. Nothing is written when a destructive change, or a change that rewrites a table (``rewrites``), is not
allowed, or with ``check``/``dry_run``: the plan is computed first, completely, and files are written only at
the end.

Versions are unique per database: repos whose URLs name the same database share its
``public.schema_migrations``, so a repo's new version is above every version of the other repos on that
database (their files, and what this run gives them), not only above its own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import model, pgtypes, state
from orchestrator.errors import BadInputError, OrchestratorError
from orchestrator.generator import compare, locks, online, order, rewrites, snapshots
from orchestrator.generator import operations as ops

DEFAULT_NAME = "migrate_resources"
_NAME = re.compile(r"^[a-z0-9_]{1,100}$")
_VERSION = re.compile(r"^(\d{14})_.*\.sql$")
_SAFE_CASTS = {
    ("smallint", "integer"),
    ("smallint", "bigint"),
    ("integer", "bigint"),
    ("varchar", "text"),
    ("char", "text"),
    ("char", "varchar"),
    ("smallint", "numeric"),
    ("integer", "numeric"),
    ("bigint", "numeric"),
    ("real", "double precision"),
    ("timestamp", "timestamptz"),
    ("json", "jsonb"),
}


class DestructiveChangeError(OrchestratorError):
    """Tables or columns would be dropped and the user did not allow it (exit 1, nothing written)."""


class BlockingChangeError(DestructiveChangeError):
    """A change would rewrite a table under ACCESS EXCLUSIVE and the user did not allow it (exit 1, nothing
    written). Its message lists destructive changes refused in the same run too."""


@dataclass(frozen=True)
class Migration:
    """One generated migration file."""

    path: Path
    repo: str
    scope: str
    operations: tuple[ops.Operation, ...]
    text: str


@dataclass
class Plan:
    """Everything one run would write, with what to tell the user."""

    migrations: list[Migration] = field(default_factory=list)
    snapshots: list[snapshots.SnapshotFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.migrations

    def of_repo(self, repo: model.Repo) -> Plan:
        """The part of the plan that belongs to ``repo`` (its migrations, and snapshots under its path)."""
        prefix = repo.snapshots_path.rstrip("/") + "/"
        return Plan(
            [m for m in self.migrations if m.repo == repo.name],
            [s for s in self.snapshots if s.path.as_posix().startswith(prefix)],
        )

    def files(self) -> list[tuple[Path, str]]:
        """Every (path, text) to write: migrations first, then snapshots."""
        return [(m.path, m.text) for m in self.migrations] + [(s.path, s.text) for s in self.snapshots]

    def write(self, store: state.Store) -> None:
        """Write every file through the store (paths relative to the root)."""
        store.write({path.as_posix(): text for path, text in self.files()})


def run(
    cfg: model.Config,
    root: Path,
    *,
    state_kind: str = "files",
    repo: str | None = None,
    name: str | None = None,
    allow_destructive: bool = False,
    allow_blocking: bool = False,
    write: bool = True,
    now: dt.datetime | None = None,
) -> Plan:
    """Plan every repo and, when ``write``, write the result through each repo's store.

    Writing holds each store's generation lock (the database store's advisory lock) from reading the snapshots
    to writing the files, so concurrent generators produce one migration. The lock is the database's: repos
    sharing a database take it once (a second connection would wait for the first).
    """
    stores = {item: state.store(state_kind, item, root) for item in cfg.repos}
    sharing = [r for group in _shared_databases(cfg.repos, root) for r in group[1:]]
    with contextlib.ExitStack() as stack:
        if write:
            for item, store in stores.items():
                if item not in sharing:
                    stack.enter_context(store.generating())
        result = plan(
            cfg,
            stores.__getitem__,
            repo=repo,
            name=name,
            allow_destructive=allow_destructive,
            allow_blocking=allow_blocking,
            now=now,
            root=root,
        )
        if write and not result.empty:
            for item, store in stores.items():
                result.of_repo(item).write(store)
    return result


def plan(
    cfg: model.Config,
    stores: Callable[[model.Repo], state.Store],
    *,
    repo: str | None = None,
    name: str | None = None,
    allow_destructive: bool = False,
    allow_blocking: bool = False,
    now: dt.datetime | None = None,
    root: Path | None = None,
) -> Plan:
    """Compute what ``generate-migrations`` would write; raise before anything is written.

    ``root`` resolves the repos' URLs (``urlFile``) to tell which of them share a database (default: cwd).
    """
    name = name or DEFAULT_NAME
    if not _NAME.match(name):
        raise BadInputError(f"--name {name!r}: use lower-case letters, digits and _ (at most 100)")
    if any(name.endswith(suffix) for suffix in online.STEPS if suffix):
        steps = ", ".join(s for s in online.STEPS if s)
        raise BadInputError(f"--name {name!r}: must not end like the files of an online change's steps ({steps})")
    repos = [r for r in cfg.repos if repo is None or r.name == repo]
    if repo is not None and not repos:
        raise BadInputError(f"unknown repo {repo!r} (known: {', '.join(r.name for r in cfg.repos)})")
    result = Plan()
    refused: list[str] = []
    blocking: list[str] = []
    shared = _shared_databases(cfg.repos, root or Path.cwd())
    result.warnings += _clashes(shared, stores)
    for item in repos:
        first = _first_version(_taken(item, shared, stores, result), now)
        tables = cfg.tables_of(item.name)
        _plan_repo(
            item, tables, stores(item), name, allow_destructive, allow_blocking, first, result, refused, blocking
        )
    if blocking:
        raise BlockingChangeError("\n".join([_blocking_refusal(blocking), *([_refusal(refused)] if refused else [])]))
    if refused:
        raise DestructiveChangeError(_refusal(refused))
    return result


def _plan_repo(
    repo: model.Repo,
    tables: Sequence[model.Table],
    store: state.Store,
    name: str,
    allow_destructive: bool,
    allow_blocking: bool,
    version: str,
    result: Plan,
    refused: list[str],
    blocking: list[str],
) -> None:
    base = Path(repo.snapshots_path)
    stored = store.read(repo.snapshots_path)
    old = {key: table for key, (_, table) in snapshots.load(stored, repo.snapshots_path, repo.name).items()}
    installed = snapshots.load_extensions(stored, repo.snapshots_path)
    new_extensions = [e for e in repo.extensions if e not in installed]
    global_old = {k: t for k, t in old.items() if not t.is_tenant}
    global_renames = compare.renames(compare.matches(global_old, [t for t in tables if not t.is_tenant]))
    global_columns = compare.column_renames(
        compare.matches(global_old, [t for t in tables if not t.is_tenant]), [t for t in tables if not t.is_tenant]
    )
    for scope, path in (("global", repo.migrations_path), ("tenant", repo.tenant_migrations_path)):
        tenant = scope == "tenant"
        diff = compare.compare_scope(
            {k: t for k, t in old.items() if t.is_tenant == tenant},
            [t for t in tables if t.is_tenant == tenant],
            global_renames if tenant else None,
            global_columns if tenant else None,
        )
        operations = diff.operations
        if scope == "global":
            operations = [ops.CreateExtension(e) for e in new_extensions] + operations
            blocked = _breaks_tenant_keys(repo, operations, [t for t in old.values() if t.is_tenant])
            blocked += _breaks_tenant_table_keys(repo, operations, [t for t in old.values() if t.is_tenant])
            if blocked:
                raise DestructiveChangeError(
                    "\n".join(
                        [
                            "refusing a global change tenant tables depend on; nothing was written:",
                            *[f"  {line}" for line in blocked],
                        ]
                    )
                )
        snapshot_version = version
        if operations:
            version = _emit(
                repo,
                scope,
                path,
                operations,
                diff.resources,
                name,
                version,
                allow_destructive,
                allow_blocking,
                result,
                refused,
                blocking,
            )
        for key, table in sorted(diff.snapshots.items()):
            file = base / snapshots.folder(key) / f"{snapshot_version}.json"
            result.snapshots.append(snapshots.SnapshotFile(file, snapshots.render(table)))
    if new_extensions:
        text = snapshots.render_extensions((*installed, *new_extensions))
        result.snapshots.append(snapshots.SnapshotFile(base / "extensions.json", text))


def _emit(
    repo: model.Repo,
    scope: str,
    path: str,
    operations: list[ops.Operation],
    resources: set[str],
    name: str,
    version: str,
    allow_destructive: bool,
    allow_blocking: bool,
    result: Plan,
    refused: list[str],
    blocking: list[str],
) -> str:
    """Order the operations, add the migration file(s) of one scope to ``result``; return the next version."""
    if not (allow_destructive or repo.allow_destructive):
        refused += [f"{repo.name}: {op.describe()}" for op in operations if op.destructive]
    if not (allow_blocking or repo.allow_blocking or not repo.online_safe):  # onlineSafe: false: plain DDL
        blocking += [f"{repo.name}: {line}" for line in rewrites.rewrites(operations)]
    ordered = order.order(operations)
    result.warnings += [f"{repo.name}: {w}" for w in _warnings(ordered)]
    sources = ", ".join(sorted(resources)) or f"repo {repo.name}"
    created = {op.table for op in ordered if isinstance(op, ops.CreateTable)}
    planned = online.steps(ordered, online=repo.online_safe)
    gaps = _unenforced(planned)
    result.warnings += [f"{repo.name}: {line}" for lines in gaps.values() for line in lines]
    for number, step in enumerate(planned, start=1):
        file = Path(path) / f"{version}_{name}{step.suffix}.sql"
        where = f"step {number} of {len(planned)}: {_STEP_TITLES[step.suffix]}" if len(planned) > 1 else None
        text = _migration_text(step, sources, created, where, gaps.get(number, []))
        result.migrations.append(Migration(file, repo.name, scope, step.operations, text))
        version = _next(version)
    return version


_STEP_TITLES = {
    online.MAIN: "the change, constraints on existing tables NOT VALID",
    online.CONCURRENTLY: "one index built CONCURRENTLY, outside a transaction",
    online.AFTER_INDEXES: "what needs the indexes built before it",
    online.VALIDATE: "validation, each statement committed on its own; reads and writes go on",
}


def _unenforced(planned: Sequence[online.Step]) -> dict[int, list[str]]:
    """Step number -> notes for the unique indexes (UNIQUE constraints included) the step drops and a later step
    builds again CONCURRENTLY (a constraint switched to a bare index or back, its deferrability or definition
    changed): in between nothing enforces uniqueness, which the header and the plan say explicitly."""
    notes: dict[int, list[str]] = {}
    for number, step in enumerate(planned, start=1):
        for op in step.operations:
            if not isinstance(op, ops.DropIndex) or op.concurrently or not op.index.unique:
                continue
            later = next(
                (
                    n
                    for n, other in enumerate(planned[number:], start=number + 1)
                    for o in other.operations
                    if isinstance(o, ops.CreateIndex)
                    and o.concurrent
                    and (o.table, o.index.name) == (op.table, op.index.name)
                ),
                None,
            )
            if later is not None:
                notes.setdefault(number, []).append(
                    f"UNIQUENESS NOT ENFORCED: {op.index.name} on {op.ref} is dropped in step {number} and built "
                    f"again CONCURRENTLY in step {later}; rows written in between may be duplicates (the build then "
                    "fails on them)"
                )
    return notes


def _migration_text(
    step: online.Step, sources: str, created: set[str], where: str | None, gaps: Sequence[str] = ()
) -> str:
    from orchestrator.generator import render  # psycopg is imported only when there is something to render

    operations = step.operations
    lines = [f"-- Generated by orchestrator from: {sources}. Review before applying."]
    lines += [f"-- {where}" for _ in [where] if where]
    width = max(len(op.describe()) for op in operations)
    lines += [f"-- {op.describe():<{width}}  [{locks.note(op, created, _rewrites)}]" for op in operations]
    lines += [f"-- {gap}" for gap in gaps]
    flag = "" if step.transactional else " transaction:false"
    lines.append(f"-- migrate:up{flag}")
    lines += [f"{statement};\n" for op in operations for statement in render.statements(op)]
    lines.append(f"-- migrate:down{flag}")
    lines += [f"{statement};\n" for op in order.down(operations) for statement in render.statements(op)]
    return "\n".join(lines).rstrip("\n") + "\n"


def _rewrites(op: ops.Operation) -> bool:
    return rewrites.why(op) is not None


# -- versions ------------------------------------------------------------------------------------------------


def existing_versions(store: state.Store, repo: model.Repo) -> list[str]:
    """Versions of the migrations already in the repo's two directories."""
    return sorted(version for directory in _files_by_version(store, repo) for version in directory)


def _files_by_version(store: state.Store, repo: model.Repo) -> list[dict[str, str]]:
    """version -> path of the repo's global migrations, then of its tenant migrations."""
    return [
        {m.group(1): name for name in store.read(path) if (m := _VERSION.match(name.rpartition("/")[2]))}
        for path in (repo.migrations_path, repo.tenant_migrations_path)
    ]


def _shared_databases(repos: Sequence[model.Repo], root: Path) -> list[list[model.Repo]]:
    """The groups of repos that share a database (by ``db.database_key``), each of two repos or more."""
    if len(repos) < 2:
        return []
    from orchestrator import db  # psycopg only when several repos could share a database

    groups: dict[str, list[model.Repo]] = {}
    for repo in repos:
        groups.setdefault(db.database_key(repo, root), []).append(repo)
    return [group for group in groups.values() if len(group) > 1]


def _taken(
    repo: model.Repo,
    shared: Sequence[Sequence[model.Repo]],
    stores: Callable[[model.Repo], state.Store],
    result: Plan,
) -> list[str]:
    """Versions a new migration of ``repo`` must be above: its own, those of the other repos on its database,
    and those this run already gave them."""
    peers = [p for group in shared if repo in group for p in group if p is not repo]
    taken = existing_versions(stores(repo), repo)
    for peer in peers:
        taken += existing_versions(stores(peer), peer)
    names = {p.name for p in peers}
    taken += [m.path.name[:14] for m in result.migrations if m.repo in names]
    return sorted(taken)


def _clashes(shared: Sequence[Sequence[model.Repo]], stores: Callable[[model.Repo], state.Store]) -> list[str]:
    """Warnings for versions two repos on one database both use already (files made before versions were
    shared, or by hand): only one of the two can ever be recorded in that database."""
    warnings = []
    for group in shared:
        files_of = {repo.name: _files_by_version(stores(repo), repo) for repo in group}
        for i, repo in enumerate(group):
            for other in group[i + 1 :]:
                for mine, theirs in zip(files_of[repo.name], files_of[other.name], strict=True):
                    warnings += [
                        f"{repo.name}: {mine[v]} and {theirs[v]} (repo {other.name}) have the same version and one "
                        "database: only one of them can be applied there; give the one not applied yet a new "
                        "version (rename it)"
                        for v in sorted(mine.keys() & theirs.keys())
                    ]
    return warnings


def _first_version(taken: Sequence[str], now: dt.datetime | None) -> str:
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%d%H%M%S")
    return stamp if not taken or stamp > taken[-1] else _next(taken[-1])


def _next(version: str) -> str:
    moment = dt.datetime.strptime(version, "%Y%m%d%H%M%S") + dt.timedelta(seconds=1)
    return moment.strftime("%Y%m%d%H%M%S")


# -- messages ------------------------------------------------------------------------------------------------


def _warnings(operations: Sequence[ops.Operation]) -> list[str]:
    created = {op.table for op in operations if isinstance(op, ops.CreateTable)}
    warnings = []
    for op in operations:
        if isinstance(op, ops.AddColumn) and op.table not in created:
            a = op.attribute
            if not a.allow_null and a.default_expression() is None and not a.generated:
                warnings.append(
                    f"column {op.table}.{a.name} is added NOT NULL without a default: this fails on a "
                    "table that has rows (add a default, or add it nullable, backfill, then NOT NULL)"
                )
        elif isinstance(op, ops.AlterType) and not _safe_cast(op.old, op.new):
            warnings.append(
                f"column {op.table}.{op.column}: {op.old} -> {op.new} casts every value "
                f"(USING {op.column}::{op.new}); the migration fails if a value does not convert"
            )
        elif isinstance(op, ops.AlterNull) and not op.allow_null:
            warnings.append(f"column {op.table}.{op.column} becomes NOT NULL: this fails if a row holds NULL")
    return warnings


def _safe_cast(old: str, new: str) -> bool:
    if not rewrites.type_change_rewrites(old, new):
        return True  # changed in place: PostgreSQL converts no value
    old_base, new_base = pgtypes.base_type(old), pgtypes.base_type(new)
    if old.endswith("[]") != new.endswith("[]"):
        return False
    if old_base == new_base:
        return _wider(old, new)
    return (old_base, new_base) in _SAFE_CASTS or (old_base == "varchar" and new == "varchar")


def _wider(old: str, new: str) -> bool:
    """varchar(10) -> varchar(20) or varchar, numeric(5,2) -> numeric(7,2): no value can fail to convert."""
    old_args, new_args = _args(old), _args(new)
    if not new_args:
        return True
    if not old_args or len(old_args) != len(new_args):
        return False
    if len(new_args) == 2:
        return new_args[1] == old_args[1] and new_args[0] >= old_args[0]
    return new_args[0] >= old_args[0]


def _args(type_: str) -> tuple[int, ...]:
    inside = type_.partition("(")[2].partition(")")[0]
    return tuple(int(x) for x in inside.split(",")) if inside else ()


def _breaks_tenant_keys(
    repo: model.Repo, operations: Sequence[ops.Operation], tenant_tables: Sequence[model.Table]
) -> list[str]:
    """Global changes that tenant foreign keys stand in the way of: global migrations run before tenant ones,
    so dropping or retyping what a tenant table references cannot be done in the same step."""
    blocked = []
    for op in operations:
        if isinstance(op, ops.DropTable | ops.AlterType):
            column = op.column if isinstance(op, ops.AlterType) else None
            for table in tenant_tables:
                for attribute in table.attributes:
                    reference = attribute.references
                    if (
                        reference
                        and (reference.schema, reference.table) == (op.ref.schema, op.ref.name)
                        and column in (None, reference.column)
                    ):
                        blocked.append(
                            f"{repo.name}: {op.describe()} — tenant foreign key {reference.name} "
                            f"({table.name}.{attribute.name}) depends on it; change the tenant table "
                            "first, generate and roll it out, then the global one"
                        )
    return blocked


def _breaks_tenant_table_keys(
    repo: model.Repo, operations: Sequence[ops.Operation], tenant_tables: Sequence[model.Table]
) -> list[str]:
    """``_breaks_tenant_keys`` for table-level (multi-column) foreign keys of tenant tables."""
    blocked = []
    for op in operations:
        if not isinstance(op, ops.DropTable | ops.AlterType):
            continue
        column = op.column if isinstance(op, ops.AlterType) else None
        for table in tenant_tables:
            for key in table.foreign_keys:
                if (key.schema, key.table) == (op.ref.schema, op.ref.name) and (
                    column is None or column in key.ref_columns
                ):
                    blocked.append(
                        f"{repo.name}: {op.describe()} — tenant foreign key {key.name} "
                        f"({table.name} ({', '.join(key.columns)})) depends on it; change the tenant table "
                        "first, generate and roll it out, then the global one"
                    )
    return blocked


def _blocking_refusal(blocking: list[str]) -> str:
    lines = ["refusing changes that rewrite a table; nothing was written:"]
    lines += [f"  {item}" for item in blocking]
    lines += [
        "Ways forward:",
        "  - a new type: add a new column of the new type, backfill it in batches and switch over to it (expand/"
        "contract), or choose a type PostgreSQL converts in place (varchar(n) widened, text, numeric precision "
        "widened);",
        "  - a volatile default (or identity, serial): add the column without it, then set the default or add the "
        "identity (new rows only) and backfill the existing rows in batches;",
        "  - accept the lock in a maintenance window: run again with --allow-blocking, or set allowBlocking: true "
        "on the Repo.",
    ]
    return "\n".join(lines)


def _refusal(refused: list[str]) -> str:
    lines = ["refusing destructive changes; nothing was written:"]
    lines += [f"  {item}" for item in refused]
    lines += [
        "Ways forward:",
        "  - a renamed table or column: add renamedFrom: <old name> to the resource or attribute;",
        "  - a real drop: run again with --allow-destructive, or set allowDestructive: true on the Repo.",
    ]
    return "\n".join(lines)
