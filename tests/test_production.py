"""The embedded PostgreSQL is a development convenience only.

With ``ORCHESTRATOR_EMBEDDED=0`` (the container image) a repo left without a URL is a located error, exit 2, from
every command, ``serve`` included, before anything is written, applied or started: no ``.orchestrator/`` data
directory appears under ``--root`` and no postgres process runs on it. Those runs happen with ``pgserver`` made
unimportable, as in the image, which does not install it. ``make clean``'s helper stops the embedded servers it
is about to delete, and ``make run``'s seeds give the example config its tenants.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from orchestrator import db, embedded, model
from orchestrator.errors import ConfigError, DatabaseError
from tests.conftest import REPO_ROOT, cli_env, fresh_database, run_cli, start_cli, wait_for, write

SWITCHED_OFF = {embedded.SWITCH: "0"}

REPO = """\
# the example's repo, as a production config would have it wrong
apiVersion: orchestrator/v1
kind: Repo
metadata: {name: app}
spec:
  url: URL
  tenants: {query: "SELECT 'org_' || slug FROM public.organizations WHERE active ORDER BY 1", createSchemas: true}
"""
RESOURCES = """\
apiVersion: orchestrator/v1
kind: Resource
metadata: {name: organization}
spec:
  repo: app
  table: organizations
  attributes:
    - {name: id, type: bigint, primaryKey: true, generated: identity}
    - {name: slug, type: text, allowNull: false}
    - {name: active, type: boolean, allowNull: false, default: true}
  identities: [{name: unique_slug, keys: [slug]}]
---
apiVersion: orchestrator/v1
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

NO_URL = (
    "config/repo.yaml:2:1: spec.url: no database URL (environment variable APP_DATABASE_URL is not set); "
    "the embedded PostgreSQL is switched off (ORCHESTRATOR_EMBEDDED=0), so the repo needs a database URL"
)
UNSET = (
    "config/repo.yaml:2:1: spec.url: environment variable APP_DATABASE_URL is not set; "
    "the embedded PostgreSQL is switched off (ORCHESTRATOR_EMBEDDED=0), so the repo needs a database URL"
)

COMMANDS = [
    ("serve", "--listen", "127.0.0.1:0"),
    ("serve", "--once"),
    ("migrate",),
    ("migrate", "--tenants"),
    ("status",),
    ("create",),
    ("drop", "--force"),
    ("tenants",),
]


