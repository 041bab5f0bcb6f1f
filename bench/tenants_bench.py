"""Benchmark of tenant rollouts (``make bench``; not part of the tests).

On one PostgreSQL and in one run, over N tenant schemas (default 1,000) that are at the same first migration,
it times one new tenant migration — a nullable column, an index, and a new table with a foreign key to an
existing tenant table — applied by:

* ``orchestrator migrate --tenants``;
* django-tenants ``migrate_schemas`` with its ``standard`` and ``multiprocessing`` executors, on the same DDL
  (Django's own migration of the same change), installed in a separate virtualenv by this script;
* the floor: the same SQL (orchestrator's generated files: the index on the existing table is built
  ``CONCURRENTLY`` in a file of its own) in one ``psql -f`` script, one transaction per schema and file;

orchestrator and the floor run three times each, in turns, from fresh copies after a checkpoint, and their
medians are compared;

then the no-op (everything up to date) of orchestrator and django-tenants, and orchestrator's peak RSS at N
and at 5xN tenants. Every system starts from a copy of the same kind of database (``CREATE DATABASE …
TEMPLATE``), and every result is checked (each tenant really migrated). Ratios are computed in the same run.

Server: $ORCHESTRATOR_BENCH_DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/postgres.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import conninfo, sql

HERE = Path(__file__).resolve().parent
DJANGO_VENV = HERE / ".venv-django"
DJANGO_PINS = ["django==5.2.19", "django-tenants==4.0.1", "psycopg2-binary==2.9.13"]
RSS = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
    "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)

REPO = """apiVersion: orchestrator/v1
kind: Repo
metadata: {name: app}
spec:
  url: ${BENCH_URL}
  tenants: {query: "SELECT name FROM public.tenant_registry ORDER BY 1"}
  rollout: {concurrency: 4}
"""
PROJECT = """apiVersion: orchestrator/v1
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
TASK = """apiVersion: orchestrator/v1
kind: Resource
metadata: {name: task}
spec:
  repo: app
  table: tasks
  multitenancy: {strategy: context}
  attributes:
    - {name: id, type: bigint, primaryKey: true, generated: identity}
    - {name: project_id, type: bigint, allowNull: false, references: {resource: project, onDelete: cascade, index: true}}
    - {name: title, type: text, allowNull: false}
"""
TASK_V2 = (
    TASK
    + """    - {name: priority, type: integer}
  indexes:
    - {fields: [priority]}
"""
)
COMMENT = """apiVersion: orchestrator/v1
kind: Resource
metadata: {name: comment}
spec:
  repo: app
  table: comments
  multitenancy: {strategy: context}
  attributes:
    - {name: id, type: bigint, primaryKey: true, generated: identity}
    - {name: task_id, type: bigint, allowNull: false, references: {resource: task, onDelete: cascade, index: true}}
    - {name: body, type: text, allowNull: false}
"""


@dataclass
class Run:
    seconds: float
    rss_mb: float | None = None


