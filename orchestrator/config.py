"""Load a configuration directory into the model: find files, parse, check, build.

This is the one entry point the CLI and the daemon use; it either returns a ``Config`` that every later step can
trust, or raises ``ConfigError`` with every problem found in every file. Nothing is written either way.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator import model
from orchestrator.errors import ConfigError, Problem, display_path
from orchestrator.manifests import build, loader


def load(config_dir: Path, *, base: Path | None = None) -> model.Config:
    """Return the validated model of every manifest under ``config_dir``, or raise ``ConfigError``.

    ``base`` is the directory file names in messages are shown relative to (default: the cwd).
    """
    if not config_dir.is_dir():
        shown = display_path(config_dir, base)
        raise ConfigError([Problem(shown, 1, 1, "", "config directory not found")])
    documents: list[loader.Document] = []
    problems: list[Problem] = []
    files = loader.find_files(config_dir)
    for path in files:
        docs, found = loader.load_file(path, base)
        documents.extend(docs)
        problems.extend(found)
    if not files:
        shown = display_path(config_dir, base)
        problems.append(Problem(shown, 1, 1, "", "no *.yaml or *.yml manifests found"))
    config, found = build.build(documents)
    problems.extend(found)
    if problems or config is None:
        raise ConfigError(problems)
    return config
