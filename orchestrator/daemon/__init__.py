"""The long-running service: reconcile manifests into databases on a schedule (``serve`` builds on this)."""
