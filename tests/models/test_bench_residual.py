"""What bench.residual measures with: maps from a TinyLM update's departure from its task's mean to the LLM
update's departure find such a relation where there is one, and beat the mean by nothing where there is none."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.residual import lora_variant, task_rows
from models.pairs import Pair


def runs(n: int, related: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = 1.0 + torch.randn(n, 40, generator=gen, dtype=torch.double)
    noise = torch.randn(n, 30, generator=gen, dtype=torch.double)
    mix = torch.randn(40, 30, generator=gen, dtype=torch.double) / 40 ** 0.5
    y = 2.0 + (x - 1.0) @ mix + 0.3 * noise if related else 2.0 + noise
    return x, y


def test_a_linear_relation_between_departures_is_found_on_held_out_and_private_runs() -> None:
    x, y = runs(33, related=True, seed=0)
    row = task_rows(x[:30], y[:30], [(x[i], y[i]) for i in range(30, 33)])
    assert row["held_out_runs"]["ridge"] > 0.3
    assert row["private"]["ridge"]["mean"] > 0.3
    assert row["alike"]["r"] > 0.3 and row["alike"]["p"] < 0.01


def test_unrelated_departures_give_no_map_an_edge_over_the_mean() -> None:
    x, y = runs(33, related=False, seed=1)
    row = task_rows(x[:30], y[:30], [(x[i], y[i]) for i in range(30, 33)])
    assert -0.1 < row["held_out_runs"]["ridge"] < 0.05  # the inner choice of strength shrinks it to the mean
    assert row["held_out_runs"]["nearest"] < -0.5  # a neighbour's departure is noise: about twice the error
    assert row["alike"]["p"] > 0.01


def test_a_lora_variant_shares_the_models_and_keeps_its_own_runs(toy_pair: Pair, tmp_path: Path) -> None:
    variant = lora_variant(toy_pair, 0.0, tmp_path / "pairs-lora-dropout-0")
    assert variant.spec.lora.dropout == 0.0 and toy_pair.spec.lora.dropout > 0
    assert variant.spec.lora.targets == toy_pair.spec.lora.targets and variant.spec.tasks == toy_pair.spec.tasks
    for side in ("tiny", "llm"):
        assert all(torch.equal(a, b) for a, b in zip(variant.init(side).values(), toy_pair.init(side).values(),
                                                      strict=True))
    assert variant.shadow_dir != toy_pair.shadow_dir
    assert lora_variant(toy_pair, 0.0, tmp_path / "pairs-lora-dropout-0").root == variant.root  # made once
