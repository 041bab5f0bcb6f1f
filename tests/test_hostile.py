"""Hostile manifests end to end: every case gets exit 2 and a located error, and nothing is written or applied,
within bounded time and memory.

Each case runs as the daemon would meet it (``serve --once``: validate, generate, migrate) in a fresh directory,
in a process limited to 1 GiB of address space and 60 seconds. "Nothing written" is the directory holding
only the manifest afterwards; "nothing applied" is that no database was started or touched: the cases'
repos use the embedded PostgreSQL, whose data directory would appear under ``--root``. A second test pushes
hostile edits to a live project on a real database and compares ``pg_catalog`` before and after.

The cases are the corpus in ``tests/bad/`` (each lists its exact errors) plus generated giants too big to
keep in git: a 5 MiB file, a 100,000-deep flow, a 1,500-deep block, a billion-laughs alias bomb, a 3 MiB
key, 60,000 documents, 150,000 keys, a 2,000-column table.
"""

from __future__ import annotations

import concurrent.futures as futures
import hashlib
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.conftest import run_cli, write
from tests.test_bad_manifests import CASES, expected

MEMORY_LIMIT = 1 << 30
TIME_LIMIT = 60.0
REPO = "apiVersion: orchestrator/v1\nkind: Repo\nmetadata: {name: app}\nspec: {}\n"


def _resource(attributes: str) -> str:
    return (
        REPO + "---\napiVersion: orchestrator/v1\nkind: Resource\nmetadata: {name: t}\nspec:\n  repo: app\n"
        "  table: t\n  attributes:\n    - {name: id, type: bigint, primaryKey: true}\n" + attributes
    )


def giants() -> dict[str, tuple[bytes, str]]:
    """Generated cases: file contents and a part of the error the user must see."""
    bomb = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    bomb += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    return {
        "huge_file.yaml": (
            (REPO + "# " + "x" * (5 << 20) + "\n").encode(),
            "1:1: file is 5120 KiB; manifests are limited to 4 MiB",
        ),
        "deep_flow.yaml": (("a: " + "[" * 100_000 + "]" * 100_000 + "\n").encode(), "nesting deeper than 64 levels"),
        "deep_block.yaml": (
            ("".join("  " * i + f"k{i}:\n" for i in range(1500)) + "  " * 1500 + "v: 1\n").encode(),
            "nesting deeper than 64 levels",
        ),
        "billion_laughs.yaml": (("\n".join(bomb) + "\n").encode(), "document expands to more than 200000 values"),
        "long_key.yaml": (("k" * (3 << 20) + ": 1\n").encode(), "1:3145729: YAML syntax error"),
        "many_documents.yaml": (b"---\n- 1\n" * 60_000, "... and 59900 more"),
        "many_keys.yaml": (
            ("spec:\n" + "".join(f"  k{i}: {i}\n" for i in range(150_000))).encode(),
            "document expands to more than 200000 values",
        ),
        "wide_table.yaml": (
            _resource("".join(f"    - {{name: c{i}, type: text}}\n" for i in range(2000))).encode(),
            "spec.attributes: has 2001 items; PostgreSQL allows at most 1600 columns in a table",
        ),
    }


@dataclass
class Outcome:
    name: str
    code: int
    err: str
    seconds: float
    max_rss_mb: float
    left: list[str]


def _limits() -> None:  # in the child, before exec
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_case(root: Path, name: str, body: bytes) -> Outcome:
    """``serve --once`` on a config holding just this file, under the memory and time limits."""
    (root / "config").mkdir(parents=True)
    (root / "config" / name).write_bytes(body)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    with open(root.parent / f"{name}.err", "w+b") as err:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "serve", "--once", "--config", "config", "--listen", "127.0.0.1:0"],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            preexec_fn=_limits,
        )
        killer = threading.Timer(TIME_LIMIT, proc.kill)
        killer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - started
        err.seek(0)
        text = err.read().decode(errors="replace")
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    return Outcome(name, proc.returncode, text, seconds, usage.ru_maxrss / 1024, left)


def _where(case: Path) -> str:
    """``config/<case>:line:column: field`` of the first error the case lists."""
    line, column, rest = expected(case)[0].removeprefix(case.name + ":").split(":", 2)
    return f"config/{case.name}:{line}:{column}:{rest.split(':')[0]}"


