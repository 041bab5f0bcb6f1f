"""``orchestrator drift`` against a real PostgreSQL: a freshly migrated database shows none, whatever the
features its manifests use; hand-made changes to tenant and global tables are named exactly, per target; a
missing tenant schema is reported as such; fixing the change by hand clears it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psycopg
import pytest

from tests.conftest import REPO_ROOT, Result, run_cli, write

TENANTS = 1000

# Every feature of the format the generator supports, global and per tenant, attribute multitenancy included.
RICH = """apiVersion: orchestrator/v1
kind: Repo
metadata: {name: rich}
spec:
  url: ${RICH_URL}
  tenants: {static: [t1, t2], createSchemas: true}
---
apiVersion: orchestrator/v1
kind: Resource
metadata: {name: user}
spec:
  repo: rich
  table: users
  attributes:
    - {name: id, type: bigint, primaryKey: true, generated: always}
    - {name: email, type: varchar(200), allowNull: false}
    - {name: role, type: varchar(20), allowNull: false, default: member}
    - {name: active, type: boolean, allowNull: false, default: true}
    - {name: tags, type: 'text[]', allowNull: false, defaultSql: "'{}'"}
    - {name: profile, type: jsonb}
    - {name: balance, type: 'numeric(12,2)', default: -1.5}
    - {name: ratio, type: float8, default: 0.25}
    - {name: note, type: text, default: "it's"}
    - {name: seen_at, type: 'timestamp(3) with time zone', defaultSql: now()}
  identities:
    - {name: unique_email, keys: [email], nullsDistinct: false}
    - {name: unique_role_note, keys: [role, note], where: "active AND note IS NOT NULL"}
  indexes:
    - {fields: [profile], using: gin}
    - {fields: ['lower(email)'], name: users_lower_email_index, unique: true}
    - {fields: [role], include: [email], where: "NOT active"}
  checkConstraints:
    - {name: email_length, check: 'length(email) > 3'}
    - {name: role_known, check: "role IN ('owner', 'admin', 'member')"}
    - {name: ratio_range, check: "ratio BETWEEN 0 AND 1"}
  statements:
    - {name: users_seen_brin, up: "CREATE INDEX users_seen_brin ON users USING brin (seen_at)",
       down: "DROP INDEX users_seen_brin"}
---
apiVersion: orchestrator/v1
kind: Resource
metadata: {name: event}
spec:
  repo: rich
  table: events
  schema: audit
  multitenancy: {strategy: attribute, attribute: org_id}
  primaryKey: [org_id, id]
  attributes:
    - {name: org_id, type: uuid, allowNull: false}
    - {name: id, type: bigserial}
    - {name: user_id, type: bigint, references: {resource: user, index: true, onUpdate: cascade}}
    - {name: payload, type: jsonb, allowNull: false, defaultSql: "'{}'::jsonb"}
    - {name: kind, type: smallserial}
---
apiVersion: orchestrator/v1
kind: Resource
metadata: {name: project}
spec:
  repo: rich
  table: projects
  multitenancy: {strategy: context}
  attributes:
    - {name: id, type: bigint, primaryKey: true, generated: identity}
    - {name: owner_id, type: bigint, references: {resource: user, onDelete: {setNull: [owner_id]}}}
    - {name: name, type: text, allowNull: false}
    - {name: status, type: text, allowNull: false, default: todo}
    - {name: priority, type: integer, allowNull: false, default: 0}
    - {name: archived, type: boolean, allowNull: false, default: false}
    - {name: budget, type: 'numeric(10,2)'}
    - {name: inserted_at, type: timestamptz, allowNull: false, defaultSql: now()}
  identities:
    - {name: unique_name, keys: [name], where: NOT archived}
  indexes:
    - {fields: [status], include: [priority]}
    - {fields: [inserted_at], where: NOT archived}
    - {fields: ['lower(name)'], name: projects_lower_name_index}
    - {fields: [priority, inserted_at], using: btree, concurrently: true}
  checkConstraints:
    - {name: priority_range, check: priority BETWEEN 0 AND 5}
    - {name: status_known, check: "status IN ('todo', 'doing', 'done')"}
    - {name: budget_positive, check: "budget IS NULL OR budget > 0"}
---
apiVersion: orchestrator/v1
kind: Resource
metadata: {name: member}
spec:
  repo: rich
  table: members
  multitenancy: {strategy: context}
  primaryKey: [project_id, user_id]
  attributes:
    - name: project_id
      type: bigint
      references: {resource: project, onDelete: cascade, deferrable: initiallyDeferred}
    - name: user_id
      type: bigint
      references: {resource: user, onDelete: restrict, match: full, index: true, name: members_user_fk}
    - {name: role, type: varchar(20), allowNull: false, default: member}
    - {name: position, type: smallserial}
    - {name: serial_no, type: serial}
