from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings


def test_defaults_live_in_the_data_folder(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "d")
    assert settings.database_url == f"sqlite:///{tmp_path / 'd' / 'gradlift.db'}"
    assert settings.broker_url == f"sqla+sqlite:///{tmp_path / 'd' / 'broker.db'}"
    assert settings.pairs_dir == tmp_path / "d" / "pairs"
    assert settings.visibility_timeout_s > settings.job_time_limit_s
    assert not settings.broker_is_redis


def test_relative_data_dir_becomes_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRADLIFT_DATA_DIR", "rel")
    assert Settings().data_dir == tmp_path / "rel"


@pytest.mark.parametrize("values", [
    {"database_url": "mysql://x/y"},
    {"broker_url": "amqp://guest@localhost//"},
    {"max_upload_bytes": 0},
    {"job_time_limit_s": 100, "visibility_timeout_s": 50},
])
def test_invalid_settings_fail_at_start(values: dict, tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path, **values)
