"""Write-stall benchmark (``make bench``; not part of the tests): how long the application waits while a
migration changes a big table that is in use.

A correct migration can still take an application down: ``SET NOT NULL``, a validated foreign key or check, or a
plain ``CREATE INDEX`` on a table with millions of rows holds a lock that queues every write (and with ACCESS
EXCLUSIVE every read) for the whole scan or build. What the application sees is the latency of its own
statements, so that is what this measures: a writer thread on its own connection inserting and updating single
rows of ``users`` (N rows, default 2,000,000) in a tight loop, autocommit, every statement timed, while one
evolution of the table runs — the email column becomes NOT NULL, the existing nullable ``org_id`` gets its
foreign key to ``orgs`` and an index, a unique identity on ``handle``, a check on ``age`` and an index on
``created_at``. Two runs, each on a fresh database loaded with the same rows (``INSERT … SELECT
generate_series``, then ``VACUUM ANALYZE``), the base schema being orchestrator's first migration in both:

* (a) the baseline, measured in the same run: the evolution as plain DDL in one transaction;
* (b) orchestrator: the v2 manifests, ``generate-migrations``, then ``orchestrator migrate`` timed as a
  subprocess (its start-up included).

For each run: the DDL's duration and, over the writer statements that overlap it, the worst latency and the
p99; the same before the DDL (the writer alone: the floor). Goal: worst(b) / worst(a) <= 5 %, i.e. the
online-safe forms (NOT VALID then VALIDATE, NOT NULL through a validated check, CONCURRENTLY) leave the
application at most a twentieth of the stall. Both runs must end with the same schema (checked).

Server: ``--url``, else $ORCHESTRATOR_TEST_DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/postgres;
scratch databases ``stall_bench_a`` and ``stall_bench_b`` are created and dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo, sql

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ORGS = 1000

REPO = """apiVersion: orchestrator/v1
kind: Repo
metadata: {name: app}
spec:
  url: ${BENCH_URL}
"""
ORG = """apiVersion: orchestrator/v1
kind: Resource
metadata: {name: org}
spec:
  repo: app
  table: orgs
  attributes:
    - {name: id, type: bigint, primaryKey: true}
    - {name: name, type: text, allowNull: false}
"""
USER_V1 = """apiVersion: orchestrator/v1
kind: Resource
metadata: {name: user}
spec:
  repo: app
  table: users
  attributes:
    - {name: id, type: bigint, primaryKey: true}
    - {name: email, type: text}
    - {name: handle, type: text}
    - {name: age, type: integer}
    - {name: created_at, type: timestamptz, allowNull: false, defaultSql: now()}
    - {name: org_id, type: bigint}
"""
USER_V2 = """apiVersion: orchestrator/v1
kind: Resource
metadata: {name: user}
spec:
  repo: app
  table: users
  attributes:
    - {name: id, type: bigint, primaryKey: true}
    - {name: email, type: text, allowNull: false}
    - {name: handle, type: text}
    - {name: age, type: integer}
    - {name: created_at, type: timestamptz, allowNull: false, defaultSql: now()}
    - {name: org_id, type: bigint, references: {resource: org, index: true}}
  identities:
    - {name: unique_handle, keys: [handle]}
  checkConstraints:
    - {name: age_non_negative, check: "age >= 0"}
  indexes:
    - {fields: [created_at]}
