"""Upgraded toy adapters made by the real upgrade path, shared by the chat tests.

They come from Gradient Transformers trained for this package: one per task, on shadow fine-tunes long
enough for the toy LLM to learn the task (the session's quick GT "all" learns from 30-step fine-tunes that
teach the LLM nothing, so its upgrades answer no question right and tell two tasks apart only by chance).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from models.pairs import Pair, PairStore

# The first task: what the session's TinyLM adapter is fine-tuned on; the other: a second, unlike adapter.
TASK, OTHER_TASK = "rotate-6", "separate-7"


@pytest.fixture(autouse=True, scope="package")
def one_torch_thread() -> Iterator[None]:
    # The server under test decodes on the same two cores; two processes each spinning several
    # OpenMP threads slow both down by orders of magnitude.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_task_gts(pair: Pair, tasks: tuple[str, ...]) -> None:
    """One GT per task, as `bench.quality` trains them for setting A but smaller: 2 shadow fine-tunes of 60
    steps per task (the toy LLM answers 100% of a task after 60; measured), a small GT (~40 s in all)."""
    from models.gt.checkpoint import data_hash, save_gt
    from models.gt.network import GTArch
    from models.gt.train import GTTrainConfig, train_gt
    from models.training.finetune import FinetuneConfig
    from models.training.shadow import ShadowPlan, build_shadow, load_shadow

    plans = [ShadowPlan(task, subsets=2, subset_size=300, keep_last=4, finetune=FinetuneConfig(steps=60))
             for task in tasks]
    build_shadow(pair, plans, workers=2, progress=False)
    for plan in plans:
        data = load_shadow(pair, [plan])
        model, info = train_gt(data, GTTrainConfig(steps=100, eval_every=50, arch=GTArch(d_model=64, d_ff=128)),
                               progress=False)
        save_gt(model, pair.gt_dir(plan.task), {"pair": pair.id, "task": plan.task, "tasks": [plan.task],
                                                "data_sha256": data_hash(data.src, data.tgt),
                                                "trained_by": "tests/chat", **info}, data)


@pytest.fixture(scope="session")
def chat_pairs_dir(toy_pairs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's toy pair (same models and LoRA init) with a trained GT for each chat task."""
    root = tmp_path_factory.mktemp("chat-pairs")
    shutil.copytree(toy_pairs_dir / "toy", root / "toy", ignore=shutil.ignore_patterns("gts", "shadow"))
    train_task_gts(PairStore(root).get("toy"), (TASK, OTHER_TASK))
    return root


@pytest.fixture(scope="session")
def chat_pair(chat_pairs_dir: Path) -> Pair:
    return PairStore(chat_pairs_dir).get("toy")


def _upgrade(pair: Pair, gt_id: str, adapter_dir: Path, out: Path) -> Path:
    from models.upgrade import run_upgrade

    run_upgrade(pair, gt_id, [adapter_dir / "adapter_model.safetensors"], out)
    return out


@pytest.fixture(scope="session")
def upgraded(chat_pair: Pair, toy_adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The LLM adapter the GT generates from an organization's TinyLM adapter on the pair's first task."""
    assert chat_pair.spec.tasks[0] == TASK  # the session's TinyLM adapter is fine-tuned on it
    return _upgrade(chat_pair, TASK, toy_adapter, tmp_path_factory.mktemp("upgraded"))


@pytest.fixture(scope="session")
def upgraded_other(chat_pair: Pair, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second generated adapter, from a TinyLM adapter fine-tuned on another task."""
    from models.training.finetune import finetune_adapter

    tiny = finetune_adapter(chat_pair, OTHER_TASK, tmp_path_factory.mktemp("adapter-other"), steps=40)
    return _upgrade(chat_pair, OTHER_TASK, tiny, tmp_path_factory.mktemp("upgraded-other"))
