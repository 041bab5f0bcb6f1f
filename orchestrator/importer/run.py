"""``orchestrator import``: read the repo's database, write one manifest per table, then the baseline.

Which tables: every table of every schema of the database except PostgreSQL's own, the ``orchestrator``
bookkeeping schema and the tenant schemas the repo's source lists, which are represented by one of them, the
template (``--tenant-template``, default the first tenant listed): its tables become per-tenant (context)
resources. ``schema_migrations`` tables are bookkeeping, never imported.

Never overwriting: a table the config already defines is skipped (listed), and if a file the import would
write already exists the whole import is refused before anything is written. The documents are validated
together with the existing config before the first file is written, so a failed import leaves no trace.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from orchestrator import config, db, model, tenants
from orchestrator.catalog import read
from orchestrator.errors import BadInputError, ConfigError, Problem, display_path
from orchestrator.importer import baseline, inspect, manifest, yamlout
from orchestrator.importer.inspect import Unsupported
from orchestrator.manifests import build, loader

SCHEMA_URL = "https://orchestrator.dev/schemas/resource.schema.json"


@dataclass(frozen=True)
class Options:
    repo: str
    config_dir: Path
    root: Path
    out: Path | None = None
    template: str | None = None
    state_kind: str = "files"
    now: dt.datetime | None = None


@dataclass
class Imported:
    """One table written as a manifest."""

    key: str
    resource: str
    path: Path


@dataclass
class Report:
    repo: str
    database: str
    template: str | None = None
    written: list[Imported] = field(default_factory=list)
    already_defined: list[tuple[str, str]] = field(default_factory=list)
    """(table key, resource) of tables the config defines: skipped."""
    unsupported: list[Unsupported] = field(default_factory=list)
    extensions: list[str] = field(default_factory=list)
    migrations: list[Path] = field(default_factory=list)
    baseline_note: str | None = None
    tenants: baseline.TenantCheck = field(default_factory=baseline.TenantCheck)

    @property
    def exit_code(self) -> int:
        return 1 if self.tenants.differing else 0

    def as_dict(self, root: Path) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "database": self.database,
            "template": self.template,
            "written": [
                {"table": i.key, "resource": i.resource, "path": display_path(i.path, root)} for i in self.written
            ],
            "alreadyDefined": [{"table": k, "resource": r} for k, r in self.already_defined],
            "unsupported": [u.as_dict() for u in self.unsupported],
            "extensions": self.extensions,
            "baseline": {
                "migrations": [display_path(p, root) for p in self.migrations],
                "note": self.baseline_note,
                "tenantsRecorded": self.tenants.matching,
                "tenantsBehind": self.tenants.behind,
                "tenantsDiffering": self.tenants.differing,
            },
        }


def run(options: Options) -> Report:
    """Import the repo's database; raise ``BadInputError`` (nothing written) when it cannot be done cleanly."""
    cfg = config.load(options.config_dir)
    repo = cfg.repo(options.repo)
    if repo is None:
        raise BadInputError(f"unknown repo {options.repo!r} (known: {', '.join(r.name for r in cfg.repos)})")
    _check_nothing_pending(cfg, options)
    out = options.out or _config_dir_of(repo, options.config_dir)
    with db.connect(repo, options.root) as conn:
        return _Import(cfg, repo, options, out, conn).run()


def _config_dir_of(repo: model.Repo, config_dir: Path) -> Path:
    """The directory holding the Repo manifest."""
    source = Path(repo.source.file)
    candidates = [source, config_dir / source, Path.cwd() / source]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve().parent
    return config_dir


def _check_nothing_pending(cfg: model.Config, options: Options) -> None:
    from orchestrator.generator import generate

    plan = generate.run(cfg, options.root, state_kind=options.state_kind, repo=options.repo, write=False)
    if not plan.empty:
        raise BadInputError(
            f"repo {options.repo!r} has manifest changes that are not generated yet; run generate-migrations "
            "(and migrate) first, so the baseline holds only the imported tables"
        )


