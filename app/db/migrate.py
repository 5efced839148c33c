"""Apply Alembic migrations from code (the serve command and the migrate command call this)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

import migrations
from app.config import get_settings
from app.db.session import get_engine


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    return config


@contextmanager
def migration_connection(url: str | None = None) -> Iterator[Connection]:
    """A connection in one transaction for migrations.

    On SQLite foreign keys are off meanwhile, and checked before the commit: batch migrations rebuild a
    table by copying and dropping it, and with them on, dropping `jobs` deletes its events and deltas
    (ON DELETE CASCADE). The switch works only outside a transaction, hence the driver's own connection.
    """
    engine = get_engine(url or get_settings().database_url)
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as connection:
        if sqlite:
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        try:
            with connection.begin():
                yield connection
                if sqlite and (broken := connection.exec_driver_sql("PRAGMA foreign_key_check").first()):
                    raise RuntimeError(f"a migration left a dangling foreign key: {tuple(broken)}")
        finally:
            if sqlite:
                connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")


def upgrade_head(url: str | None = None) -> None:
    """Bring the database to the newest schema; a no-op when it is already there."""
    with migration_connection(url) as connection:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
