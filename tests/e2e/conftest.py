from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def toy_adapter(toy_pairs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TinyLM LoRA adapter folder fine-tuned on a toy task, as an organization would make it."""
    from models.finetune import finetune_adapter
    from models.pairs import PairStore

    pair = PairStore(toy_pairs_dir).get("toy")
    return finetune_adapter(pair, pair.spec.tasks[0], tmp_path_factory.mktemp("adapter"), steps=60)
