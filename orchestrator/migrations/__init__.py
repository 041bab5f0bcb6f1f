"""Applying migrations: reading migration files (``files``), and, as the runner grows, planning and executing."""
