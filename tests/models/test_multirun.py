"""Many LoRA runs in one loop equal each run trained alone: same data order, same init, dropout off."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from models.data.tasks import get_task, make_splits, subset
from models.errors import ConfigError
from models.pairs import Pair
from models.training.finetune import FinetuneConfig, finetune_lora
from models.training.multirun import MultiLoraLinear, finetune_many

CFG = FinetuneConfig(steps=12, batch_size=6, lr=3e-3, keep_last=3)


def datasets(n: int) -> list[list]:
    """Runs on different tasks, so their prompts differ in length: the shared batch pads every run wider
    than it would be padded alone."""
    tasks = ["rotate-3", "separate-7", "drop-5", "separate-2"]
    return [subset(make_splits(get_task(tasks[i % 4]), 200, 10, 10).public, 60, 0, i) for i in range(n)]


def assert_same_run(a, b) -> None:
    assert a.update.keys() == b.update.keys() and len(a.snapshots) == len(b.snapshots) == CFG.keep_last
    for got, want in zip([*a.snapshots, a.update], [*b.snapshots, b.update], strict=True):
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6)
    assert a.losses == pytest.approx(b.losses, rel=1e-4)


@pytest.mark.parametrize("side", ["tiny", "llm"])
def test_each_batched_run_equals_the_run_trained_alone(toy_pair: Pair, side: str):
    model, tok, init = toy_pair.load_model(side), toy_pair.load_tokenizer(side), toy_pair.init(side)
    lora = replace(toy_pair.spec.lora, dropout=0.0)
    data, seeds = datasets(3), [11, 12, 13]
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    many = finetune_many(model, tok, init, lora, data, CFG, seeds)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())  # the model is handed back
    assert not any(isinstance(m, MultiLoraLinear) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())  # as it came (freshly loaded: trainable)
    for run, examples, seed in zip(many, data, seeds, strict=True):
        alone = finetune_lora(model, tok, init, lora, examples, replace(CFG, seed=seed))
        assert_same_run(run, alone)
    first, second = many[0].update, many[1].update
    name = next(n for n in first if "lora_B" in n)
    assert first[name].abs().sum() > 0 and not torch.allclose(first[name], second[name])


def test_a_run_trains_the_same_whatever_runs_share_its_loop(toy_pair: Pair):
    """With dropout on, each run draws its masks from its own seed: a chunk rebuilt with other companions
    gives the same run."""
    model, tok, init = toy_pair.load_model("tiny"), toy_pair.load_tokenizer("tiny"), toy_pair.init("tiny")
    assert toy_pair.spec.lora.dropout > 0
    data = datasets(3)
    together = finetune_many(model, tok, init, toy_pair.spec.lora, data, CFG, [1, 2, 3])
    alone = finetune_many(model, tok, init, toy_pair.spec.lora, data[1:2], CFG, [2])
    assert_same_run(together[1], alone[0])
    other_seed = finetune_many(model, tok, init, toy_pair.spec.lora, data[1:2], CFG, [7])
    assert not all(torch.allclose(other_seed[0].update[k], alone[0].update[k]) for k in init)


def test_bad_run_lists_are_refused(toy_pair: Pair):
    model, tok, init = toy_pair.load_model("tiny"), toy_pair.load_tokenizer("tiny"), toy_pair.init("tiny")
    with pytest.raises(ConfigError, match="one seed per run"):
        finetune_many(model, tok, init, toy_pair.spec.lora, datasets(2), CFG, [1])
    with pytest.raises(ConfigError, match="no examples"):
        finetune_many(model, tok, init, toy_pair.spec.lora, [[]], CFG, [1])
    assert not any(isinstance(m, MultiLoraLinear) for m in model.modules())
