"""A project with a global tenant registry and many tenants, and the consistency check the fault tests share.

The manifests come in two generations (a second one adds a column, an index and a table), so a tenant can be
at no version, at the first, or at the second; a hand-written backfill migration can be added to make each
tenant's rollout take a chosen time, which is what lets a test land a crash inside a rollout.

``Project.check`` is the promise of the fault tests, read from the live database only, in one snapshot:
every tenant's applied versions are a prefix of the migration files, ``schema_migrations`` holds exactly one
row per version, and every tenant schema (and ``public``) matches the model of the generation its versions
say it is at, compared against ``pg_catalog`` by ``tests.catalog``. A half-applied migration fails it.
"""

from __future__ import annotations

import datetime
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from orchestrator import config, model
from orchestrator.migrations import bulk
from tests import catalog
from tests.conftest import Result, run_cli, start_cli, write

REPO = """apiVersion: orchestrator/v1
kind: Repo
metadata: {name: app}
spec:
  url: ${APP_URL}
  tenants: {query: "SELECT slug FROM public.organizations ORDER BY 1", createSchemas: true}
  rollout: {concurrency: 4}
  timeouts: {lockTimeout: 2s, lockWait: 60s}
  retry: {attempts: 20, initialDelay: 50ms, maxDelay: 1s}
"""
ORGANIZATIONS = """apiVersion: orchestrator/v1
kind: Resource
metadata: {name: organization}
spec:
  repo: app
  table: organizations
  attributes:
    - {name: slug, type: text, primaryKey: true}
    - {name: created_at, type: timestamptz, allowNull: false, defaultSql: now()}
"""
PROJECTS = """apiVersion: orchestrator/v1
kind: Resource
metadata: {name: project}
spec:
  repo: app
  table: projects
  multitenancy: {strategy: context}
  attributes:
    - {name: id, type: bigint, primaryKey: true, generated: identity}
    - {name: name, type: text, allowNull: false}
"""
TASKS = """apiVersion: orchestrator/v1
kind: Resource
metadata: {name: task}
spec:
  repo: app
  table: tasks
  multitenancy: {strategy: context}
  attributes:
    - {name: id, type: bigint, primaryKey: true, generated: identity}
    - {name: project_id, type: bigint, allowNull: false, references: {resource: project, onDelete: cascade}}
    - {name: title, type: text, allowNull: false}
    - {name: done, type: boolean, allowNull: false, default: false}
"""
SECOND = """    - {name: priority, type: integer, allowNull: false, default: 0}
  indexes:
    - {fields: [project_id, done]}
  checkConstraints:
    - {name: priority_range, check: "priority BETWEEN 0 AND 5"}
"""
COMMENTS = """apiVersion: orchestrator/v1
kind: Resource
metadata: {name: comment}
spec:
  repo: app
  table: comments
  multitenancy: {strategy: context}
  attributes:
    - {name: id, type: uuid, primaryKey: true, defaultSql: gen_random_uuid()}
    - {name: task_id, type: bigint, allowNull: false, references: {resource: task, onDelete: cascade}}
    - {name: body, type: text, allowNull: false}
"""
GENERATIONS = {
    1: {"repo.yaml": REPO, "organizations.yaml": ORGANIZATIONS, "projects.yaml": PROJECTS, "tasks.yaml": TASKS},
    2: {
        "repo.yaml": REPO,
        "organizations.yaml": ORGANIZATIONS,
        "projects.yaml": PROJECTS,
        "tasks.yaml": TASKS + SECOND,
        "comments.yaml": COMMENTS,
    },
}


def names(count: int) -> list[str]:
    return [f"org_{i:04d}" for i in range(count)]


@dataclass
class Checked:
    """What one consistency check saw: tenants per number of applied tenant migrations."""

    tenants: int
    at: dict[int, int]

    @property
    def finished(self) -> int:
        return self.at.get(max(self.at), 0) if self.at else 0


