"""Where the generator's state lives: files (the default, reviewed and committed in git: the GitOps and CI
path) or the database (``--state database``: a stateless sidecar whose manifests come from a ConfigMap or
git-sync).

Both are a small key-value store of text "files" addressed by their path relative to ``--root`` (the same
paths either way), so the generator and the runner have one code path: the file store lists a directory, the
database store selects rows of ``orchestrator.state_files`` in the repo's own database. Generating under the
database store holds the repo's advisory lock from reading the snapshots to writing the result, so two
replicas generating at once produce one migration, not two; the file store needs no lock (git is the review).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from orchestrator import model

KINDS = ("files", "database")


class Store(Protocol):
    kind: str

    def read(self, prefix: str) -> dict[str, str]:
        """Every file under ``prefix`` (a path relative to the root), as relative posix path -> text."""
        ...

    def write(self, files: Mapping[str, str]) -> None:
        """Write (or replace) files, all or none."""
        ...

    def delete(self, paths: Sequence[str]) -> None:
        """Delete files (relative paths; a missing one is no error); the database store: all or none."""
        ...

    def generating(self) -> contextlib.AbstractContextManager[None]:
        """Hold what makes read-plan-write atomic for this repo."""
        ...


class FileStore:
    kind = "files"

    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, prefix: str) -> dict[str, str]:
        base = self.root / prefix
        if not base.is_dir():
            return {}
        return {p.relative_to(self.root).as_posix(): p.read_text() for p in sorted(base.rglob("*")) if p.is_file()}

    def write(self, files: Mapping[str, str]) -> None:
        for relative, text in files.items():
            path = self.root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    def delete(self, paths: Sequence[str]) -> None:
        """Delete the files, then the directories that became empty (a table's snapshot folder)."""
        for relative in paths:
            path = self.root / relative
            path.unlink(missing_ok=True)
            parent = path.parent
            while parent not in (self.root, parent.parent) and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent

    def generating(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def store(kind: str, repo: model.Repo, root: Path, *, control: Any = None) -> Store:
    """The store of ``kind`` for ``repo``; ``control``: the control plane a database store reads through."""
    if kind == "database":
        from orchestrator import state_db  # psycopg only when the state is in the database

        return state_db.DatabaseStore(repo, root, control)
    return FileStore(root)
