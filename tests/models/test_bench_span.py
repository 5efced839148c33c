"""What bench.span measures with: each run's last snapshot, a random span of the same size, and distillation
restricted to a span, whose coefficients learn from the teacher's answers through the LLM's forward pass."""

from __future__ import annotations

import torch

from bench.experiment import Scorer
from bench.span import last_snapshots, principal, random_like, span_distill
from models.data.tasks import Example
from models.pairs import Pair
from models.pairs.tasks import task_splits
from models.training.distill import DistillConfig
from models.training.finetune import FinetuneConfig
from models.training.shadow import ShadowSet


def shadow(runs: int, snapshots: int, shape: tuple[int, int], seed: int = 0) -> ShadowSet:
    gen = torch.Generator().manual_seed(seed)
    n = runs * snapshots
    tgt = torch.randn(n, *shape, generator=gen)
    return ShadowSet(torch.randn(n, 2, 3, generator=gen), tgt, torch.arange(runs).repeat_interleave(snapshots),
                     ["a"] * n)


def test_last_snapshots_keep_each_runs_update_and_random_spans_match_size_and_spread() -> None:
    data = shadow(4, 3, (2, 5))
    last = last_snapshots(data)
    assert torch.equal(last.tgt, data.tgt[[2, 5, 8, 11]]) and last.run.tolist() == [0, 1, 2, 3]
    fake = random_like(data, torch.Generator().manual_seed(1))
    assert fake.tgt.shape == data.tgt.shape and torch.allclose(fake.tgt.mean(0), data.tgt.mean(0), atol=1e-5)
    assert 0.5 < float(fake.tgt.std() / data.tgt.std()) < 2.0 and not torch.allclose(fake.tgt, data.tgt)
    mean, basis = principal(data, 3)
    assert basis.shape == (3, 10) and torch.allclose(mean, data.tgt.flatten(1).mean(0))
    assert torch.all(basis.norm(dim=1)[:-1] >= basis.norm(dim=1)[1:])  # largest spread first


def test_span_distillation_fits_the_teachers_answers_through_the_span(toy_pair: Pair) -> None:
    scorer = Scorer(toy_pair)
    examples = [Example(ex.prompt, ex.answer) for ex in task_splits(toy_pair, "rotate-6").public[:8]]
    shape = (scorer.layout.num_layers, scorer.layout.token_dim)
    data = shadow(6, 1, shape, seed=2)
    mean, basis = principal(ShadowSet(data.src, data.tgt * 0.05, data.run, data.task), 5)
    cfg = DistillConfig(FinetuneConfig(steps=25, batch_size=8, lr=1e-3))
    update, losses = span_distill(scorer, examples, mean, basis, cfg, lr=0.5)
    assert losses[-1] < losses[0] - 0.05, losses  # the same 8 answers every step: the fit improves
    coef = torch.linalg.lstsq(basis.T, (update.flatten() - mean)[:, None]).solution[:, 0]
    assert torch.allclose(basis.T @ coef + mean, update.flatten(), atol=1e-4) and coef.abs().max() > 0.01
