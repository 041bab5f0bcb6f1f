"""Allow ``python -m orchestrator``."""

from orchestrator import cli

raise SystemExit(cli.main())
