"""One reconcile, as the daemon runs it: generate, migrate globally and in every tenant, report; invalid
manifests apply nothing; revisions and fingerprints follow the manifests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg

from orchestrator.daemon import reconcile
from tests.conftest import columns, write
from tests.harness import res

REPO = """apiVersion: orchestrator/v1
kind: Repo
metadata: {name: app}
spec:
  url: %s
  tenants: {static: [t1, t2], createSchemas: true}
"""
ID = "    - {name: id, type: bigint, primaryKey: true}\n"


def project(root: Path, url: str, extra: str = "") -> Path:
    config = root / "config"
    write(config / "repo.yaml", REPO % url)
    write(config / "accounts.yaml", res("account", "accounts", ID + extra))
    write(config / "notes.yaml", res("note", "notes", ID + extra, "  multitenancy: {strategy: context}\n"))
    return config


def test_reconcile_generates_and_rolls_out_an_edit(tmp_path: Path, database_url: str) -> None:
    config = project(tmp_path, database_url)
    first = reconcile.reconcile(config, tmp_path)
    assert first.ok, first.as_dict()
    assert len(first.generated) == 2 and first.applied["app"]
    assert [r.status for r in first.tenants["app"]] == ["migrated", "migrated"]
    before = reconcile.fingerprint(config, tmp_path, None)

    project(tmp_path, database_url, "    - {name: label, type: text}\n")
    assert reconcile.fingerprint(config, tmp_path, None) != before
    second = reconcile.reconcile(config, tmp_path)
    assert second.ok, second.as_dict()
    assert columns(database_url, "public", "accounts") == ["id", "label"]
    assert columns(database_url, "t1", "notes") == ["id", "label"] == columns(database_url, "t2", "notes")

    third = reconcile.reconcile(config, tmp_path)
    assert third.ok and third.generated == [] and third.applied == {"app": []}
    assert {r.status for r in third.tenants["app"]} == {"up to date"}


def test_invalid_manifests_apply_nothing_and_are_located(tmp_path: Path, database_url: str) -> None:
    config = project(tmp_path, database_url)
    write(config / "broken.yaml", res("broken", "broken", "    - {name: id, type: strng}\n"))
    report = reconcile.reconcile(config, tmp_path)
    assert not report.ok and report.applied == {} and report.generated == []
    assert [(p.file, p.line, p.field) for p in report.problems] == [
        ("config/broken.yaml", 8, "spec.attributes[0].type")
    ]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('public.accounts')").fetchone() == (None,)


def test_a_refused_destructive_change_is_reported_and_the_rest_still_applies(tmp_path: Path, database_url: str) -> None:
    config = project(tmp_path, database_url, "    - {name: label, type: text}\n")
    assert reconcile.reconcile(config, tmp_path).ok
    project(tmp_path, database_url)  # the label column disappears without renamedFrom
    report = reconcile.reconcile(config, tmp_path)
    assert not report.ok and "refusing destructive changes" in report.errors[0]
    assert columns(database_url, "public", "accounts") == ["id", "label"]


def test_revision_is_the_git_commit_in_a_checkout_else_a_content_hash(tmp_path: Path, database_url: str) -> None:
    config = project(tmp_path, database_url)
    hashed = reconcile.revision(config)
    assert hashed.startswith("sha256:")
    write(config / "accounts.yaml", res("account", "accounts", ID + "    - {name: x, type: text}\n"))
    assert reconcile.revision(config) != hashed
    env = {
        "PATH": "/usr/bin:/bin",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@e",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@e",
    }
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "config"]):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, env=env, capture_output=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert reconcile.revision(config) == f"git:{head.stdout.strip()}"
    write(config / "accounts.yaml", res("account", "accounts", ID + "    - {name: y, type: text}\n"))
    dirty = reconcile.revision(config)
    assert dirty.startswith(f"git:{head.stdout.strip()}+dirty."), "an uncommitted edit is not the commit"
    write(config / "accounts.yaml", res("account", "accounts", ID + "    - {name: z, type: text}\n"))
    assert reconcile.revision(config) not in (dirty, f"git:{head.stdout.strip()}")
