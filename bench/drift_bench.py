"""Benchmark of ``orchestrator drift --tenants`` (``make bench``; not part of the tests).

On one PostgreSQL and in one run, with the example manifests (config/: three tenant tables with foreign keys to
a global table, checks, partial and expression indexes), over N and then 5xN tenant schemas (default 1,000 and
5,000) that are up to date, it times:

* ``orchestrator drift --tenants`` (reads every tenant's catalog and compares it with the model);
* ``orchestrator migrate --tenants`` with nothing to do (reads every tenant's applied versions): the floor
  drift is compared with, measured in the same run on the same database.

Each is run three times; the median is reported, with the ratio drift / no-op. The goal: drift over 1,000
tenants under 2 s. One tenant is migrated by ``migrate --tenants``; the others are copies of its schema (pg_dump),
so setting up 5,000 tenants takes seconds, and every drift run must find no drift (exit 0).

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
from pathlib import Path

import psycopg
from psycopg import conninfo, sql

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "config"
DATABASE = "bench_drift"
TEMPLATE = "org_t00000"
RUNS = 3


def create_database(server: str) -> str:
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    return conninfo.make_conninfo(server, dbname=DATABASE)


def env_for(url: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    return clean | {"APP_DATABASE_URL": url, "ANALYTICS_DATABASE_URL": url}


def cli(root: Path, url: str, *args: str, expect: int = 0) -> float:
    """Run the CLI; return its wall-clock seconds (exit code ``expect`` or the benchmark stops)."""
    command = [sys.executable, "-m", "orchestrator", *args, "--config", str(root / "config"), "--root", str(root)]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=root, env=env_for(url), capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != expect:
        sys.exit(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds


def set_up(root: Path, url: str) -> None:
    """The example config, its global migrations, and one tenant migrated by the CLI (the template)."""
    shutil.copytree(CONFIG, root / "config")
    cli(root, url, "generate-migrations")
    cli(root, url, "migrate")
    register(url, [TEMPLATE])
    cli(root, url, "migrate", "--tenants")


def register(url: str, schemas: list[str]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO public.organizations (slug, name) SELECT substr(s, 5), s FROM unnest(%s::text[]) AS s",
            (schemas,),
        )


def replicate(url: str, names: list[str]) -> None:
    """Copy the template tenant's schema (structure and schema_migrations rows) to each of ``names``."""
    dump = subprocess.run(
        ["pg_dump", "--no-owner", "--no-privileges", "-n", TEMPLATE, url], check=True, capture_output=True, text=True
    ).stdout
    dump = "\n".join(
        line for line in dump.splitlines() if not line.startswith(("SET ", "SELECT pg_catalog.set_config"))
    )
    script = "".join(re.sub(rf"\b{TEMPLATE}\b", name, dump) + "\n" for name in names)
    subprocess.run(
        ["psql", "-q", "-v", "ON_ERROR_STOP=1", url], input=script, check=True, text=True, capture_output=True
    )
    register(url, names)


def median_of(root: Path, url: str, *args: str) -> float:
    return statistics.median(cli(root, url, *args) for _ in range(RUNS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--factor", type=int, default=5, help="also at this many times --tenants")
    args = parser.parse_args()
    server = os.environ.get("ORCHESTRATOR_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    work = Path(tempfile.mkdtemp(prefix="orchestrator-drift-bench-"))
    url = create_database(server)
    rows = []
    try:
        set_up(work, url)
        have = 1
        for count in (args.tenants, args.tenants * args.factor):
            print(f"setting up {count} tenants (not timed)...", file=sys.stderr)
            replicate(url, [f"org_t{i:05d}" for i in range(have, count)])
            have = count
            noop = median_of(work, url, "migrate", "--tenants")
            drift = median_of(work, url, "drift", "--tenants")
            rows.append((count, drift, noop))
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE)))
        shutil.rmtree(work, ignore_errors=True)
    print(f"drift --tenants against a no-op migrate --tenants (median of {RUNS} runs, example config)")
    print(f"{'tenants':>8}  {'drift s':>8}  {'no-op s':>8}  {'ratio':>6}")
    for count, drift, noop in rows:
        print(f"{count:>8}  {drift:>8.2f}  {noop:>8.2f}  {drift / noop:>6.2f}")
    first = rows[0]
    verdict = "met" if first[1] < 2.0 else "NOT met"
    print(f"goal: drift over {first[0]} tenants under 2 s: {verdict} ({first[1]:.2f} s)")


if __name__ == "__main__":
    main()
