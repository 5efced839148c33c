"""Apply Alembic migrations from code (the serve command and the migrate command call this)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations
from app.config import get_settings
from app.db.session import get_engine


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    return config


def upgrade_head(url: str | None = None) -> None:
    """Bring the database to the newest schema; a no-op when it is already there."""
    engine = get_engine(url or get_settings().database_url)
    with engine.begin() as connection:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
