"""An in-process client on the real app, a real SQLite database and the embedded broker."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.db import queries
from app.db.migrate import upgrade_head
from app.db.session import session_scope
from app.main import create_app
from tests.conftest import use_settings


@dataclass
class Api:
    client: TestClient
    settings: Settings
    keys: dict[str, str]

    def auth(self, org: str = "acme") -> dict[str, str]:
        if org not in self.keys:
            with session_scope() as session:
                _, self.keys[org] = queries.create_key(session, org)
        return {"Authorization": f"Bearer {self.keys[org]}"}

    def stored_files(self) -> list[Path]:
        """Everything in the blob store and its temporary folder."""
        return sorted(p for d in (self.settings.blobs_dir, self.settings.tmp_dir) for p in d.rglob("*")
                      if p.is_file())


def _api(settings: Settings) -> Iterator[Api]:
    upgrade_head()
    with TestClient(create_app()) as client:
        yield Api(client, settings, {})


@pytest.fixture
def api(service_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    """No model pairs: for what needs none (auth, errors, health)."""
    yield from _api(use_settings(monkeypatch, pairs_dir=str(tmp_path / "no-pairs")))


@pytest.fixture
def toy_api(service_env: Settings, toy_pairs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    yield from _api(use_settings(monkeypatch, pairs_dir=str(toy_pairs_dir), max_upload_bytes=str(64 * 1024)))