class Server:
    def __init__(self, url: str) -> None:
        self.url = url

    def db_url(self, name: str) -> str:
        return conninfo.make_conninfo(self.url, dbname=name)

    def admin(self, statement: sql.SQL | sql.Composed) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(statement)

    def drop(self, name: str) -> None:
        self.admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def create(self, name: str, template: str | None = None) -> str:
        self.drop(name)
        if template:
            self.admin(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
        else:
            self.admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        # the copy wrote its WAL; a checkpoint now, so that flushing it does not land in the next timed run
        self.admin(sql.SQL("CHECKPOINT"))
        return self.db_url(name)


def tenants(count: int) -> list[str]:
    return [f"t{i:05d}" for i in range(count)]


def replicate(url: str, template: str, names: list[str]) -> None:
    """Copy schema ``template`` (structure and rows) to each of ``names``, via pg_dump and psql."""
    dump = subprocess.run(
        ["pg_dump", "--no-owner", "--no-privileges", "-n", template, url], check=True, capture_output=True, text=True
    ).stdout
    dump = "\n".join(
        line for line in dump.splitlines() if not line.startswith(("SET ", "SELECT pg_catalog.set_config"))
    )
    script = "".join(re.sub(rf"\b{template}\b", name, dump) + "\n" for name in names if name != template)
    subprocess.run(
        ["psql", "-q", "-v", "ON_ERROR_STOP=1", url], input=script, check=True, text=True, capture_output=True
    )


def timed(args: list[str], cwd: Path, env: dict[str, str], *, rss: bool = False) -> Run:
    command = [sys.executable, "-c", RSS, *args] if rss else args
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0 or (rss and not proc.stdout.strip().startswith("0 ")):
        sys.exit(f"{' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    rss_mb = int(proc.stdout.split()[-1]) / 1024 if rss else None
    return Run(seconds, rss_mb)


def check_migrated(url: str, names: list[str], table: str, column: str) -> None:
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = %s AND "
            "column_name = %s AND table_schema = ANY (%s)",
            (table, column, names),
        ).fetchone()
    if not found or found[0] != len(names):
        sys.exit(f"not every tenant was migrated: {found} of {len(names)}")


# -- orchestrator ------------------------------------------------------------------------------------------


def orchestrator_base(server: Server, work: Path, count: int, base: str) -> Path:
    """A database whose tenants are at the first migration, and a project whose second one is generated."""
    root = work / f"orchestrator-{count}"
    (root / "config").mkdir(parents=True)
    for name, text in (("repo", REPO), ("project", PROJECT), ("task", TASK)):
        (root / "config" / f"{name}.yaml").write_text(text)
    url = server.create(base)
    env = orchestrator_env(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE tenant_registry (name text PRIMARY KEY)")
        conn.execute("INSERT INTO tenant_registry VALUES ('t00000')")
        conn.execute("CREATE SCHEMA t00000")
    cli = [sys.executable, "-m", "orchestrator"]
    subprocess.run([*cli, "generate-migrations", "--name", "init"], cwd=root, env=env, check=True, capture_output=True)
    subprocess.run([*cli, "migrate", "--tenants"], cwd=root, env=env, check=True, capture_output=True)
    names = tenants(count)
    replicate(url, "t00000", names)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO tenant_registry SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING", (names,))
    (root / "config" / "task.yaml").write_text(TASK_V2)
    (root / "config" / "comment.yaml").write_text(COMMENT)
    subprocess.run(
        [*cli, "generate-migrations", "--name", "add_priority_comments"],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
    )
    return root


def orchestrator_env(url: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")} | {"BENCH_URL": url}


def floor_script(root: Path, names: list[str]) -> str:
    """The generated tenant change's up SQL (every file of it: the main migration, and since online-safe
    generation the ``_concurrently`` index build), once per schema: a transactional file as one transaction,
    a ``transaction:false`` one statement by statement, as dbmate or a hand-written script would run them."""
    parts = []
    for migration in sorted((root / "priv/app/tenant_migrations").glob("*_add_priority_comments*.sql")):
        rest = migration.read_text().split("-- migrate:up", 1)[1]
        flags, body = rest.split("\n", 1)
        up = body.split("-- migrate:down")[0].strip()
        parts.append((up, "transaction:false" in flags))
    script = []
    for name in names:
        for up, plain in parts:
            if plain:
                script.append(f'SET search_path TO "{name}", public;\n{up}\n')
            else:
                script.append(f'BEGIN;\nSET LOCAL search_path TO "{name}", public;\n{up}\nCOMMIT;\n')
    return "".join(script)


# -- django-tenants ----------------------------------------------------------------------------------------


def django_python() -> Path:
    python = DJANGO_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(DJANGO_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *DJANGO_PINS], check=True)
    return python


def django_env(server: Server, name: str) -> dict[str, str]:
    params = conninfo.conninfo_to_dict(server.url)
    return {k: v for k, v in os.environ.items() if not k.startswith(("ORCHESTRATOR_", "DJANGO_"))} | {
        "BENCH_DB_NAME": name,
        "BENCH_DB_USER": str(params.get("user") or "postgres"),
        "BENCH_DB_HOST": str(params.get("host") or "127.0.0.1"),
        "BENCH_DB_PORT": str(params.get("port") or 5432),
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def django_base(server: Server, work: Path, count: int, base: str) -> Path:
    """A django-tenants database whose tenants are at work 0001, and the project with 0002 in place."""
    project = work / "django"
    shutil.copytree(HERE / "django_project", project)
    second = next((project / "work/migrations").glob("0002_*.py"))
    held = second.read_text()
    second.unlink()
    python = str(django_python())
    server.create(base)
    env = django_env(server, base)
    manage = [python, "manage.py"]
    subprocess.run([*manage, "migrate_schemas", "--shared"], cwd=project, env=env, check=True, capture_output=True)
    create = (
        "from customers.models import Client; "
        "Client(schema_name='public', name='public').save(); Client(schema_name='t00000', name='t').save()"
    )
    subprocess.run([*manage, "shell", "-c", create], cwd=project, env=env, check=True, capture_output=True)
    names = tenants(count)
    url = server.db_url(base)
    replicate(url, "t00000", names)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO customers_client (schema_name, name) SELECT n, n FROM unnest(%s::text[]) n "
            "WHERE n <> 't00000'",
            (names,),
        )
    second.write_text(held)
    return project


# -- report ------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--rss-factor", type=int, default=5, help="peak RSS also at this many times --tenants")
    args = parser.parse_args()
    server = Server(os.environ.get("ORCHESTRATOR_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    work = Path(tempfile.mkdtemp(prefix="orchestrator-tenant-bench-"))
    names = tenants(args.tenants)
    cli = [sys.executable, "-m", "orchestrator"]
    results: dict[str, Run] = {}
    try:
        print(f"setting up {args.tenants} tenants for each system (not timed)...", file=sys.stderr)
        # byte-compiled as pip installs it (an editable checkout under PYTHONDONTWRITEBYTECODE never is: every
        # run would compile the package's source again, 0.1 s of the no-op)
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(HERE.parent / "orchestrator")], check=True)
        root = orchestrator_base(server, work, args.tenants, "bench_orch_base")
        script = work / "floor.sql"
        script.write_text(floor_script(root, names))
        # orchestrator and the floor in turns, each from a fresh copy after a checkpoint; the medians are
        # compared (one run of each swung by +-40 % on a shared 2-core machine)
        ours, floor, url = [], [], ""
        for _ in range(PAIRS):
            url = server.create("bench_orch_run", "bench_orch_base")
            ours.append(timed([*cli, "migrate", "--tenants"], root, orchestrator_env(url), rss=True))
            check_migrated(url, names, "tasks", "priority")
            floor_url = server.create("bench_floor_run", "bench_orch_base")
            floor.append(
                timed(["psql", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(script), floor_url], root, os.environ.copy())
            )
            check_migrated(floor_url, names, "tasks", "priority")
        results["orchestrator migrate --tenants"] = median_run(ours)
        results["orchestrator no-op"] = timed([*cli, "migrate", "--tenants"], root, orchestrator_env(url), rss=True)
        breakdown = noop_breakdown(cli, root, orchestrator_env(url))
        results["floor: psql -f, one transaction per schema"] = median_run(floor)
        print(
            "runs (s): orchestrator "
            + " ".join(f"{r.seconds:.2f}" for r in ours)
            + "; floor "
            + " ".join(f"{r.seconds:.2f}" for r in floor),
            file=sys.stderr,
        )

        project = django_base(server, work, args.tenants, "bench_dj_base")
        python = str(django_python())
        for executor in ("standard", "multiprocessing"):
            server.create("bench_dj_run", "bench_dj_base")
            env = django_env(server, "bench_dj_run")
            results[f"django-tenants migrate_schemas ({executor})"] = timed(
                [python, "manage.py", "migrate_schemas", "--executor", executor], project, env
            )
            check_migrated(server.db_url("bench_dj_run"), names, "work_task", "priority")
        results["django-tenants no-op (standard)"] = timed(
            [python, "manage.py", "migrate_schemas", "--executor", "standard"],
            project,
            django_env(server, "bench_dj_run"),
        )

        big = args.tenants * args.rss_factor
        if big > args.tenants:
            root_big = orchestrator_base(server, work, big, "bench_orch_big")
            results[f"orchestrator migrate --tenants ({big} tenants)"] = timed(
                [*cli, "migrate", "--tenants"], root_big, orchestrator_env(server.db_url("bench_orch_big")), rss=True
            )
            check_migrated(server.db_url("bench_orch_big"), tenants(big), "tasks", "priority")
    finally:
        for name in (
            "bench_orch_base",
            "bench_orch_run",
            "bench_floor_run",
            "bench_dj_base",
            "bench_dj_run",
            "bench_orch_big",
        ):
            server.drop(name)
        shutil.rmtree(work, ignore_errors=True)
    report(results, args.tenants, breakdown)


NOOP_RUNS = 7
PAIRS = 3
"""Timed runs of orchestrator and of the floor each, in turns (their medians are compared)."""


def median_run(runs: list[Run]) -> Run:
    """The run of median time (its peak RSS with it)."""
    return sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]


def noop_breakdown(cli: list[str], root: Path, env: dict[str, str]) -> dict[str, float]:
    """Where the no-op's time goes: the median of NOOP_RUNS runs of each step, each step including the ones
    before it (interpreter start, imports, loading the manifests, then the whole no-op with its queries)."""
    imports = "import orchestrator.cli, orchestrator.migrations.runner, orchestrator.migrations.rollout"
    steps = {
        "python start-up": [sys.executable, "-c", "pass"],
        "+ imports": [sys.executable, "-c", imports],
        "+ manifests loaded (validate)": [*cli, "validate"],
        "+ connect, queries, exit (no-op)": [*cli, "migrate", "--tenants"],
    }
    return {
        label: statistics.median(timed(args, root, env).seconds for _ in range(NOOP_RUNS))
        for label, args in steps.items()
    }


def report(results: dict[str, Run], count: int, breakdown: dict[str, float]) -> None:
    floor = results["floor: psql -f, one transaction per schema"].seconds
    standard = results["django-tenants migrate_schemas (standard)"].seconds
    ours = results["orchestrator migrate --tenants"].seconds
    noop = breakdown["+ connect, queries, exit (no-op)"]  # the median of several runs: less noise than one
    dj_noop = results["django-tenants no-op (standard)"].seconds
    print(f"\ntenant rollout benchmark: {count} tenants, one new tenant migration (wall clock, new process)")
    print(f"{'case':<52}{'seconds':>9}{'x floor':>9}{'peak RSS':>10}")
    for label, run in results.items():
        rss = f"{run.rss_mb:.0f} MB" if run.rss_mb is not None else ""
        print(f"{label:<52}{run.seconds:>9.2f}{run.seconds / floor:>9.2f}{rss:>10}")
    rss_values = [r.rss_mb for label, r in results.items() if r.rss_mb and "migrate --tenants" in label]
    goals = [
        (f"faster than django-tenants standard: {standard / ours:.1f}x", standard / ours >= 4, "goal >= 4x"),
        (f"orchestrator / psql floor: {ours / floor:.2f}x", ours / floor <= 1.2, "goal <= 1.2x"),
        (f"no-op over {count} tenants (median): {noop:.2f} s", noop < 0.5, "goal < 0.5 s"),
        (f"no-op faster than django-tenants' no-op: {dj_noop / noop:.0f}x", dj_noop / noop >= 20, "goal >= 20x"),
        (f"peak RSS: {', '.join(f'{v:.0f} MB' for v in rss_values)}", max(rss_values) < 150, "goal < 150 MB, flat"),
    ]
    print(f"\nwhere the no-op's time goes (median of {NOOP_RUNS} runs; each line includes the ones above)")
    previous = 0.0
    for label, seconds in breakdown.items():
        print(f"  {label:<40}{seconds:>7.3f} s  (+{seconds - previous:.3f})")
        previous = seconds
    print()
    for text, met, goal in goals:
        print(f"{'ok    ' if met else 'MISSED'} {text} ({goal})")


if __name__ == "__main__":
    main()
