"""Orchestrator: keep PostgreSQL schemas (global and schema-per-tenant) in line with YAML manifests."""

__version__ = "0.1.0"
