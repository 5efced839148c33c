"""What bench.quality measures with: private draws per seed, the distillation baselines' start, and how
results of settings run apart become one file."""

from __future__ import annotations

import pytest
import torch

from bench.experiment import Distiller, PrivateRun, Scorer, private_examples, span_bound
from bench.quality import merge, setting
from models.gt.baselines import Ridge, mean_update, nearest
from models.lora.update import LoraLayout
from models.pairs import Pair
from models.training.distill import DistillConfig
from models.training.finetune import FinetuneConfig
from models.training.shadow import ShadowSet


def test_each_seed_draws_new_private_inputs_and_never_public_or_test_ones(toy_pair: Pair) -> None:
    splits, zero = private_examples(toy_pair, "rotate-6", 0)
    assert zero == splits.private
    held = {ex.prompt for ex in splits.public + splits.test}
    draws = [private_examples(toy_pair, "rotate-6", seed)[1] for seed in (1, 2)]
    for draw in draws:
        assert len(draw) == len(splits.private)
        assert not held & {ex.prompt for ex in draw}
        assert len({ex.prompt for ex in draw} & {ex.prompt for ex in splits.private}) < len(draw) // 10
    assert draws[0] != draws[1]


def test_gt_plus_distill_starts_from_the_gts_update(toy_pair: Pair) -> None:
    """With a learning rate of almost 0 a distillation changes (almost) nothing: from the GT's update it
    gives that update back, from the pair's init it gives no update."""
    scorer = Scorer(toy_pair)
    tiny_layout = LoraLayout(toy_pair.init("tiny"), toy_pair.spec.lora.targets)
    tiny = tiny_layout.to_tokens({k: torch.randn_like(v) * 0.01 for k, v in toy_pair.init("tiny").items()})
    run = PrivateRun("rotate-6", [], tiny, torch.zeros(0), 0.0, 0.0, 1.0, 0.0, seed=0)
    still = Distiller(["rol ?: abcdefgh #### ", "rol ?: hgfedcba #### "] * 4,
                      DistillConfig(FinetuneConfig(steps=1, batch_size=2, lr=1e-12), prompts=8, max_new_tokens=9))
    start = torch.randn(*scorer.layout.to_tokens(toy_pair.init("llm")).shape) * 0.01
    from_gt, seconds = still.tokens(scorer, run, start)
    assert torch.allclose(from_gt, start, atol=1e-6) and seconds > 0
    from_init, _ = still.tokens(scorer, run)
    assert from_init.abs().max() < 1e-6


def test_a_setting_reports_each_method_over_seeds() -> None:
    def row(task: str, seed: int, gt: float, ridge: float) -> dict:
        return {"task": task, "seed": seed, "n_test": 10, "gt_sample": [seed], "p_base": 0.0, "p_s": 0.2,
                "p_t": 1.0, "p_gt": gt, "pgr": gt, "baselines": {"ridge": {"pgr": ridge}}}

    block = setting("A", [row("a", 0, 1.0, 0.0), row("a", 1, 0.5, 0.2), row("b", 0, 0.0, 0.4), row("b", 1, 0.5, 0.6)])
    assert block["tasks"][0]["gt_sample"] == [0]
    assert block["tasks"][0]["pgr_by_method"]["gt"] == {"mean": 0.75, "std": 0.25, "n": 2}
    assert (block["tasks"][0]["pgr"], block["tasks"][0]["pgr_sd"], block["tasks"][0]["seeds"]) == (0.75, 0.25, 2)
    assert block["average_by_method"]["gt"]["per_seed"] == [0.5, 0.5]
    assert block["average_by_method"]["ridge"]["per_seed"] == [0.2, 0.4]
    assert block["average_by_method"]["distill"]["n"] == 0


def test_results_of_other_settings_merge_into_one_file() -> None:
    def part(settings: dict, each: list[float], config: dict | None = None) -> dict:
        return {"pair": "toy", "seeds": 3, "config": config or {"shadow_k": 8}, "settings": settings,
                "timings_s": {"gt_train_each": each, "shadow_build": sum(each), "llm_finetune_private": 5.0}}

    merged = merge([part({"A": {"x": 1}, "C": {"x": 3}}, [1.0, 2.0]), part({"B": {"x": 2}}, [4.0])])
    assert list(merged["settings"]) == ["A", "B", "C"] and merged["settings"]["B"]["x"] == 2
    assert merged["timings_s"]["gt_train_each"] == [1.0, 2.0, 4.0] and merged["timings_s"]["gt_train"] == 7.0
    assert merged["timings_s"]["shadow_build"] == 4.0  # the longest of the processes' builds
    own = merge([part({"A": {}}, [1.0], {"shadow_k": 8, "also": []}),
                 part({"B": {}}, [1.0], {"shadow_k": 8, "also": ["routed"]})])
    assert own["settings"]["B"]["config"]["also"] == ["routed"] and "also" not in own["config"]
    with pytest.raises(SystemExit, match="configuration"):
        merge([part({"A": {}}, [1.0]), part({"B": {}}, [1.0], {"shadow_k": 4})])
    with pytest.raises(SystemExit, match="two files"):
        merge([part({"A": {}}, [1.0]), part({"A": {}}, [1.0])])


def test_the_span_bound_is_no_farther_from_the_llms_update_than_any_map_inside_the_span() -> None:
    gen = torch.Generator().manual_seed(0)
    src, tgt = torch.randn(12, 3, 8, generator=gen), torch.randn(12, 4, 16, generator=gen)
    shadow = ShadowSet(src, tgt, torch.arange(12), ["a"] * 12)
    inside = tgt.mean(0) + 0.7 * (tgt[3] - tgt[5]) - 0.2 * (tgt[8] - tgt[0])
    assert torch.allclose(span_bound(shadow, inside), inside, atol=1e-5)  # what the span holds, it finds
    target = torch.randn(4, 16, generator=gen)  # 64 coordinates, 11 directions: mostly outside
    bound = span_bound(shadow, target)
    gap = (target - bound).flatten()
    assert torch.allclose((tgt - tgt.mean(0)).flatten(1) @ gap, torch.zeros(12), atol=1e-4)  # orthogonal
    query = torch.randn(3, 8, generator=gen)
    for other in (mean_update(shadow), nearest(shadow, query), Ridge(shadow).predict(query)):
        assert gap.norm() <= (target - other).norm() + 1e-6
    assert gap.norm() > 0.5 * target.norm()
