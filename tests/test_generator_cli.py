"""generate-migrations as users run it: no-op, --check, --dry-run, destructive refusal, determinism."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from tests.conftest import REPO_ROOT, run_cli, write
from tests.harness import repo_yaml, res

ID = "    - {name: id, type: bigint, primaryKey: true}\n"


def files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def setup(root: Path, *resources: str) -> None:
    shutil.rmtree(root / "config", ignore_errors=True)
    write(root / "config" / "repo.yaml", repo_yaml())
    for i, text in enumerate(resources):
        write(root / "config" / f"r{i}.yaml", text)


def test_first_run_writes_then_nothing_to_do(tmp_path: Path) -> None:
    setup(tmp_path, res("t", "things", ID))
    first = run_cli("generate-migrations", "--name", "init", cwd=tmp_path)
    assert first.code == 0, first.err
    assert re.search(r"app \(global\): wrote priv/app/migrations/\d{14}_init\.sql", first.out)
    assert "+ table public.things (1 columns)" in first.out
    second = run_cli("generate-migrations", cwd=tmp_path)
    assert second.code == 0 and second.out.startswith("No changes detected")
    check = run_cli("generate-migrations", "--check", cwd=tmp_path)
    assert check.code == 0


def test_check_exits_1_and_writes_nothing(tmp_path: Path) -> None:
    setup(tmp_path, res("t", "things", ID))
    before = files(tmp_path)
    result = run_cli("generate-migrations", "--check", cwd=tmp_path)
    assert result.code == 1
    assert "would write priv/app/migrations/" in result.out
    assert files(tmp_path) == before


def test_dry_run_prints_files_and_writes_nothing(tmp_path: Path) -> None:
    setup(tmp_path, res("t", "things", ID))
    before = files(tmp_path)
    result = run_cli("generate-migrations", "--dry-run", cwd=tmp_path)
    assert result.code == 0
    assert '-- migrate:up\nCREATE TABLE "public"."things" (' in result.out
    assert '"table": {' in result.out  # the snapshot is printed too
    assert files(tmp_path) == before


def test_destructive_changes_are_refused_with_ways_forward(tmp_path: Path) -> None:
    setup(tmp_path, res("t", "things", ID + "    - {name: nick, type: text}\n"), res("o", "others", ID))
    assert run_cli("generate-migrations", cwd=tmp_path).code == 0
    setup(tmp_path, res("t", "things", ID + "    - {name: handle, type: text}\n"))
    before = files(tmp_path)
    refused = run_cli("generate-migrations", cwd=tmp_path)
    assert refused.code == 1
    assert "app: - column public.things.nick (destructive: its values are lost)" in refused.err
    assert "app: - table public.others (destructive: its rows are lost)" in refused.err
    assert "add renamedFrom: <old name>" in refused.err and "--allow-destructive" in refused.err
    assert files(tmp_path) == before
    allowed = run_cli("generate-migrations", "--allow-destructive", cwd=tmp_path)
    assert allowed.code == 0, allowed.err
    assert "- column public.things.nick" in allowed.out


def test_repo_allow_destructive_setting(tmp_path: Path) -> None:
    setup(tmp_path, res("t", "things", ID + "    - {name: nick, type: text}\n"))
    assert run_cli("generate-migrations", cwd=tmp_path).code == 0
    write(tmp_path / "config" / "repo.yaml", repo_yaml("  allowDestructive: true\n"))
    write(tmp_path / "config" / "r0.yaml", res("t", "things", ID))
    assert run_cli("generate-migrations", cwd=tmp_path).code == 0


def test_rename_hint_instead_of_drop(tmp_path: Path) -> None:
    setup(tmp_path, res("t", "things", ID + "    - {name: nick, type: text}\n"))
    assert run_cli("generate-migrations", cwd=tmp_path).code == 0
    setup(tmp_path, res("t", "things", ID + "    - {name: handle, type: text, renamedFrom: nick}\n"))
    result = run_cli("generate-migrations", cwd=tmp_path)
    assert result.code == 0 and "~ column public.things.nick renamed to handle" in result.out


def test_not_null_without_default_warns(tmp_path: Path) -> None:
    setup(tmp_path, res("t", "things", ID))
    assert run_cli("generate-migrations", cwd=tmp_path).code == 0
    setup(tmp_path, res("t", "things", ID + "    - {name: code, type: text, allowNull: false}\n"))
    result = run_cli("generate-migrations", cwd=tmp_path)
    assert result.code == 0
    assert "warning: app: column public.things.code is added NOT NULL without a default" in result.err


def test_output_is_deterministic_apart_from_versions(tmp_path: Path) -> None:
    outputs = []
    for name in ("one", "two"):
        root = tmp_path / name
        shutil.copytree(REPO_ROOT / "config", root / "config")
        assert run_cli("generate-migrations", "--name", "init", cwd=root).code == 0
        outputs.append({re.sub(r"\d{14}", "V", k): re.sub(r"\d{14}", "V", v) for k, v in files(root).items()})
    assert outputs[0] == outputs[1]
    assert any(k.startswith("priv/app/tenant_migrations/") for k in outputs[0])


def test_versions_strictly_increase(tmp_path: Path) -> None:
    setup(tmp_path, res("t", "things", ID))
    write(tmp_path / "priv/app/migrations/29991231235959_future.sql", "-- migrate:up\nSELECT 1;\n-- migrate:down\n")
    assert run_cli("generate-migrations", cwd=tmp_path).code == 0
    names = sorted(p.name for p in (tmp_path / "priv/app/migrations").iterdir())
    assert names == ["29991231235959_future.sql", "30000101000000_migrate_resources.sql"]


def test_bad_name_and_unknown_repo_are_usage_errors(tmp_path: Path) -> None:
    setup(tmp_path, res("t", "things", ID))
    assert run_cli("generate-migrations", "--name", "Bad Name", cwd=tmp_path).code == 2
    assert run_cli("generate-migrations", "--repo", "nope", cwd=tmp_path).code == 2
