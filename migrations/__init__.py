"""Alembic migrations of the service's database (a package, so installs carry them)."""
