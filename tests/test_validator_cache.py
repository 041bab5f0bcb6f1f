"""The compiled manifest validators are cached on disk (they cost a third of a no-op to build): the cache is
written where ``XDG_CACHE_HOME`` says, used by the next run, and a damaged or unwritable cache never changes
what validation finds."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import REPO_ROOT, run_cli, write

BAD_REPO = """apiVersion: orchestrator/v1
kind: Repo
metadata: {name: app}
spec:
  url: postgresql://localhost/app
  timeouts: {lockTimeout: soon}
"""


def _problems(cache: Path, config: Path | None = None) -> tuple[int, list[str]]:
    env = {"XDG_CACHE_HOME": str(cache)} | ({"ORCHESTRATOR_CONFIG": str(config)} if config else {})
    result = run_cli("validate", "--json", cwd=REPO_ROOT, env=env)
    return result.code, [p["message"] for p in json.loads(result.out)["problems"]]


def test_validators_are_cached_and_a_damaged_cache_is_rebuilt(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert _problems(cache) == (0, [])
    files = sorted((cache / "orchestrator").glob("*-validator-*.marshal"))
    assert [f.name.split("-")[0] for f in files] == ["repo", "resource"], "one compiled validator per kind"
    stamps = [f.stat().st_mtime_ns for f in files]
    assert _problems(cache) == (0, [])
    assert [f.stat().st_mtime_ns for f in files] == stamps, "the second run used the cache, it did not rebuild it"

    for damaged in files:
        damaged.write_bytes(b"\x00not a code object")
    config = tmp_path / "manifests"
    write(config / "repo.yaml", BAD_REPO)
    code, problems = _problems(cache, config)
    assert code == 2 and any("lockTimeout" in p or "soon" in p for p in problems), problems
    assert _problems(cache) == (0, []), "the example config is valid again with the rebuilt cache"
    assert all(f.read_bytes() != b"\x00not a code object" for f in files), "the damaged files were replaced"


def test_an_unwritable_cache_directory_changes_nothing(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache directory would be")
    assert _problems(blocked) == (0, [])
    config = tmp_path / "manifests"
    write(config / "repo.yaml", BAD_REPO)
    code, problems = _problems(blocked, config)
    assert code == 2 and problems