"""
# The same evolution by hand, with the names orchestrator gives, so both runs end with the same schema.
PLAIN_DDL = (
    "ALTER TABLE users ALTER COLUMN email SET NOT NULL",
    "ALTER TABLE users ADD CONSTRAINT users_org_id_fkey FOREIGN KEY (org_id) REFERENCES orgs (id)",
    "CREATE INDEX users_org_id_index ON users (org_id)",
    "CREATE UNIQUE INDEX users_unique_handle_index ON users (handle)",
    "ALTER TABLE users ADD CONSTRAINT age_non_negative CHECK (age >= 0)",
    "CREATE INDEX users_created_at_index ON users (created_at)",
)
LOAD = (
    "INSERT INTO orgs SELECT g, 'org ' || g FROM generate_series(1, %(orgs)s) g",
    "INSERT INTO users (id, email, handle, age, created_at, org_id) "
    "SELECT g, 'user' || g || '@example.com', 'h' || g, g %% 100, now() - g * interval '1 second', "
    "1 + g %% %(orgs)s FROM generate_series(1, %(rows)s) g",
)
# What the schema must look like after either run: constraints, indexes and nullability of both tables.
SCHEMA = """
SELECT 'constraint', conrelid::regclass::text, conname, pg_get_constraintdef(oid), convalidated::text
FROM pg_constraint WHERE conrelid IN ('users'::regclass, 'orgs'::regclass)
UNION ALL
SELECT 'index', indrelid::regclass::text, indexrelid::regclass::text, pg_get_indexdef(indexrelid), indisvalid::text
FROM pg_index WHERE indrelid IN ('users'::regclass, 'orgs'::regclass)
UNION ALL
SELECT 'column', attrelid::regclass::text, attname, format_type(atttypid, atttypmod), attnotnull::text
FROM pg_attribute WHERE attrelid IN ('users'::regclass, 'orgs'::regclass) AND attnum > 0 AND NOT attisdropped
ORDER BY 1, 2, 3
"""


@dataclass(frozen=True)
class Stats:
    statements: int
    worst_ms: float
    p99_ms: float


@dataclass(frozen=True)
class Run:
    label: str
    ddl_seconds: float
    during: Stats
    idle: Stats
    files: list[str] = field(default_factory=list)


class Server:
    def __init__(self, url: str) -> None:
        self.url = url

    def db_url(self, name: str) -> str:
        return conninfo.make_conninfo(self.url, dbname=name)

    def drop(self, name: str) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def create(self, name: str) -> str:
        self.drop(name)
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.db_url(name)


class Writer(threading.Thread):
    """Single-row INSERTs and UPDATEs of ``users`` in a tight loop, autocommit, each timed: (start, end)."""

    def __init__(self, url: str, rows: int) -> None:
        super().__init__(name="stall-bench-writer", daemon=True)
        self.url, self.rows = url, rows
        self.samples: list[tuple[float, float]] = []
        self.error: BaseException | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        chooser = random.Random(7)
        next_id = self.rows + 1
        try:
            with psycopg.connect(self.url, autocommit=True, application_name="stall-bench-writer") as conn:
                while not self.stopping.is_set():
                    start = time.perf_counter()
                    if next_id % 2:
                        conn.execute(
                            "INSERT INTO users (id, email, handle, age, org_id) VALUES (%s, %s, %s, %s, %s)",
                            (next_id, f"w{next_id}@example.com", f"w{next_id}", 30, 1 + next_id % ORGS),
                            prepare=True,
                        )
                    else:
                        conn.execute(
                            "UPDATE users SET age = age + 1 WHERE id = %s",
                            (chooser.randint(1, self.rows),),
                            prepare=True,
                        )
                    self.samples.append((start, time.perf_counter()))
                    next_id += 1
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def stats(self, begin: float, end: float) -> Stats:
        """The statements that overlap [begin, end]: a statement queued behind a lock counts whole."""
        latencies = sorted(e - s for s, e in list(self.samples) if s <= end and e >= begin)
        if not latencies:
            return Stats(0, math.nan, math.nan)
        p99 = latencies[max(0, math.ceil(0.99 * len(latencies)) - 1)]
        return Stats(len(latencies), latencies[-1] * 1000, p99 * 1000)


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            sys.exit(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(0.01)


def load(url: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in LOAD:
            conn.execute(statement, {"rows": rows, "orgs": ORGS})
        conn.execute("VACUUM ANALYZE orgs")
        conn.execute("VACUUM ANALYZE users")
        # the load's dirty pages written out now, not by a checkpoint in the middle of a measurement
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute("CHECKPOINT")


def measure(label: str, url: str, rows: int, idle_seconds: float, ddl: Callable[[], None]) -> Run:
    """Start the writer, let it run alone for ``idle_seconds``, then run ``ddl`` while it keeps writing."""
    writer = Writer(url, rows)
    writer.start()
    wait_for(lambda: bool(writer.samples) or writer.error is not None, "the writer's first statement")
    idle_start = time.perf_counter()
    time.sleep(idle_seconds)  # the writer alone: the floor the DDL's figures compare with
    begin = time.perf_counter()
    try:
        ddl()
    finally:
        end = time.perf_counter()
        writer.stopping.set()
        writer.join(timeout=600)
    if writer.error is not None:
        sys.exit(f"{label}: the writer failed: {writer.error!r}")
    return Run(label, end - begin, writer.stats(begin, end), writer.stats(idle_start, begin))


# -- the two ways --------------------------------------------------------------------------------------------


def plain(url: str) -> Callable[[], None]:
    def run() -> None:
        with psycopg.connect(url) as conn, conn.transaction():
            for statement in PLAIN_DDL:
                conn.execute(statement.encode())

    return run


def orchestrator(root: Path, url: str) -> Callable[[], None]:
    def run() -> None:
        cli(root, url, "migrate")

    return run


def cli(root: Path, url: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")} | {"BENCH_URL": url}
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], cwd=root, env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.exit(f"orchestrator {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def manifests(root: Path, user: str) -> None:
    config = root / "config"
    config.mkdir(parents=True, exist_ok=True)
    for name, text in (("repo", REPO), ("org", ORG), ("user", user)):
        (config / f"{name}.yaml").write_text(text)


def migrations(root: Path) -> set[str]:
    return {p.name for p in (root / "priv/app/migrations").glob("*.sql")}


def base(server: Server, name: str, root: Path, rows: int) -> str:
    """A fresh database with orchestrator's base migration applied, then the rows loaded."""
    url = server.create(name)
    cli(root, url, "migrate")
    load(url, rows)
    return url


