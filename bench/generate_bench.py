"""Benchmark of the migration generator (``make bench``; not part of the tests).

Builds a config of N resources (default 500: global and per-tenant tables, foreign keys, identities, indexes,
checks), then times, as a user runs them, median of several runs:

* ``generate-migrations`` from scratch (no snapshots yet) — goal: under 2 s for 500 resources;
* ``generate-migrations --check`` when nothing changed — goal: under 0.5 s;
* the floor, measured in the same run: a Python process that only parses the same YAML files with libyaml.

Ratios to the floor are printed so the figures can be compared across machines.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = """apiVersion: orchestrator/v1
kind: Repo
metadata: {name: app}
spec:
  tenants: {static: [t1]}
"""


def resource(i: int) -> str:
    tenant = i % 2 == 1
    parent = f"\n      references: {{resource: r{i - 2}, onDelete: cascade, index: true}}" if i >= 2 else ""
    return f"""apiVersion: orchestrator/v1
kind: Resource
metadata: {{name: r{i}}}
spec:
  repo: app
  table: table_{i}
{"  multitenancy: {strategy: context}" + chr(10) if tenant else ""}  attributes:
    - {{name: id, type: bigint, primaryKey: true, generated: identity}}
    - {{name: name, type: varchar(200), allowNull: false}}
    - {{name: status, type: text, allowNull: false, default: active}}
    - {{name: amount, type: 'numeric(12,2)', default: 0}}
    - {{name: inserted_at, type: timestamptz, allowNull: false, defaultSql: now()}}
    - name: parent_id
      type: bigint{parent}
  identities:
    - {{name: unique_name, keys: [name]}}
  indexes:
    - {{fields: [status, inserted_at], where: "status <> 'deleted'"}}
  checkConstraints:
    - {{name: amount_positive_{i}, check: "amount >= 0"}}
"""


def build(root: Path, count: int) -> None:
    config = root / "config"
    config.mkdir(parents=True)
    (config / "repo.yaml").write_text(REPO)
    for i in range(count):
        (config / f"r{i:04d}.yaml").write_text(resource(i))


def timed(args: list[str], cwd: Path, expect: int = 0) -> float:
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != expect:
        sys.exit(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return elapsed


FLOOR = (
    "import sys, yaml, pathlib\n"
    "for p in sorted(pathlib.Path(sys.argv[1]).rglob('*.yaml')):\n"
    "    list(yaml.load_all(p.read_text(), Loader=yaml.CSafeLoader))\n"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    cli = [sys.executable, "-m", "orchestrator"]
    scratch, noop, floor = [], [], []
    for _ in range(args.runs):
        root = Path(tempfile.mkdtemp(prefix="orchestrator-bench-"))
        try:
            build(root, args.resources)
            floor.append(timed([sys.executable, "-c", FLOOR, "config"], root))
            scratch.append(timed([*cli, "generate-migrations", "--name", "init"], root))
            noop.append(timed([*cli, "generate-migrations", "--check"], root))
        finally:
            shutil.rmtree(root)
    base = statistics.median(floor)
    print(f"generator benchmark: {args.resources} resources, median of {args.runs} runs (wall clock, new process)")
    print(f"{'case':<44}{'seconds':>9}{'x floor':>9}{'goal':>9}")
    for label, values, goal in (
        ("floor: parse the YAML only (libyaml)", floor, None),
        ("generate-migrations from scratch", scratch, 2.0),
        ("generate-migrations --check, nothing changed", noop, 0.5),
    ):
        median = statistics.median(values)
        verdict = "" if goal is None else (f"<{goal:g}s " + ("ok" if median < goal else "MISSED"))
        print(f"{label:<44}{median:>9.3f}{median / base:>9.1f}{verdict:>9}")


if __name__ == "__main__":
    main()