@pytest.mark.slow
def test_every_hostile_case_exits_2_and_writes_and_applies_nothing(tmp_path: Path) -> None:
    cases = {case.name: (case.read_bytes(), _where(case)) for case in CASES}
    cases |= {name: (body, f"config/{name}:") for name, (body, _) in giants().items()}
    needles = {name: message for name, (_, message) in giants().items()}
    assert len(cases) >= 50

    def one(name: str) -> tuple[Outcome, str]:
        body, message = cases[name]
        return run_case(tmp_path / name / "root", name, body), message

    with futures.ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(one, sorted(cases)))
    for outcome, message in outcomes:
        where = f"{outcome.name}: {outcome.err[-500:]}"
        assert outcome.code == 2, where
        assert message in outcome.err and needles.get(outcome.name, "") in outcome.err, where
        assert "nothing was written or applied" in outcome.err, where
        assert "Traceback" not in outcome.err, where
        assert outcome.left == ["config", f"config/{outcome.name}"], f"{outcome.name} left {outcome.left}"
    slowest = max(outcomes, key=lambda o: o[0].seconds)[0]
    largest = max(outcomes, key=lambda o: o[0].max_rss_mb)[0]
    print(
        f"\n[hostile manifests] cases={len(outcomes)}, all exit 2, nothing written or applied; "
        f"slowest {slowest.name} {slowest.seconds:.2f}s, largest {largest.name} {largest.max_rss_mb:.0f} MB RSS "
        f"(limits {TIME_LIMIT:.0f}s, {MEMORY_LIMIT >> 20} MB)"
    )


LIVE_REPO = "apiVersion: orchestrator/v1\nkind: Repo\nmetadata: {name: app}\nspec:\n  url: ${APP_URL}\n"
LIVE_TABLE = (
    "apiVersion: orchestrator/v1\nkind: Resource\nmetadata: {name: note}\nspec:\n  repo: app\n  table: notes\n"
    "  attributes:\n    - {name: id, type: bigint, primaryKey: true}\n    - {name: body, type: text}\n"
)
PUSHES = {
    "sql in a column name": LIVE_TABLE + "    - {name: 'x\"; DROP TABLE notes; --', type: text}\n",
    "sql in a type": LIVE_TABLE + "    - {name: extra, type: 'text; DROP TABLE notes'}\n",
    "a table name too long": LIVE_TABLE.replace("table: notes", "table: " + "n" * 64),
    "an alias bomb": LIVE_TABLE
    + "x: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
    + "".join(f"x{i}: &a{i} [" + ", ".join(["*a" if i == 0 else f"*a{i - 1}"] * 10) + "]\n" for i in range(8)),
    "non-UTF-8 bytes": LIVE_TABLE.replace("body", "b\udcffody"),
    "a duplicate key": LIVE_TABLE + "  table: other\n",
}


def _catalog(url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2, 3"
        ).fetchall()


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "config" not in p.parts
    }


@pytest.mark.parametrize("push", sorted(PUSHES))
def test_a_hostile_push_to_a_live_project_changes_nothing(push: str, tmp_path: Path, database_url: str) -> None:
    write(tmp_path / "config" / "repo.yaml", LIVE_REPO)
    write(tmp_path / "config" / "notes.yaml", LIVE_TABLE)
    first = run_cli(
        "serve", "--once", "--config", "config", "--listen", "127.0.0.1:0", cwd=tmp_path, env={"APP_URL": database_url}
    )
    assert first.code == 0, first.err
    catalog, files = _catalog(database_url), _files(tmp_path)
    assert ("public", "notes", "body", "text") in catalog
    (tmp_path / "config" / "notes.yaml").write_bytes(PUSHES[push].encode("utf-8", errors="surrogateescape"))
    for command in (("serve", "--once", "--listen", "127.0.0.1:0"), ("generate-migrations",), ("migrate",)):
        result = run_cli(*command, "--config", "config", cwd=tmp_path, env={"APP_URL": database_url})
        assert result.code == 2, result.err
        assert "config/notes.yaml:" in result.err and "nothing was written or applied" in result.err
    assert _catalog(database_url) == catalog
    assert _files(tmp_path) == files