"""


def cli(root: Path, *args: str, env: dict[str, str], timeout: float = 300) -> Result:
    return run_cli(*args, "--config", str(root / "config"), "--root", str(root), cwd=root, env=env, timeout=timeout)


def ok(result: Result) -> Result:
    assert result.code == 0, result.out + result.err
    return result


def example(tmp_path: Path, url: str, *, concurrency: int = 4) -> tuple[Path, dict[str, str]]:
    """The example config (config/) with both repos on ``url``, generated and its global migrations applied."""
    shutil.copytree(REPO_ROOT / "config", tmp_path / "config")
    repo = tmp_path / "config" / "app" / "repo.yaml"
    repo.write_text(repo.read_text().replace("concurrency: 4", f"concurrency: {concurrency}"))
    env = {"APP_DATABASE_URL": url, "ANALYTICS_DATABASE_URL": url}
    ok(cli(tmp_path, "generate-migrations", env=env))
    ok(cli(tmp_path, "migrate", env=env))
    return tmp_path, env


def add_organizations(url: str, slugs: list[str]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO public.organizations (slug, name) SELECT s, s FROM unnest(%s::text[]) AS s", (slugs,))


def execute(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


# Five tenants changed by hand in five ways, each with the line drift must print for it and the repair.
CHANGES = {
    "org_t0100": (
        "DROP INDEX org_t0100.tasks_project_id_status_index",
        "index org_t0100.tasks.tasks_project_id_status_index: missing",
        "CREATE INDEX tasks_project_id_status_index ON org_t0100.tasks (project_id, status)",
    ),
    "org_t0200": (
        "ALTER TABLE org_t0200.tasks ADD COLUMN note text",
        "column org_t0200.tasks.note: not in the model",
        "ALTER TABLE org_t0200.tasks DROP COLUMN note",
    ),
    "org_t0300": (
        "ALTER TABLE org_t0300.tasks ALTER COLUMN status SET DEFAULT 'doing'",
        "column org_t0300.tasks.status: default = \"'doing'::text\", expected \"'todo'\"",
        "ALTER TABLE org_t0300.tasks ALTER COLUMN status SET DEFAULT 'todo'",
    ),
    "org_t0400": (
        "ALTER TABLE org_t0400.tasks ALTER COLUMN title DROP NOT NULL",
        "column org_t0400.tasks.title: not_null = false, expected true",
        "ALTER TABLE org_t0400.tasks ALTER COLUMN title SET NOT NULL",
    ),
    "org_t0500": (
        "ALTER TABLE org_t0500.tasks DROP CONSTRAINT status_known",
        "check org_t0500.tasks.status_known: missing",
        "ALTER TABLE org_t0500.tasks ADD CONSTRAINT status_known CHECK (status IN ('todo', 'doing', 'done'))",
    ),
}


@pytest.mark.slow
def test_drift_names_exactly_the_tenants_changed_by_hand(tmp_path: Path, database_url: str) -> None:
    root, env = example(tmp_path, database_url, concurrency=16)
    add_organizations(database_url, [f"t{i:04}" for i in range(1, TENANTS + 1)])
    migrated = ok(cli(root, "migrate", "--tenants", env=env, timeout=900))
    assert f"app: {TENANTS} tenants: {TENANTS} migrated" in migrated.out
    clean = cli(root, "drift", "--tenants", env=env)
    assert (clean.code, clean.out.splitlines()) == (0, [f"0 of {TENANTS} targets drifted"]), clean.err

    execute(database_url, *(change for change, _, _ in CHANGES.values()))
    found = cli(root, "drift", "--tenants", env=env)
    assert found.code == 1, found.err
    lines = found.out.splitlines()
    assert lines[-1] == f"5 of {TENANTS} targets drifted"
    reported = {line.partition(":")[0] for line in lines if line.startswith("app/")}
    assert reported == {f"app/{tenant}" for tenant in CHANGES}
    assert sorted(line.removeprefix("  - ") for line in lines if line.startswith("  - ")) == sorted(
        line for _, line, _ in CHANGES.values()
    )
    as_json = json.loads(cli(root, "drift", "--tenants", "--json", env=env).out)
    [repo] = as_json["repos"]
    assert (repo["checked"], repo["drifted"], as_json["drifted"]) == (TENANTS, 5, 5)
    assert {t["tenant"]: t["differences"] for t in repo["targets"]} == {k: [v[1]] for k, v in CHANGES.items()}

    only = cli(root, "drift", "--tenants", "--only-tenants", "org_t0100,org_t0001", env=env)
    assert (only.code, only.out.splitlines()[-1]) == (1, "1 of 2 targets drifted")
    execute(database_url, *(repair for _, _, repair in CHANGES.values()))
    fixed = cli(root, "drift", "--tenants", env=env)
    assert (fixed.code, fixed.out.splitlines()) == (0, [f"0 of {TENANTS} targets drifted"]), fixed.err


def test_global_drift_json_shape_and_a_missing_tenant_schema(tmp_path: Path, database_url: str) -> None:
    root, env = example(tmp_path, database_url)
    add_organizations(database_url, ["acme", "globex"])
    ok(cli(root, "migrate", "--tenants", env=env))
    assert ok(cli(root, "drift", env=env)).out.splitlines() == ["0 of 2 targets drifted"]

    execute(
        database_url,
        "ALTER TABLE public.users ALTER COLUMN role TYPE text",
        "CREATE TABLE public.leftover (id int)",
        "DROP SCHEMA org_globex CASCADE",
    )
    found = cli(root, "drift", "--repo", "app", env=env)  # analytics, on the same database, sees leftover too
    assert found.code == 1
    assert found.out.splitlines() == [
        "app: 2 differences (model at " + found.out.split("(model at ")[1].split(")")[0] + ")",
        "  - column public.users.role: type = 'text', expected 'varchar(20)'",
        "  - table public.leftover: not in the model",
        "1 of 1 target drifted",
    ]
    document = json.loads(cli(root, "drift", "--repo", "app", "--json", env=env).out)
    [repo] = document["repos"]
    [target] = repo["targets"]
    assert set(document) == {"checked", "drifted", "repos"}
    assert set(repo) == {"repo", "scope", "checked", "drifted", "missing", "seconds", "targets"}
    assert (repo["repo"], repo["scope"], repo["checked"], repo["drifted"], repo["missing"]) == (
        "app",
        "global",
        1,
        1,
        0,
    )
    assert (target["target"], target["tenant"], target["status"]) == ("app", None, "drifted")
    assert isinstance(target["version"], int)
    assert target["differences"] == [
        "column public.users.role: type = 'text', expected 'varchar(20)'",
        "table public.leftover: not in the model",
    ]

    tenants = cli(root, "drift", "--tenants", "--json", env=env)
    assert tenants.code == 0, tenants.out  # a missing schema is reported, but it is not drift
    [repo] = json.loads(tenants.out)["repos"]
    assert (repo["checked"], repo["drifted"], repo["missing"]) == (2, 0, 1)
    assert repo["targets"] == [
        {
            "target": "app/org_globex",
            "tenant": "org_globex",
            "version": None,
            "status": "missing",
            "differences": ["schema org_globex: does not exist"],
        }
    ]
    text = cli(root, "drift", "--tenants", env=env).out.splitlines()
    assert text == ["app/org_globex: schema missing", "  - schema org_globex: does not exist", "0 of 2 targets drifted"]


def test_bad_input_exits_2(tmp_path: Path, database_url: str) -> None:
    root, env = example(tmp_path, database_url)
    assert cli(root, "drift", "--repo", "nope", env=env).code == 2
    assert cli(root, "drift", "--repo", "analytics", "--tenants", env=env).code == 2
    assert cli(root, "drift", "--only-tenants", "org_acme", env=env).code == 2


def test_a_freshly_migrated_rich_config_shows_no_drift(tmp_path: Path, database_url: str) -> None:
    write(tmp_path / "config" / "rich.yaml", RICH)
    env = {"RICH_URL": database_url}
    ok(cli(tmp_path, "generate-migrations", env=env))
    assert cli(tmp_path, "drift", env=env).out.splitlines() == ["0 of 1 target drifted"]  # nothing applied yet
    ok(cli(tmp_path, "migrate", env=env))
    ok(cli(tmp_path, "migrate", "--tenants", env=env))
    for scope in ([], ["--tenants"]):
        result = cli(tmp_path, "drift", *scope, env=env)
        assert result.code == 0, result.out + result.err
    execute(database_url, "ALTER TABLE t2.members ALTER COLUMN serial_no DROP DEFAULT")
    found = cli(tmp_path, "drift", "--tenants", env=env)
    assert found.out.splitlines() == [
        f"rich/t2: 1 difference (model at {found.out.split('(model at ')[1].split(')')[0]})",
        "  - column t2.members.serial_no: default = none, expected \"nextval('t2.members_serial_no_seq'::regclass)\"",
        "1 of 2 targets drifted",
    ]


def test_a_tenant_is_compared_with_the_model_of_its_own_version(tmp_path: Path, database_url: str) -> None:
    root, env = example(tmp_path, database_url)
    add_organizations(database_url, ["acme", "globex"])
    ok(cli(root, "migrate", "--tenants", env=env))
    tasks = root / "config" / "app" / "tenant-tables.yaml"
    tasks.write_text(
        tasks.read_text().replace(
            "    - {name: due_on, type: date}\n",
            "    - {name: due_on, type: date}\n    - {name: estimate, type: integer}\n",
        )
    )
    ok(cli(root, "generate-migrations", "--name", "estimate", env=env))
    ok(cli(root, "migrate", "--tenants", "--only-tenants", "org_acme", env=env))
    result = cli(root, "drift", "--tenants", env=env)  # org_globex is behind, not drifted
    assert (result.code, result.out.splitlines()) == (0, ["0 of 2 targets drifted"]), result.out
