"""The migrations build exactly the tables the code declares, on SQLite and on PostgreSQL."""

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from app.db.migrate import upgrade_head
from app.db.session import get_engine
from app.db.tables import Base


def assert_matches_declared(url: str) -> None:
    upgrade_head(url)
    upgrade_head(url)  # a second run is a no-op
    engine = get_engine(url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
    tables = set(inspect(engine).get_table_names()) - {"alembic_version"}
    assert tables == set(Base.metadata.tables)


def test_sqlite(tmp_path: Path) -> None:
    assert_matches_declared(f"sqlite:///{tmp_path / 'db.sqlite'}")


@pytest.mark.slow
def test_postgres(postgres_url: str) -> None:
    assert_matches_declared(postgres_url)
