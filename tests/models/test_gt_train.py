"""Training a GT: validation by whole runs of every task, then a refit on every run."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from models.errors import ConfigError
from models.gt.network import GTArch
from models.gt.train import GTTrainConfig, _fit, split_runs, train_gt, untrained_gt
from models.training.shadow import ShadowSet


def shadow_set(tasks: int, runs_per_task: int, snapshots: int = 3) -> ShadowSet:
    """Each task's TinyLM and LLM updates lie around a direction of its own."""
    gen = torch.Generator().manual_seed(0)
    n = tasks * runs_per_task * snapshots
    run = torch.arange(tasks * runs_per_task).repeat_interleave(snapshots)
    task = run // runs_per_task
    src_dirs, tgt_dirs = torch.randn(tasks, 2, 8, generator=gen), torch.randn(tasks, 3, 12, generator=gen)
    src = src_dirs[task] + 0.3 * torch.randn(n, 2, 8, generator=gen)
    tgt = tgt_dirs[task] + 0.1 * torch.randn(n, 3, 12, generator=gen)
    return ShadowSet(src, tgt, run, [f"task-{int(t)}" for t in task])


def test_validation_holds_out_whole_runs_of_every_task():
    data = shadow_set(tasks=4, runs_per_task=4)
    train, val = split_runs(data, share=0.1, seed=0)
    assert sorted(set(val.task)) == sorted(set(data.task))  # every task asked about
    assert not set(train.run.tolist()) & set(val.run.tolist())  # no run on both sides
    assert len(set(val.run.tolist())) == 4 and len(train.task) + len(val.task) == len(data.task)
    small = shadow_set(tasks=1, runs_per_task=4)
    assert split_runs(small, 0.1, 0)[1] is small  # under 5 runs, every run trains and validates


def test_the_chosen_step_count_is_trained_again_on_every_run():
    data = shadow_set(tasks=2, runs_per_task=4)
    cfg = GTTrainConfig(steps=60, eval_every=10, batch_size=8, arch=GTArch(d_model=16, n_heads=2, d_ff=32), lr=3e-3)
    model, info = train_gt(data, cfg, progress=False)
    assert info["train_pairs"] + info["val_pairs"] == len(data.task)
    assert info["best_step"] > 0 and info["refit_pairs"] == len(data.task)
    again, _ = train_gt(data, cfg, progress=False)
    assert torch.equal(again.generate(data.src[:2]), model.generate(data.src[:2]))  # deterministic
    routed, info = train_gt(data, replace(cfg, route=True), progress=False)
    assert info["refit_pairs"] == len(data.task)  # zero steps chosen or not, the final model sees every run
    assert model.cfg.prototypes == 0 and routed.cfg.prototypes == len(set(data.run.tolist()))


def test_routing_by_task_starts_from_each_tasks_mean_update():
    data = shadow_set(tasks=3, runs_per_task=4)
    cfg = GTTrainConfig(route=True, route_by="task", arch=GTArch(d_model=16, n_heads=2, d_ff=32))
    model = untrained_gt(data, cfg)
    assert model.cfg.prototypes == 3
    out = model.generate(data.src)
    for name in sorted(set(data.task)):  # the tasks lie apart: each input starts from its own task's mean
        rows = torch.tensor([t == name for t in data.task])
        assert torch.allclose(out[rows], data.tgt[rows].mean(0).expand_as(out[rows]), atol=1e-3)
    with pytest.raises(ConfigError, match="route_by"):
        GTTrainConfig(route=True, route_by="family")


def test_the_routing_temperature_learns_at_its_own_rate():
    data = shadow_set(tasks=2, runs_per_task=4)
    cfg = GTTrainConfig(steps=30, eval_every=10, batch_size=8, arch=GTArch(d_model=16, n_heads=2, d_ff=32),
                        lr=1e-4, route=True, refit=False)
    moved = {}
    for rate in (None, 0.1):
        model, _ = _fit(data, None, replace(cfg, temperature_lr=rate), cfg.steps, progress=False)
        moved[rate] = abs(model.log_temperature.item() - math.log(30.0))
    assert moved[0.1] > 20 * moved[None] and moved[0.1] > 0.1