class Project:
    def __init__(self, root: Path, url: str) -> None:
        self.root, self.url = root, url
        self.models: dict[int, model.Config] = {}
        for generation, manifests in GENERATIONS.items():
            for name, text in manifests.items():
                write(root / "models" / str(generation) / name, text)
            self.models[generation] = config.load(root / "models" / str(generation), base=root)
        self.generations: list[int] = []  # the generation each tenant migration file brings the schema to
        self.pending: list[frozenset[str]] = []  # per file: what later steps of its generation build or validate

    # -- setting up ----------------------------------------------------------------------------------------

    def generate(self, generation: int) -> None:
        """Put the manifests of ``generation`` in config/ and generate its migrations."""
        shutil.rmtree(self.root / "config", ignore_errors=True)
        shutil.copytree(self.root / "models" / str(generation), self.root / "config")
        before = len(self.tenant_versions())
        result = self.cli("generate-migrations", "--name", f"generation_{generation}")
        assert result.code == 0, result.err
        self.generations += [generation] * (len(self.tenant_versions()) - before)
        # an online change is several files, and a transaction:false one is not atomic: until the last one is
        # recorded, the indexes and constraints later steps build or validate may be in any state
        touched = [_unsettled(p.read_text()) for p in self.tenant_files()]
        self.pending += [frozenset().union(*touched[i + 1 :]) for i in range(before, len(touched))]

    def add_backfill(self, seconds: float) -> None:
        """A hand-written tenant data migration that takes ``seconds`` per tenant (a slow backfill)."""
        version = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)).strftime("%Y%m%d%H%M%S")
        write(
            self.root / "priv/app/tenant_migrations" / f"{version}_backfill.sql",
            f"-- migrate:up\nUPDATE tasks SET priority = 1 WHERE done;\nSELECT pg_sleep({seconds});\n"
            "-- migrate:down\nUPDATE tasks SET priority = 0;\n",
        )
        self.generations.append(self.generations[-1])
        self.pending.append(frozenset())

    def register(self, tenants: list[str]) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn, conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO public.organizations (slug) VALUES (%s) ON CONFLICT DO NOTHING",
                [(t,) for t in tenants],
            )

    # -- running the orchestrator --------------------------------------------------------------------------

    def env(self, url: str | None = None) -> dict[str, str]:
        return {"APP_URL": url or self.url}

    def cli(self, *args: str, url: str | None = None, timeout: float = 120) -> Result:
        return run_cli(*args, cwd=self.root, env=self.env(url), timeout=timeout)

    def popen(self, *args: str, url: str | None = None) -> subprocess.Popen[str]:
        """Start the CLI in the background; its stderr goes to ``stderr.log`` (see ``logged``)."""
        env = self.env(url) | {"PYTHONFAULTHANDLER": "1"}  # a hung process can be made to show its stacks
        with (self.root / "stderr.log").open("a") as log:
            return start_cli(*args, cwd=self.root, env=env, stdout=subprocess.DEVNULL, stderr=log)

    def logged(self) -> str:
        """What the background processes wrote to stderr so far."""
        path = self.root / "stderr.log"
        return path.read_text() if path.exists() else ""

    # -- reading the outcome -------------------------------------------------------------------------------

    def tenant_files(self) -> list[Path]:
        return sorted((self.root / "priv/app/tenant_migrations").glob("*.sql"))

    def tenant_versions(self) -> list[int]:
        return [int(p.name.split("_")[0]) for p in self.tenant_files()]

    def global_versions(self) -> list[int]:
        return sorted(int(p.name.split("_")[0]) for p in (self.root / "priv/app/migrations").glob("*.sql"))

    def check(self, tenants: list[str], *, finished: bool = False) -> Checked:
        """Fail unless every tenant is whole at the version it records; with ``finished``, at the latest."""
        versions = self.tenant_versions()
        at: dict[int, int] = {}
        with psycopg.connect(self.url) as conn:
            # One snapshot for every read: a rollout may still be running (a PostgreSQL restart does not stop it)
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            assert _rows(conn, "public") == self.global_versions(), "public.schema_migrations"
            catalog.assert_matches(conn, self._tables(2, tenant=False), "public", only=False)
            states = bulk.states(conn, tenants)
            for tenant in tenants:
                rows = _rows(conn, tenant) if states[tenant].has_table else []
                applied = sorted(states[tenant].applied)
                assert rows == applied, f"{tenant}: schema_migrations holds {rows}: a version recorded twice"
                assert applied == versions[: len(applied)], f"{tenant}: applied {applied}, not a prefix of {versions}"
                generation = self.generations[len(applied) - 1] if applied else 0
                pending = self.pending[len(applied) - 1] if applied else frozenset()
                catalog.assert_matches(conn, self._tables(generation, tenant=True), tenant, unsettled=pending)
                at[len(applied)] = at.get(len(applied), 0) + 1
        if finished:
            assert at == {len(versions): len(tenants)}, f"tenants per number of applied migrations: {at}"
            with psycopg.connect(self.url) as conn:
                assert catalog.unfinished(conn, ["public", *tenants]) == []
        return Checked(len(tenants), at)

    def _tables(self, generation: int, *, tenant: bool) -> list[model.Table]:
        if generation == 0:
            return []
        return [t for t in self.models[generation].tables_of("app") if t.is_tenant == tenant]


_ONLINE_STEP = re.compile(r'^CREATE (?:UNIQUE )?INDEX CONCURRENTLY "(\w+)"|VALIDATE CONSTRAINT "(\w+)"', re.M)


def _unsettled(text: str) -> frozenset[str]:
    """The indexes a migration builds concurrently and the constraints it validates (its up section)."""
    up = text.partition("-- migrate:down")[0]
    return frozenset(name for match in _ONLINE_STEP.findall(up) for name in match if name)


def _rows(conn: psycopg.Connection[Any], schema: str) -> list[int]:
    """Every row's version, duplicates included, in order."""
    query = sql.SQL("SELECT version FROM {} ORDER BY version").format(sql.Identifier(schema, "schema_migrations"))
    return [int(r[0]) for r in conn.execute(query).fetchall()]
