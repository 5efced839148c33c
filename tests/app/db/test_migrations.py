"""The migrations build exactly the tables the code declares, on SQLite and on PostgreSQL."""

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from app.db.migrate import alembic_config, migration_connection, upgrade_head
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


FIRST = "2b280bdbf26b"  # 0001_initial
ROWS = ["INSERT INTO organizations VALUES ('org_a', 'acme', CURRENT_TIMESTAMP)",
        "INSERT INTO jobs (id, org_id, pair, gt_id, inputs, status, progress, stage, cancel_requested, "
        "attempts, created_at) VALUES ('upg_a', 'org_a', 'toy', 'all', '[]', 'succeeded', 1, 'done', false, 1, "
        "CURRENT_TIMESTAMP)",
        "INSERT INTO job_events (job_id, created_at, stage, progress, message) "
        "VALUES ('upg_a', CURRENT_TIMESTAMP, 'done', 1, 'stored')",
        "INSERT INTO deltas (id, org_id, job_id, pair, gt_id, gt_version, sources, files, verification, created_at) "
        "VALUES ('dlt_a', 'org_a', 'upg_a', 'toy', 'all', 'v', '[]', '{}', '{}', CURRENT_TIMESTAMP)"]


def migrate(url: str, revision: str, down: bool = False) -> None:
    with migration_connection(url) as connection:
        config = alembic_config()
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


def counts(url: str) -> tuple[int, int]:
    with get_engine(url).connect() as connection:
        return tuple(connection.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in ("job_events", "deltas"))


def assert_rows_survive(url: str) -> None:
    """Migrations that rebuild `jobs` (SQLite's batch mode) keep the rows that reference it."""
    migrate(url, FIRST)
    with get_engine(url).begin() as connection:
        for row in ROWS:
            connection.execute(text(row))
    upgrade_head(url)
    assert counts(url) == (1, 1)
    migrate(url, FIRST, down=True)
    assert counts(url) == (1, 1)


def test_sqlite_rows_survive(tmp_path: Path) -> None:
    assert_rows_survive(f"sqlite:///{tmp_path / 'db.sqlite'}")


@pytest.mark.slow
def test_postgres_rows_survive(postgres_url: str) -> None:
    assert_rows_survive(postgres_url)
