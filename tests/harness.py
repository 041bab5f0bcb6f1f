"""A project on disk plus a real database, driven step by step: edit manifests, generate, apply up, check the
live catalog against the manifests; undo applies the down and checks the catalog against the previous step.

Migrations are applied here with the migration file parser only (global ones in ``public``, tenant ones with
``search_path`` set to the tenant schema ``t1``), so generator tests do not depend on the runner.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from orchestrator import config, model, state
from orchestrator.generator import generate, render, rewrites
from orchestrator.generator.operations import AddPrimaryKey as AddKey
from orchestrator.migrations import files
from tests import catalog, squawk
from tests.conftest import write

TENANT = "t1"
_KEY_RULES = frozenset({"constraint-missing-not-valid", "adding-not-nullable-field"})


def repo_yaml(extra: str = "") -> str:
    return (
        "apiVersion: orchestrator/v1\nkind: Repo\nmetadata: {name: app}\n"
        f"spec:\n  tenants: {{static: [{TENANT}]}}\n{extra}"
    )


def res(name: str, table: str, attributes: str, extra: str = "") -> str:
    """A Resource document; ``attributes`` and ``extra`` are YAML lines indented by two spaces."""
    return (
        f"apiVersion: orchestrator/v1\nkind: Resource\nmetadata: {{name: {name}}}\nspec:\n  repo: app\n"
        f"  table: {table}\n{extra}  attributes:\n{attributes}"
    )


@dataclass
class Project:
    root: Path
    url: str
    state_kind: str = "files"
    history: list[tuple[model.Config, list[generate.Migration]]] = field(default_factory=list)
    clock: dt.datetime = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def __post_init__(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(TENANT)))

    def configure(self, *resources: str, repo_extra: str = "") -> model.Config:
        directory = self.root / "config"
        shutil.rmtree(directory, ignore_errors=True)
        write(directory / "repo.yaml", repo_yaml(repo_extra))
        for i, text in enumerate(resources):
            write(directory / f"r{i}.yaml", text)
        return config.load(directory, base=self.root)

    def make(
        self, cfg: model.Config, *, allow_destructive: bool = False, allow_blocking: bool = False, name: str = "step"
    ) -> generate.Plan:
        self.clock += dt.timedelta(minutes=1)
        store = self.store(cfg)
        with store.generating():
            plan = generate.plan(
                cfg,
                lambda _: store,
                allow_destructive=allow_destructive,
                allow_blocking=allow_blocking,
                name=name,
                now=self.clock,
            )
            plan.write(store)
        self.lint(plan, allow_blocking=allow_blocking, online=cfg.repos[0].online_safe)
        return plan

    def lint(self, plan: generate.Plan, *, allow_blocking: bool, online: bool) -> None:
        """squawk, the external oracle, over every generated up-migration: no blocking finding (a repo with
        ``onlineSafe: false`` asked for the plain forms and is not linted).

        squawk flags every type change (``changing-column-type``). One that gets here is either made in place
        (``rewrites`` says so, checked against the live server in ``test_rewrites``) or a rewrite the test
        allowed (without ``allow_blocking`` the generator refuses it): those findings are checked that way.

        A new primary key on an existing table is the one plain form left (``ADD PRIMARY KEY`` builds its index
        and sets NOT NULL under ACCESS EXCLUSIVE; the header says so): its two findings are expected.
        """
        if not online:  # onlineSafe: false asks for the plain forms
            return
        for migration in plan.migrations:
            found = squawk.blocking(squawk.lint(migration.path, text=migration.text))
            if allow_blocking or not any(rewrites.why(op) for op in migration.operations):
                found = [f for f in found if f.rule != "changing-column-type"]
            keyed = [render.name(op.ref).as_string(None) for op in migration.operations if isinstance(op, AddKey)]
            lines = migration.text.splitlines()
            found = [
                f
                for f in found
                if not (f.rule in _KEY_RULES and any(f"ALTER TABLE {t} " in lines[f.line - 1] for t in keyed))
            ]
            assert found == [], "squawk:\n" + squawk.describe(migration.path, found, migration.text)

    def store(self, cfg: model.Config) -> state.Store:
        """Files under the project root, or the database (the repo's URL is this project's database)."""
        repo = dataclasses.replace(cfg.repos[0], url=self.url)
        return state.store(self.state_kind, repo, self.root)

    def step(
        self, *resources: str, repo_extra: str = "", allow_destructive: bool = False, allow_blocking: bool = False
    ) -> generate.Plan:
        """Configure, generate, apply up, and check the catalog; return the plan."""
        cfg = self.configure(*resources, repo_extra=repo_extra)
        plan = self.make(cfg, allow_destructive=allow_destructive, allow_blocking=allow_blocking)
        self.apply(plan.migrations, "up")
        self.check(cfg)
        self.history.append((cfg, plan.migrations))
        return plan

    def undo(self) -> None:
        """Apply the last step's down migrations and check the catalog is the previous step's again."""
        _, migrations = self.history.pop()
        self.apply(list(reversed(migrations)), "down")
        if self.history:
            self.check(self.history[-1][0])
        else:
            self.check(model.Config((), ()))

    def apply(self, migrations: list[generate.Migration], direction: str) -> None:
        for migration in migrations:
            parsed = files.parse(migration.path, migration.text)
            section = parsed.up if direction == "up" else parsed.down
            self.run(section, tenant=migration.scope == "tenant")

    def run(self, section: files.Section, *, tenant: bool) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            if tenant:
                conn.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(TENANT)))
            if section.transaction:
                with conn.transaction():
                    for statement in section.statements:
                        conn.execute(statement.encode())
            else:
                for statement in section.statements:
                    conn.execute(statement.encode())

    def check(self, cfg: model.Config) -> None:
        with psycopg.connect(self.url) as conn:
            schemas = {t.schema for t in cfg.tables if t.schema} | {"public"}
            for schema in sorted(schemas):
                catalog.assert_matches(conn, [t for t in cfg.tables if t.schema == schema], schema)
            catalog.assert_matches(conn, [t for t in cfg.tables if t.is_tenant], TENANT)
            assert catalog.unfinished(conn, [*sorted(schemas), TENANT]) == []

    def storage(self) -> dict[int, tuple[str, int]]:
        """Every user table: oid -> (schema.name, relfilenode). A rewrite gives the table a new relfilenode."""
        with psycopg.connect(self.url) as conn:
            rows = conn.execute(
                "SELECT c.oid, n.nspname || '.' || c.relname, c.relfilenode FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' "
                "AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            ).fetchall()
        return {oid: (name, node) for oid, name, node in rows}

    def query(self, text: str, *params: object) -> list[tuple[object, ...]]:
        with psycopg.connect(self.url) as conn:
            return conn.execute(text.encode(), params or None).fetchall()

    def execute(self, text: str) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(text.encode())
