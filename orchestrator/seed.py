"""Example data: ``python -m orchestrator.seed --repo app config/app/seeds.sql`` runs a SQL file (``-``: standard
input) in a repo's database, in one transaction (like Ecto's ``priv/repo/seeds.exs``).

``make run`` uses it after migrating the global tables, so the example has tenants (its organizations) from the
first second. It connects as every command does (the repo's URL, or the embedded server). Not part of the CLI
contract: a development helper, which is why it is a module of its own and not an ``orchestrator`` command.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import psycopg

from orchestrator import config, db
from orchestrator.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, BadInputError, ConfigError, OrchestratorError


def seed(config_dir: Path, root: Path, repo_name: str, script: Path) -> None:
    """Run ``script`` (``-``: standard input) in the database of ``repo_name`` (one transaction: all or nothing)."""
    cfg = config.load(config_dir)
    repo = cfg.repo(repo_name)
    if repo is None:
        raise BadInputError(f"unknown repo {repo_name!r} (known: {', '.join(r.name for r in cfg.repos)})")
    try:
        text = sys.stdin.buffer.read() if str(script) == "-" else script.read_bytes()
    except OSError as exc:
        raise BadInputError(f"cannot read {script}: {exc.strerror}") from None
    with db.connect(repo, root, autocommit=False) as conn:
        conn.execute(text)  # no parameters: several statements may follow each other


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.seed", description="run a SQL file in a repo")
    parser.add_argument("--config", type=Path, default=Path(os.environ.get("ORCHESTRATOR_CONFIG", "config")))
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("ORCHESTRATOR_ROOT", ".")))
    parser.add_argument("--repo", required=True, help="the repo whose database the script runs in")
    parser.add_argument("script", type=Path, help="a SQL file, or - for standard input")
    args = parser.parse_args(argv)
    try:
        seed(args.config, args.root, args.repo, args.script)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_BAD_INPUT
    except OrchestratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except psycopg.Error as exc:
        print(f"error: {args.script}: {db.redact(str(exc).strip())}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{args.repo}: ran {args.script}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