def schema(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(SCHEMA).fetchall()


# -- report --------------------------------------------------------------------------------------------------


def report(runs: list[Run], rows: int) -> None:
    plain_run, ours = runs
    print(f"\nwrite-stall benchmark: users with {rows:,} rows, one writer (single-row INSERT/UPDATE, autocommit)\n")
    print("| run | DDL s | writer stmts during | p99 ms | worst ms | idle p99 ms | idle worst ms | worst / (a) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        ratio = run.during.worst_ms / plain_run.during.worst_ms
        print(
            f"| {run.label} | {run.ddl_seconds:.2f} | {run.during.statements} | {run.during.p99_ms:.1f} "
            f"| {run.during.worst_ms:.1f} | {run.idle.p99_ms:.2f} | {run.idle.worst_ms:.1f} | {ratio:.1%} |"
        )
    print(f"\n(b) applied: {', '.join(ours.files)}")
    ratio = ours.during.worst_ms / plain_run.during.worst_ms
    met = ratio <= 0.05
    print(f"\n{'ok    ' if met else 'MISSED'} worst stall (b) / (a): {ratio:.1%} (goal <= 5 %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows in users (default 2,000,000)")
    parser.add_argument(
        "--url", default=os.environ.get("ORCHESTRATOR_TEST_DATABASE_URL", DEFAULT_URL), help="the server to use"
    )
    parser.add_argument("--idle-seconds", type=float, default=2.0, help="the writer alone before the DDL")
    args = parser.parse_args()
    server = Server(args.url)
    work = Path(tempfile.mkdtemp(prefix="orchestrator-stall-bench-"))
    names = ("stall_bench_a", "stall_bench_b")
    try:
        manifests(work, USER_V1)
        cli(work, server.db_url("postgres"), "generate-migrations", "--name", "base")

        print(f"(a) loading {args.rows:,} rows (not timed)...", file=sys.stderr)
        url_a = base(server, names[0], work, args.rows)
        print("(a) plain DDL in one transaction...", file=sys.stderr)
        plain_run = measure("(a) plain DDL, one transaction", url_a, args.rows, args.idle_seconds, plain(url_a))

        print(f"(b) loading {args.rows:,} rows (not timed)...", file=sys.stderr)
        url_b = base(server, names[1], work, args.rows)
        before = migrations(work)
        manifests(work, USER_V2)
        cli(work, url_b, "generate-migrations", "--name", "evolve")
        generated = sorted(migrations(work) - before)
        print(f"(b) orchestrator migrate ({len(generated)} files)...", file=sys.stderr)
        ours = measure("(b) orchestrator migrate", url_b, args.rows, args.idle_seconds, orchestrator(work, url_b))
        ours = Run(ours.label, ours.ddl_seconds, ours.during, ours.idle, generated)

        if schema(url_a) != schema(url_b):
            sys.exit(f"the two runs ended with different schemas:\n(a) {schema(url_a)}\n(b) {schema(url_b)}")
    finally:
        for name in names:
            server.drop(name)
        shutil.rmtree(work, ignore_errors=True)
    report([plain_run, ours], args.rows)


if __name__ == "__main__":
    main()