@pytest.fixture
def no_pgserver(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import pgserver`` fails loudly, as in the image (it does not install it)."""
    shadow = write(tmp_path / "shadow" / "pgserver" / "__init__.py", "raise ImportError('pgserver is not installed')\n")
    return {"PYTHONPATH": str(shadow.parent.parent)}


def project(tmp_path: Path, url: str) -> Path:
    root = tmp_path / "root"
    write(root / "config" / "repo.yaml", REPO.replace("URL", url))
    write(root / "config" / "resources.yaml", RESOURCES)
    return root


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def postgres_on(root: Path) -> list[int]:
    """Pids of postgres processes whose command line names a directory under ``root``."""
    found = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "postgres" in (proc.info["name"] or "") and str(root) in cmdline:
            found.append(proc.info["pid"])
    return found


@pytest.mark.parametrize(
    ("url", "message"),
    [("${APP_DATABASE_URL:-}", NO_URL), ("${APP_DATABASE_URL}", UNSET)],
    ids=["empty-fallback", "no-fallback"],
)
@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_without_a_url_every_command_exits_2_and_starts_nothing(
    tmp_path: Path, no_pgserver: dict[str, str], command: tuple[str, ...], url: str, message: str
) -> None:
    root = project(tmp_path, url)
    before = tree(root)
    result = run_cli(*command, "--root", str(root), cwd=root, env=SWITCHED_OFF | no_pgserver)
    assert result.code == 2, result.err
    assert message in result.err.splitlines()
    assert "nothing was written or applied" in result.err and "Traceback" not in result.err
    assert tree(root) == before and not (root / ".orchestrator").exists()
    assert postgres_on(root) == []


def test_the_json_report_names_the_field_and_the_switch(tmp_path: Path, no_pgserver: dict[str, str]) -> None:
    root = project(tmp_path, "${APP_DATABASE_URL:-}")
    result = run_cli("serve", "--once", "--json", "--root", str(root), cwd=root, env=SWITCHED_OFF | no_pgserver)
    assert result.code == 2
    assert '"field": "spec.url"' in result.out and "ORCHESTRATOR_EMBEDDED=0" in result.out


def test_with_a_url_the_image_runs_without_pgserver(
    tmp_path: Path, no_pgserver: dict[str, str], database_url: str
) -> None:
    """What the image does: ``serve --once`` on a real URL, state in the database, pgserver unimportable."""
    root = project(tmp_path, "${APP_DATABASE_URL}")
    env = SWITCHED_OFF | no_pgserver | {"APP_DATABASE_URL": database_url}
    result = run_cli("serve", "--once", "--state", "database", "--root", str(root), cwd=root, env=env)
    assert result.code == 0, result.err
    assert tree(root) == ["config", "config/repo.yaml", "config/resources.yaml"]


@pytest.mark.parametrize(
    ("setting", "allowed"),
    [
        *[(None, True), ("", True), ("1", True), ("true", True)],
        *[("0", False), ("false", False), ("off", False), ("no", False), ("O", False)],  # a typo fails closed
    ],
)
def test_the_switch(setting: str | None, allowed: bool) -> None:
    env = {} if setting is None else {embedded.SWITCH: setting}
    assert embedded.enabled(env) is allowed
    repo = model.Repo(name="app", url="${APP_DATABASE_URL:-}", source=model.Source("repo.yaml", 3))
    if allowed:
        assert db.resolve_url(repo, Path("."), env) is None  # the embedded server
    else:
        with pytest.raises(ConfigError) as raised:
            db.resolve_url(repo, Path("."), env)
        (problem,) = raised.value.problems
        assert (problem.file, problem.line, problem.field) == ("repo.yaml", 3, "spec.url")
    assert db.resolve_url(repo, Path("."), env | {"APP_DATABASE_URL": "postgresql://h/db"}) == "postgresql://h/db"


def test_every_way_of_having_no_url_is_named(tmp_path: Path) -> None:
    off = {embedded.SWITCH: "0", "EMPTY": " "}
    cases = {
        "": "no database URL (spec.url and spec.urlFile are not set)",
        "${EMPTY}": "no database URL (EMPTY is set but empty)",
        "${A:-}${B:-}": "no database URL (environment variables A, B are not set)",
        "${A:-}${EMPTY}": "no database URL (environment variable A is not set and EMPTY is set but empty)",
    }
    for url, expected in cases.items():
        with pytest.raises(ConfigError) as raised:
            db.resolve_url(model.Repo(name="app", url=url or None), tmp_path, off)
        assert raised.value.problems[0].message.startswith(expected + "; the embedded PostgreSQL is switched off")
    write(tmp_path / "url", "\n")
    with pytest.raises(ConfigError) as raised:
        db.resolve_url(model.Repo(name="app", url_file="url"), tmp_path, off)
    assert raised.value.problems[0].field == "spec.urlFile" and "is empty" in raised.value.problems[0].message


def test_the_embedded_server_refuses_to_start_when_switched_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(embedded.SWITCH, "0")
    with pytest.raises(DatabaseError, match="ORCHESTRATOR_EMBEDDED=0"):
        embedded.server(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_importing_orchestrator_does_not_import_pgserver() -> None:
    modules = [
        "orchestrator.cli",
        "orchestrator.db",
        "orchestrator.embedded",
        "orchestrator.seed",
        "orchestrator.migrations.runner",
        "orchestrator.daemon.serve",
    ]
    code = (
        f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\nassert 'pgserver' not in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


# -- make clean: the helper stops what it is about to delete -------------------------------------------------


@pytest.fixture
def embedded_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "checkout"
    root.mkdir()
    yield root
    embedded.stop_all(root)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # exited, not reaped by its (foreign) parent
    except psutil.NoSuchProcess:
        return True


def test_the_clean_helper_stops_every_embedded_server_under_a_directory(embedded_root: Path) -> None:
    data = []
    for name in ("one", "two"):  # like .orchestrator/pgdata and .orchestrator/run/.orchestrator/pgdata
        start = f"from pathlib import Path; from orchestrator import embedded; embedded.server(Path({name!r}))"
        (embedded_root / name).mkdir()
        started = subprocess.run([sys.executable, "-c", start], cwd=embedded_root, env=cli_env(), check=False)
        assert started.returncode == 0
        data.append(embedded.data_dir(embedded_root / name))
    pids = [pid for pid in map(embedded.postmaster_pid, data) if pid is not None]
    assert len(pids) == 2 and not any(map(gone, pids))

    helper = [sys.executable, "-m", "orchestrator.embedded", "stop", str(embedded_root), "/nonexistent"]
    done = subprocess.run(helper, env=cli_env(), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("stopped the embedded PostgreSQL in") == 2
    for pid in pids:
        wait_for(functools.partial(gone, pid), f"postmaster {pid} to exit")
    assert all(not (d / "postmaster.pid").exists() for d in data)

    again = subprocess.run(helper, env=cli_env(), capture_output=True, text=True, check=False)
    assert again.returncode == 0 and again.stdout == ""  # nothing running: nothing to do, no failure


# -- make run: the example has tenants from the first second ---------------------------------------------------


@pytest.fixture
def second_database(server_url: str) -> Iterator[str]:
    yield from fresh_database(server_url)


def test_make_runs_steps_seed_the_example_tenants(tmp_path: Path, database_url: str, second_database: str) -> None:
    """``make run``'s steps on the example config (a real server instead of the embedded one): generate, migrate
    the global tables, seed twice (idempotent), then the daemon's first reconcile migrates every tenant."""
    shutil.copytree(REPO_ROOT / "config", tmp_path / "config")
    env = {"APP_DATABASE_URL": database_url, "ANALYTICS_DATABASE_URL": second_database}
    for step in (("generate-migrations",), ("migrate",)):
        result = run_cli(*step, cwd=tmp_path, env=env)
        assert result.code == 0, result.err
    seed = [sys.executable, "-m", "orchestrator.seed", "--repo", "app", "config/app/seeds.sql"]
    for _ in range(2):
        done = subprocess.run(seed, cwd=tmp_path, env=cli_env(env), capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
    listed = run_cli("tenants", "--repo", "app", cwd=tmp_path, env=env)
    assert listed.out.split()[-3:] == ["org_acme", "org_globex", "org_initech"], listed.out

    log = (tmp_path / "serve.log").open("w")
    daemon = start_cli("serve", "--interval", "1s", "--listen", "127.0.0.1:0", cwd=tmp_path, env=env, stderr=log)
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            query = "SELECT count(*) FROM pg_tables WHERE tablename = 'projects' AND schemaname LIKE 'org_%'"

            def migrated() -> bool:
                row = conn.execute(query).fetchone()
                return row is not None and row[0] == 3

            wait_for(migrated, "the three seeded tenants to be migrated", process=daemon)
            hooli = "INSERT INTO public.organizations (slug, name) VALUES ('hooli', 'Hooli')"  # as the README says
            add = subprocess.run([*seed[:-1], "-"], cwd=tmp_path, env=cli_env(env), input=hooli, text=True, check=False)
            assert add.returncode == 0
            wait_for(lambda: conn.execute(query.replace("'org_%'", "'org_hooli'")).fetchone() == (1,), "org_hooli")
    finally:
        daemon.terminate()
        daemon.communicate(timeout=60)
        log.close()


def test_the_seed_helper_reports_errors_without_a_traceback(tmp_path: Path, database_url: str) -> None:
    root = project(tmp_path, "${APP_DATABASE_URL}")
    write(root / "bad.sql", "INSERT INTO nowhere VALUES (1);\n")
    command = [sys.executable, "-m", "orchestrator.seed", "--repo", "app", "bad.sql"]
    env = cli_env({"APP_DATABASE_URL": database_url})
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 1 and 'relation "nowhere" does not exist' in done.stderr
    assert "Traceback" not in done.stderr
    unknown = subprocess.run(
        [*command[:4], "nope", "bad.sql"], cwd=root, env=env, capture_output=True, text=True, check=False
    )
    assert unknown.returncode == 2 and "unknown repo 'nope'" in unknown.stderr
