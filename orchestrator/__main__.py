"""Allow ``python -m orchestrator``."""

from orchestrator import cli

cli.run()
