"""The built toy pair, shared with the service tests through the session fixture `toy_pairs_dir`."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.pairs import Pair, PairStore


@pytest.fixture(scope="session")
def toy_pair(toy_pairs_dir: Path) -> Pair:
    return PairStore(toy_pairs_dir).get("toy")
