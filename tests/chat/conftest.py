"""Upgraded toy adapters made by the real upgrade path, shared by the chat tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def one_torch_thread() -> Iterator[None]:
    # The server under test decodes on the same two cores; two processes each spinning several
    # OpenMP threads slow both down by orders of magnitude.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _upgrade(pairs_dir: Path, adapter_dir: Path, out: Path) -> Path:
    from models.pairs import ALL_TASKS, PairStore
    from models.upgrade import run_upgrade

    run_upgrade(PairStore(pairs_dir).get("toy"), ALL_TASKS, [adapter_dir / "adapter_model.safetensors"], out)
    return out


@pytest.fixture(scope="session")
def upgraded(toy_pairs_dir: Path, toy_adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The LLM adapter the GT generates from an organization's TinyLM adapter on the pair's first task."""
    return _upgrade(toy_pairs_dir, toy_adapter, tmp_path_factory.mktemp("upgraded"))


@pytest.fixture(scope="session")
def upgraded_other(toy_pairs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second generated adapter, from a TinyLM adapter fine-tuned on another task."""
    from models.finetune import finetune_adapter
    from models.pairs import PairStore

    pair = PairStore(toy_pairs_dir).get("toy")
    tiny = finetune_adapter(pair, pair.spec.tasks[2], tmp_path_factory.mktemp("adapter-other"), steps=40)
    return _upgrade(toy_pairs_dir, tiny, tmp_path_factory.mktemp("upgraded-other"))
