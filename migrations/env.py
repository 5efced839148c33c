"""Alembic environment: the URL comes from the app's settings unless the caller passed a connection."""

from __future__ import annotations

from alembic import context

from app.config import get_settings
from app.db.migrate import migration_connection
from app.db.tables import Base

config = context.config
target_metadata = Base.metadata


def run_offline() -> None:
    context.configure(url=get_settings().database_url, target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    with migration_connection() as connection:
        _run(connection)


def _run(connection) -> None:  # noqa: ANN001 - a SQLAlchemy Connection
    # Batch mode lets later migrations alter columns on SQLite too.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
