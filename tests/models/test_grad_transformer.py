"""The Gradient Transformer: cached decoding, learning, checkpoints, config validation."""

from __future__ import annotations

import pytest
import torch

from models.errors import ConfigError
from models.gt.checkpoint import load_gt, save_gt
from models.gt.network import GradientTransformer, GTArch, GTConfig

ARCH = GTArch(d_model=32, n_heads=4, d_ff=64, dropout=0.0)
CFG = GTConfig(src_layers=2, src_dim=24, tgt_layers=5, tgt_dim=40, arch=ARCH)


def model_with_stats(seed: int = 0) -> GradientTransformer:
    torch.manual_seed(seed)
    model = GradientTransformer(CFG)
    torch.nn.init.normal_(model.head.weight, std=0.05)  # the zero init would make every output the mean
    model.set_statistics(torch.randn(16, 2, 24) * 1e-3, torch.randn(16, 5, 40) * 1e-2 + 0.1)
    return model.eval()


def test_generate_with_cache_equals_generate_without():
    model = model_with_stats()
    src = torch.randn(3, 2, 24) * 1e-3
    assert torch.allclose(model.generate(src, use_cache=True), model.generate(src, use_cache=False), atol=1e-5)


def test_generation_is_consistent_with_teacher_forcing_on_its_own_outputs():
    model = model_with_stats()
    src = torch.randn(2, 2, 24) * 1e-3
    out = model.generate(src)
    pred, _ = model(src, out)
    assert torch.allclose(pred, model.normalise_target(out), atol=1e-4)


def test_a_training_step_lowers_the_loss():
    model = model_with_stats().train()
    src, tgt = torch.randn(8, 2, 24) * 1e-3, torch.randn(8, 5, 40) * 1e-2
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        _, loss = model(src, tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_an_untrained_model_outputs_the_mean_training_update():
    torch.manual_seed(0)
    model = GradientTransformer(CFG).eval()
    tgt = torch.randn(16, 5, 40) * 1e-2 + 0.1
    model.set_statistics(torch.randn(16, 2, 24), tgt)
    out = model.generate(torch.randn(3, 2, 24))
    assert torch.allclose(out, tgt.mean(0).expand(3, -1, -1), atol=1e-6)


def test_checkpoint_round_trip_gives_the_same_outputs(tmp_path):
    model = model_with_stats(seed=3)
    save_gt(model, tmp_path / "gt", {"pair": "x", "task": "t"})
    loaded, meta = load_gt(tmp_path / "gt")
    src = torch.randn(1, 2, 24) * 1e-3
    assert torch.equal(loaded.generate(src), model.generate(src))
    assert meta["gt"]["tgt_layers"] == 5 and meta["pair"] == "x" and len(meta["weights_sha256"]) == 64
    assert not list(tmp_path.glob("*.tmp"))


def test_inconsistent_configs_fail_when_built():
    with pytest.raises(ConfigError):
        GTArch(d_model=30, n_heads=4)
    with pytest.raises(ConfigError):
        GTConfig(0, 24, 5, 40)


def routed_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Three tasks, each with its own TinyLM direction and LLM update, plus run noise."""
    gen = torch.Generator().manual_seed(seed)
    src_dirs, tgt_dirs = torch.randn(3, 2, 24, generator=gen), torch.randn(3, 5, 40, generator=gen)
    labels = [f"task-{i % 3}" for i in range(30)]
    src = torch.stack([src_dirs[i % 3] for i in range(30)]) + 0.1 * torch.randn(30, 2, 24, generator=gen)
    tgt = torch.stack([tgt_dirs[i % 3] for i in range(30)]) + 0.1 * torch.randn(30, 5, 40, generator=gen)
    return src, tgt, labels


def test_an_untrained_routed_model_outputs_the_prototype_nearest_its_input():
    src, tgt, labels = routed_data()
    model = GradientTransformer(GTConfig(2, 24, 5, 40, ARCH, prototypes=3)).eval()
    model.set_statistics(src, tgt)
    model.set_prototypes(src, tgt, labels)
    out = model.generate(src[:3])  # one input of each task
    for i in range(3):
        own = tgt[[j for j, label in enumerate(labels) if label == labels[i]]].mean(0)
        others = [tgt[[j for j, label in enumerate(labels) if label == t]].mean(0) for t in set(labels) - {labels[i]}]
        assert torch.dist(out[i], own) < 0.2 * min(torch.dist(out[i], o) for o in others)
    plain = GradientTransformer(CFG).eval()
    plain.set_statistics(src, tgt)  # without prototypes: the mean of all tasks, whatever the input
    assert torch.allclose(plain.generate(src[:3]), tgt.mean(0).expand(3, -1, -1), atol=1e-5)


def test_a_routed_checkpoint_keeps_its_prototypes(tmp_path):
    src, tgt, labels = routed_data()
    model = GradientTransformer(GTConfig(2, 24, 5, 40, ARCH, prototypes=3)).eval()
    model.set_statistics(src, tgt)
    model.set_prototypes(src, tgt, labels)
    save_gt(model, tmp_path / "gt", {"pair": "test"})
    loaded, _ = load_gt(tmp_path / "gt")
    assert torch.equal(loaded.generate(src[:3]), model.generate(src[:3]))
    with pytest.raises(ConfigError, match="3 prototypes; the data has 2 groups"):
        model.set_prototypes(src[:2], tgt[:2], labels[:2])