class _Import:
    def __init__(
        self, cfg: model.Config, repo: model.Repo, options: Options, out: Path, conn: psycopg.Connection[Any]
    ) -> None:
        self.cfg = cfg
        self.repo = repo
        self.options = options
        self.out = out
        self.conn = conn
        info = conn.info
        self.report = Report(repo.name, info.dbname)
        self.tenants: list[str] = []
        self.targets: dict[tuple[str, str], manifest.Target] = {}

    def run(self) -> Report:
        schemas = self._schemas()
        catalog = read.read_schemas(self.conn, schemas)
        extras = inspect.read_extras(self.conn, schemas)
        self.report.extensions = [e for e in inspect.extensions(self.conn) if e not in self.repo.extensions]
        self.report.unsupported += extras.unsupported
        chosen = self._choose(catalog, extras)
        texts = self._settle(chosen, extras)
        for imported, text in zip(self.report.written, texts, strict=True):
            imported.path.parent.mkdir(parents=True, exist_ok=True)
            imported.path.write_text(text)
        if self.report.written:
            self._baseline(catalog)
        return self.report

    # -- what to read ----------------------------------------------------------------------------------------

    def _schemas(self) -> list[str]:
        existing = inspect.list_schemas(self.conn)
        template = self.options.template
        if self.repo.tenants is not None:
            listed = tenants.list_tenants(self.repo, self.conn)
            self.tenants = [t for t in listed.tenants if t in existing]
            template = template or (self.tenants[0] if self.tenants else None)
        elif template is not None:
            raise BadInputError(f"repo {self.repo.name!r} has no tenants source, so --tenant-template has no use")
        if template is not None and template not in existing:
            raise BadInputError(f"--tenant-template {template!r}: no such schema in database {self.report.database}")
        if template is not None and template not in self.tenants:
            self.tenants.insert(0, template)
        self.report.template = template
        excluded = {inspect.BOOKKEEPING_SCHEMA, *self.tenants}
        return [s for s in existing if s not in excluded] + ([template] if template else [])

    def _choose(
        self, catalog: dict[str, dict[str, read.CatalogTable]], extras: inspect.Extras
    ) -> list[tuple[read.CatalogTable, str]]:
        """Pick the tables to import, with their resource names; fill in every reference target."""
        template = self.report.template
        defined = {
            (t.schema or template, t.name): t
            for t in self.cfg.tables_of(self.repo.name)
            if t.schema or template  # a tenant table with no template to compare it with is not in the way
        }
        names = {t.resource for t in self.cfg.tables}
        for (schema, name), t in defined.items():
            self.targets[(str(schema), name)] = manifest.Target(t.resource, t.primary_key, t.is_tenant)
        chosen = []
        for schema in sorted(catalog, key=lambda s: (s == template, s != "public", s)):
            for name, table in sorted(catalog[schema].items()):
                key = (schema, name)
                if name in baseline.SKIPPED_TABLES or key in extras.skipped_tables:
                    continue
                if key in defined:
                    self.report.already_defined.append((self._key(table), defined[key].resource))
                    continue
                why = manifest.importable(table)
                if why:
                    self.report.unsupported.append(Unsupported("table", schema, name, f"not imported: {why}", name))
                    continue
                resource = self._resource_name(table, names)
                names.add(resource)
                pk = table.primary_key.columns if table.primary_key else ()
                self.targets[key] = manifest.Target(resource, pk, schema == template)
                chosen.append((table, resource))
        return chosen

    def _key(self, table: read.CatalogTable) -> str:
        return f"tenants.{table.name}" if table.schema == self.report.template else f"{table.schema}.{table.name}"

    def _resource_name(self, table: read.CatalogTable, taken: set[str]) -> str:
        if table.schema == self.report.template:
            base = table.name if table.name not in taken else f"tenant_{table.name}"
        else:
            base = table.name if table.schema == "public" else f"{table.schema}_{table.name}"
        return manifest.unique_name(base, taken)

    # -- writing ---------------------------------------------------------------------------------------------

    def _settle(self, chosen: list[tuple[read.CatalogTable, str]], extras: inspect.Extras) -> list[str]:
        """Build, render and validate the documents. A table whose own document does not validate (a default
        name the format derives would be over 63 bytes, ...) is left out and listed with the reason; the others
        are built again, so a key that referenced it is listed as not imported instead of written broken.
        Problems in the existing config still stop the import."""
        while True:
            self.report.written = []
            built = self._build(chosen, extras)
            texts = self._render([table for table, _ in chosen], built)
            problems = self._problems(texts)
            if not problems:
                break
            files = {display_path(i.path, self.options.root): i for i in self.report.written}
            if any(p.file not in files for p in problems):
                raise ConfigError(problems)
            failed = {files[p.file].key: p for p in reversed(problems)}
            kept = []
            for table, resource in chosen:
                problem = failed.get(self._key(table))
                if problem is None:
                    kept.append((table, resource))
                    continue
                del self.targets[(table.schema, table.name)]
                why = f"not imported: {problem.field}: {problem.message}" if problem.field else problem.message
                self.report.unsupported.append(Unsupported("table", table.schema, table.name, why, table.name))
            chosen = kept
        for result in built:
            self.report.unsupported += result.notes
        taken = [i.path for i in self.report.written if i.path.exists()]
        if taken:
            shown = ", ".join(display_path(p, self.options.root) for p in taken)
            raise BadInputError(f"import would overwrite {shown}; nothing was written (move them away first)")
        return texts

    def _build(self, chosen: list[tuple[read.CatalogTable, str]], extras: inspect.Extras) -> list[manifest.Built]:
        ctx = manifest.Context(self.repo.name, self.report.template, self.targets, extras)
        built = []
        for table, resource in chosen:
            result = manifest.document(table, resource, ctx)
            self.report.written.append(Imported(self._key(table), resource, self.out / self._file_name(table)))
            built.append(result)
        return built

    def _file_name(self, table: read.CatalogTable) -> str:
        if table.schema == self.report.template:
            return f"tenant.{table.name}.yaml"
        return f"{table.name}.yaml" if table.schema == "public" else f"{table.schema}.{table.name}.yaml"

    def _render(self, tables: list[read.CatalogTable], built: list[manifest.Built]) -> list[str]:
        now = (self.options.now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d %H:%M UTC")
        texts = []
        for imported, table, result in zip(self.report.written, tables, built, strict=True):
            own = [u for u in self.report.unsupported if (u.schema, u.table) == (table.schema, table.name)]
            texts.append(yamlout.dump(result.document, self._header(imported, result, own, now)))
        return texts

    def _header(self, imported: Imported, result: manifest.Built, own: list[Unsupported], now: str) -> list[str]:
        spec = result.document["spec"]
        where = (
            f"tenant schema {self.report.template} (the template; one copy per tenant schema)"
            if "multitenancy" in spec
            else f"schema {spec.get('schema', 'public')}"
        )
        lines = [
            f"yaml-language-server: $schema={self._schema_ref(imported.path)}",
            f"Imported by `orchestrator import` from database {self.report.database}, {where}, on {now}.",
        ]
        notes = own + result.notes  # everything about the table that was not imported
        if notes:
            lines.append("Not expressible in a manifest, so not imported (see the import's output):")
            lines += [f"  - {note}" for note in notes]
        return lines

    def _schema_ref(self, path: Path) -> str:
        local = (self.options.root / "schemas" / "resource.schema.json").resolve()
        if not local.is_file():
            return SCHEMA_URL
        return Path(os.path.relpath(local, path.parent.resolve())).as_posix()

    def _problems(self, texts: list[str]) -> list[Problem]:
        """Build the existing config plus the new documents; return the problems found."""
        documents: list[loader.Document] = []
        problems = []
        for path in loader.find_files(self.options.config_dir):
            docs, found = loader.load_file(path)
            documents += docs
            problems += found
        for imported, text in zip(self.report.written, texts, strict=True):
            docs, found = loader.load_text(text, display_path(imported.path, self.options.root))
            documents += docs
            problems += found
        _, found = build.build(documents)
        return problems + found

    # -- baseline --------------------------------------------------------------------------------------------

    def _baseline(self, catalog: dict[str, dict[str, read.CatalogTable]]) -> None:
        from orchestrator.generator import generate

        config_dir = self.options.config_dir.resolve()
        if not self.out.resolve().is_relative_to(config_dir):
            self.report.baseline_note = (
                f"the manifests were written outside the config directory {self.options.config_dir}: no baseline; "
                "move them in, then run generate-migrations and record the baseline by hand"
            )
            return
        cfg = config.load(self.options.config_dir)
        plan = generate.run(
            cfg,
            self.options.root,
            state_kind=self.options.state_kind,
            repo=self.repo.name,
            name=baseline.BASELINE_NAME,
            now=self.options.now,
        )
        self.report.migrations = [m.path for m in plan.migrations]
        global_files = baseline.parse((m.path, m.text) for m in plan.migrations if m.scope == "global")
        tenant_files = baseline.parse((m.path, m.text) for m in plan.migrations if m.scope == "tenant")
        template = self.report.template
        check = baseline.TenantCheck()
        if template is not None and tenant_files:
            check = baseline.check_tenants(self.conn, template, catalog.get(template, {}), self.tenants)
        self.report.tenants = check
        baseline.record(self.conn, global_files, tenant_files, check.matching if tenant_files else [])
