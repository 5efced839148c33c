"""What bench.distill compares: distillation's lengths and restarts from one labelling, and how the probe check
would choose between restarts."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench.distill import finish, merge, picks, summarise
from models.errors import ConfigError
from models.lora.update import LoraLayout, Update, mean
from models.pairs import Pair
from models.training.distill import DistillConfig, distill, learn, learn_steps, teacher_examples
from models.training.finetune import FinetuneConfig

PROMPTS = [f"rol ?: {w} #### " for w in ("abcdefgh", "hgfedcba", "bcdefgha", "cdefghab")] * 4


def _tiny(pair: Pair) -> Update:
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in pair.init("tiny").items()}


def _same(a: Update, b: Update) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_distillation_is_labelling_then_learning_and_restarts_differ_only_by_seed(toy_pair: Pair) -> None:
    """distill() equals learn() on teacher_examples()' labels, so a benchmark may label once and learn many
    times; the same seed learns the same update, another seed another one."""
    cfg = DistillConfig(FinetuneConfig(steps=3, batch_size=4, lr=3e-3), prompts=16, max_new_tokens=9)
    tiny = _tiny(toy_pair)
    whole = distill(toy_pair, tiny, PROMPTS, cfg)
    examples = teacher_examples(toy_pair, tiny, PROMPTS, cfg)
    assert len(examples) == whole.labelled
    again = learn(toy_pair, examples, cfg.finetune)
    assert _same(whole.update, again)
    other = learn(toy_pair, examples, replace(cfg.finetune, seed=1))
    assert not _same(again, other)
    layout = LoraLayout(toy_pair.init("llm"), toy_pair.spec.lora.targets)
    assert layout.to_tokens(again).abs().max() > 0


def test_a_distillation_may_deliver_its_last_steps_averaged(toy_pair: Pair) -> None:
    """average_tail: the mean of the LoRA factors over the run's last steps, the same run as the last step's
    (so one run gives both), and a distillation from a start keeps the start in every step's update."""
    cfg = DistillConfig(FinetuneConfig(steps=4, batch_size=4, lr=3e-3), prompts=16, max_new_tokens=9,
                        average_tail=0.75)
    assert cfg.average_last == 3
    examples = teacher_examples(toy_pair, _tiny(toy_pair), PROMPTS, cfg)
    steps = learn_steps(toy_pair, examples, replace(cfg.finetune, keep_last=3))
    assert len(steps) == 3 and _same(steps[-1], learn(toy_pair, examples, cfg.finetune))
    averaged = learn(toy_pair, examples, cfg.finetune, average_last=3)  # a running mean: sums in another order
    assert all(torch.allclose(averaged[k], v, atol=1e-7) for k, v in mean(steps).items())
    assert not _same(averaged, steps[-1])
    assert _same(distill(toy_pair, _tiny(toy_pair), PROMPTS, cfg).update, averaged)
    with pytest.raises(ConfigError, match="cannot average the last 5 of 4 steps"):
        learn(toy_pair, examples, cfg.finetune, average_last=5)
    start = {k: torch.full_like(v, 0.01) for k, v in steps[0].items()}
    from_start = learn_steps(toy_pair, examples, replace(cfg.finetune, keep_last=2), start)
    assert len(from_start) == 2 and not _same(from_start[0], from_start[1])
    with pytest.raises(ConfigError, match="distillation settings"):
        DistillConfig(FinetuneConfig(steps=4), average_tail=1.5)


def _variant(steps: int, restart: int, p: float, rate: float) -> dict:
    return {"steps": steps, "restart": restart, "p": p, "pgr": p / 0.8, "probe_rate": rate, "train_s": 1.0}


def test_the_probe_check_picks_the_restart_that_agrees_with_the_tinylm_most() -> None:
    variants = [_variant(40, 0, 0.5, 0.6), _variant(40, 1, 0.3, 0.7), _variant(40, 2, 0.7, 0.7)]
    got = picks(variants)
    assert got["first"]["p"] == 0.5
    assert got["chosen"]["p"] == 0.3  # the first of the most agreeing, though another tests better
    assert got["best"]["p"] == 0.7
    assert got["mean"]["p"] == pytest.approx(0.5)
    assert picks([_variant(40, 0, 0.5, 0.6), _variant(40, 1, 0.9, 0.6)])["chosen"]["restart"] == 0  # a tie


def _row(task: str, seed: int, ps: list[float]) -> dict:
    variants = [_variant(n, r, p, p) for (n, r), p in zip([(40, 0), (40, 1), (120, 0), (120, 1)], ps, strict=True)]
    return {"task": task, "seed": seed, "n_test": 5, "p_base": 0.0, "p_s": 0.1, "p_t": 0.9, "probes": 4,
            "base_probe_rate": 0.0, "labelled": 10, "teacher_s": 1.0, "variants": variants}


def test_runs_over_parts_of_the_keys_merge_into_the_whole(tmp_path: Path) -> None:
    config = {"families": ["pick6"], "prompts": "own", "steps": [40, 120], "restarts": 2, "probes": 4}
    a = {"pair": "smol", "config": {**config, "keys": [1]}, "rows": [_row("pick6-1", 0, [0.2, 0.4, 0.6, 0.5])]}
    b = {"pair": "smol", "config": {**config, "keys": [2]}, "rows": [_row("pick6-2", 0, [0.1, 0.1, 0.3, 0.5])]}
    finish(merge([b, a]), tmp_path / "merged.json")
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged["config"]["keys"] == [1, 2] and [r["task"] for r in merged["rows"]] == ["pick6-1", "pick6-2"]
    assert merged["summary"]["40"]["first"]["p"]["mean"] == pytest.approx(0.15)
    assert merged["summary"]["40"]["chosen"]["p"]["mean"] == pytest.approx(0.25)  # 0.4 and the tie's first 0.1
    assert merged["summary"]["120"]["best"]["p"]["mean"] == pytest.approx(0.55)
    with pytest.raises(SystemExit, match="differ"):
        merge([a, {**b, "config": {**b["config"], "restarts": 3}}])
    with pytest.raises(SystemExit, match="two results"):
        merge([a, a])


def test_averaged_variants_are_summarised_apart_from_the_last_steps() -> None:
    row = _row("pick6-1", 0, [0.2, 0.4, 0.6, 0.5])
    row["variants"] += [{**v, "average_last": 30, "p": v["p"] + 0.1} for v in row["variants"] if v["steps"] == 120]
    summary = summarise([row])
    assert list(summary) == ["40", "120", "120~30"]
    assert summary["120~30"]["first"]["p"]["mean"] == pytest.approx(0.7)
    assert summary["120"]["first"]["p"]["mean"] == pytest.approx(0.6)
    other = _row("pick6-2", 0, [0.2, 0.4, 0.5, 0.5])
    other["variants"] += [{**v, "average_last": 30, "p": v["p"] - 0.2} for v in other["variants"] if v["steps"] == 120]
    against = summarise([row, other])["120~30"]["against_last"]
    assert (against["better"], against["worse"], against["n"]) == (1, 1, 2)
    assert against["p_diff"] == pytest.approx(-0.05) and against["p_diff_se"] == pytest.approx(0.15)
