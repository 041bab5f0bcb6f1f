"""A corpus of bad manifests: each file in tests/bad/ ends with the exact errors a user must see.

Every case must fail validation with exit code 2 semantics (ConfigError) and exactly the listed
``line:column: field: message`` lines, no more and no fewer: a message that gets worse, or an error that
moves to the wrong line, fails here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from orchestrator import config
from orchestrator.errors import ConfigError
from tests.conftest import REPO_ROOT, run_cli

CASES = sorted((REPO_ROOT / "tests" / "bad").glob("*.yaml"))


def expected(case: Path) -> list[str]:
    lines = case.read_bytes().decode("utf-8", errors="replace").splitlines()
    return sorted(f"{case.name}:{line.removeprefix('# expect: ')}" for line in lines if line.startswith("# expect: "))


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 90
    assert all(expected(case) for case in CASES), "every case lists the errors it expects"


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_bad_manifest_reports_exact_located_errors(case: Path, tmp_path: Path) -> None:
    shutil.copy(case, tmp_path / case.name)
    with pytest.raises(ConfigError) as raised:
        config.load(tmp_path, base=tmp_path)
    assert sorted(str(p) for p in raised.value.problems) == expected(case)
    assert raised.value.exit_code == 2


def test_cli_prints_every_error_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "config"
    cfg.mkdir()
    for name in ("20_unknown_type.yaml", "12_unknown_kind.yaml"):
        shutil.copy(REPO_ROOT / "tests" / "bad" / name, cfg / name)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = run_cli("validate", "--config", "config", cwd=tmp_path)
    assert result.code == 2
    assert "config/20_unknown_type.yaml:15:27: spec.attributes[1].type: unknown type 'strng'" in result.err
    assert "config/12_unknown_kind.yaml:2:7: kind: unknown kind 'Table'; expected Repo or Resource" in result.err
    assert "2 problems in the manifests; nothing was written or applied" in result.err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_cli_unknown_tenant_column_and_conflicting_table_exit_2_and_write_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "config"
    cfg.mkdir()
    for name in ("99_attribute_strategy_unknown_tenant_column.yaml", "63_two_resources_disagree_on_table.yaml"):
        text = (REPO_ROOT / "tests" / "bad" / name).read_text()
        repo = f"app{name[:2]}"  # both cases declare repo app: give each its own, or that is a third error
        (cfg / name).write_text(text.replace("name: app}", f"name: {repo}}}").replace("repo: app", f"repo: {repo}"))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = run_cli("validate", "--config", "config", cwd=tmp_path)
    assert result.code == 2, result.err
    assert (
        "config/99_attribute_strategy_unknown_tenant_column.yaml:13:50: spec.multitenancy.attribute: tenant column "
        "'org_id' is not an attribute of this resource (did you mean 'orgid'?); its attributes are: id, orgid, payload"
    ) in result.err
    assert (
        "config/63_two_resources_disagree_on_table.yaml:24:7: spec.attributes[1]: table public.things is also defined "
        "by resource 'thing', differently: column extra: defined here, missing in "
        "config/63_two_resources_disagree_on_table.yaml:14; two resources on one table must agree"
    ) in result.err
    assert "3 problems in the manifests; nothing was written or applied" in result.err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_cli_json_lists_problems(tmp_path: Path) -> None:
    shutil.copy(REPO_ROOT / "tests" / "bad" / "29_unknown_repo.yaml", tmp_path / "bad.yaml")
    result = run_cli("validate", "--config", ".", "--json", cwd=tmp_path)
    assert result.code == 2
    import json

    report = json.loads(result.out)
    assert report["valid"] is False
    assert report["problems"] == [
        {
            "file": "bad.yaml",
            "line": 11,
            "column": 9,
            "field": "spec.repo",
            "message": "unknown repo 'ap' (did you mean 'app'?)",
        }
    ]
