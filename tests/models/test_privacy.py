"""Privacy of the TinyLM update: settings validated when built, output noise at the stated scale with
the norm bounded, DP-SGD's per-example gradients and its spent epsilon recorded in a valid adapter."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from models.data.tasks import get_task, make_splits
from models.data.textdata import encode_batch
from models.errors import ConfigError
from models.lora.privacy import DPConfig, UpdateNoise, clip_norm, spent_epsilon
from models.lora.update import read_adapter, subtract, validate_adapter_file
from models.pairs import Pair
from models.training.finetune import FinetuneConfig, finetune_adapter, finetune_lora, per_example_loss
from models.training.shadow import ShadowPlan, build_shadow, load_shadow, shadow_privacy


@pytest.mark.parametrize("make", [
    lambda: DPConfig(epsilon=0), lambda: DPConfig(epsilon=float("inf")), lambda: DPConfig(1, delta=1),
    lambda: DPConfig(1, clip=0), lambda: UpdateNoise("uniform", 1, 1), lambda: UpdateNoise("gaussian", -1, 1),
    lambda: UpdateNoise("laplace", 1, 0), lambda: UpdateNoise("gaussian", 1, 1, delta=0),
])
def test_settings_that_do_not_fit_fail_when_built(make) -> None:
    with pytest.raises(ConfigError):
        make()


def fake_update(scale: float = 1.0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"a.lora_A.weight": torch.randn(200, 50, generator=gen) * scale,
            "a.lora_B.weight": torch.randn(50, 200, generator=gen) * scale}


def flat(update: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([update[k].reshape(-1) for k in sorted(update)])


@pytest.mark.parametrize("kind, order", [("gaussian", 2), ("laplace", 1)])
def test_output_noise_has_the_stated_scale_and_the_clip_bounds_the_norm(kind: str, order: int) -> None:
    update = fake_update()
    quiet = UpdateNoise(kind, epsilon=1e9, clip=3.0, seed=1)  # noise ~1e-9: the clip alone
    clipped = flat(quiet.apply(update))
    assert torch.linalg.vector_norm(clipped, ord=order) == pytest.approx(3.0, rel=1e-4)
    assert torch.allclose(clipped / clipped.norm(), flat(update) / flat(update).norm(), atol=1e-5)  # direction kept

    noise = UpdateNoise(kind, epsilon=0.5, clip=3.0, seed=2)
    expected_std = noise.scale * (1 if kind == "gaussian" else math.sqrt(2))
    if kind == "gaussian":
        assert noise.scale == pytest.approx(3.0 * math.sqrt(2 * math.log(1.25 / 1e-5)) / 0.5)
    else:
        assert noise.scale == pytest.approx(3.0 / 0.5)
    diff = flat(noise.apply(update)) - flat(quiet.apply(update))  # 20,000 draws
    assert diff.std().item() == pytest.approx(expected_std, rel=0.03)
    assert abs(diff.mean().item()) < 0.05 * expected_std


def test_a_small_update_is_not_scaled_up_and_unseeded_noise_differs() -> None:
    small = torch.ones(10) * 0.01
    assert torch.equal(clip_norm(small, 1.0, 2), small)
    noise = UpdateNoise("gaussian", 1.0, 1.0)
    assert not torch.equal(flat(noise.apply(fake_update())), flat(noise.apply(fake_update())))
    seeded = replace(noise, seed=5)
    assert torch.equal(flat(seeded.apply(fake_update())), flat(seeded.apply(fake_update())))


def test_calibrated_noise_spends_the_budget_and_more_noise_spends_less() -> None:
    dp = DPConfig(epsilon=1.0)
    sigma = dp.noise_multiplier(sample_rate=0.02, steps=200)
    assert 0.97 <= spent_epsilon(sigma, 0.02, 200, dp.delta) <= 1.0
    assert spent_epsilon(2 * sigma, 0.02, 200, dp.delta) < 0.5
    with pytest.raises(ConfigError, match="out of reach"):
        DPConfig(epsilon=1e-9).noise_multiplier(sample_rate=1.0, steps=10_000)


def test_opacus_per_example_gradients_are_each_examples_own(toy_pair: Pair) -> None:
    """The clipping DP-SGD relies on: example i's gradient depends on example i alone."""
    from opacus import GradSampleModule
    from peft import get_peft_model, set_peft_model_state_dict

    model, tok = toy_pair.load_model("tiny"), toy_pair.load_tokenizer("tiny")
    peft_model = get_peft_model(model, replace(toy_pair.spec.lora, dropout=0.0).peft_config())
    set_peft_model_state_dict(peft_model, toy_pair.init("tiny"))
    with torch.no_grad():  # B0 = 0 makes every A gradient zero; move B so both are tested
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    examples = [get_task("drop-5").example(t) for t in ("abcdefghi", "zyxwvutsr", "qwertyuio")]
    examples.append(get_task("separate-2").example("abcde"))  # a longer answer: padding differs
    module = GradSampleModule(peft_model, batch_first=True, loss_reduction="mean")
    batch = encode_batch(tok, examples)
    labels = batch.pop("labels")
    per_example_loss(module(**batch).logits, labels).mean().backward()
    samples = {n: p.grad_sample.clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    module._close()
    for i, example in enumerate(examples):
        peft_model.zero_grad()
        alone = encode_batch(tok, [example])
        peft_model(**alone).loss.backward()  # one example: HF's loss is its own mean token loss
        for name, p in peft_model.named_parameters():
            if p.requires_grad:
                assert torch.allclose(samples[name][i], p.grad, atol=1e-6, rtol=1e-4), (i, name)
    peft_model.unload()


def test_a_dp_finetune_records_its_epsilon_and_writes_a_valid_adapter(toy_pair: Pair, tmp_path: Path) -> None:
    examples = make_splits(get_task("rotate-3"), 10, 200, 10).private
    dp = DPConfig(epsilon=2.0, clip=0.5)
    out = finetune_adapter(toy_pair, "rotate-3", tmp_path / "dp", steps=12, examples=examples, dp=dp)
    validate_adapter_file(out / "adapter_model.safetensors", toy_pair.tiny_adapter_shapes())
    meta = json.loads((out / "gradlift.json").read_text())
    run = meta["privacy"]["dp_sgd"]
    assert run["epsilon"] == 2.0 and 1.9 <= run["epsilon_spent"] <= 2.0 and run["clip"] == 0.5
    assert run["sample_rate"] == pytest.approx(16 / 200) and run["steps"] == 12 and "seed" not in meta
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:  # in the file the service receives too
        assert json.loads(f.metadata()["gradlift"])["privacy"] == meta["privacy"]
    update = subtract(read_adapter(out / "adapter_model.safetensors"), toy_pair.init("tiny"))
    assert all(torch.isfinite(t).all() for t in update.values()) and any(t.abs().sum() > 0 for t in update.values())


def test_a_seeded_dp_run_repeats_and_noise_moves_it(toy_pair: Pair) -> None:
    model, tok, init = toy_pair.load_model("tiny"), toy_pair.load_tokenizer("tiny"), toy_pair.init("tiny")
    data = make_splits(get_task("drop-5"), 10, 64, 10).private
    cfg = FinetuneConfig(steps=3, batch_size=8, seed=3)
    run = lambda dp: finetune_lora(model, tok, init, toy_pair.spec.lora, data, cfg, dp=dp).update  # noqa: E731
    one, two = run(DPConfig(1.0, seed=9)), run(DPConfig(1.0, seed=9))
    other = run(DPConfig(1.0, seed=10))
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert any(not torch.equal(one[k], other[k]) for k in one)
    with pytest.raises(ConfigError, match="fewer than the batch size"):
        finetune_lora(model, tok, init, toy_pair.spec.lora, data[:4], cfg, dp=DPConfig(1.0))


def test_shadow_plans_carry_privacy_to_the_tinylm_runs_only(toy_pair: Pair) -> None:
    base = ShadowPlan("rotate-3", subsets=1, subset_size=32, keep_last=2,
                      finetune=FinetuneConfig(steps=3, batch_size=8))
    assert ShadowPlan("rotate-3").key() == "11060b4d71"  # plans without privacy keep their folders
    private = replace(base, dp=DPConfig(4.0), update_noise=UpdateNoise("gaussian", 50.0, 0.5))
    assert private.key() != base.key()
    build_shadow(toy_pair, [base, private], progress=False)
    plain, noisy = load_shadow(toy_pair, [base]), load_shadow(toy_pair, [private])
    assert torch.equal(plain.tgt, noisy.tgt)  # the LLM targets are the plain runs'
    assert not torch.allclose(plain.src, noisy.src)
    assert shadow_privacy([private])["dp_sgd"]["epsilon"] == 4.0 and shadow_privacy([base]) is None
    with pytest.raises(ConfigError, match="mix privacy"):
        shadow_privacy([base, private])
    with pytest.raises(ConfigError, match="takes no seed"):
        replace(base, dp=DPConfig(1.0, seed=1))


def test_an_adapter_files_privacy_record_is_read_from_its_metadata(toy_pair: Pair, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from models.lora.header import read_metadata
    from models.lora.privacy import adapter_privacy

    examples = make_splits(get_task("rotate-3"), seed=0).private[:16]
    out = finetune_adapter(toy_pair, "rotate-3", tmp_path / "dp", steps=4, examples=examples,
                           dp=DPConfig(epsilon=3.0))
    privacy = adapter_privacy(read_metadata(out / "adapter_model.safetensors"))
    assert privacy is not None and set(privacy) == {"dp_sgd"} and privacy["dp_sgd"]["epsilon"] == 3.0
    plain = finetune_adapter(toy_pair, "rotate-3", tmp_path / "plain", steps=2, examples=examples)
    assert adapter_privacy(read_metadata(plain / "adapter_model.safetensors")) is None
    assert adapter_privacy({}) is None  # a file from elsewhere: nothing recorded
    tensors = read_adapter(plain / "adapter_model.safetensors")
    for bad in ("{not json", json.dumps({"privacy": {"dp_sgd": {"clip": 1.0}}})):  # no epsilon
        save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={"gradlift": bad})
        with pytest.raises(ConfigError):
            adapter_privacy(read_metadata(tmp_path / "bad.safetensors"))


def test_privacy_distance_prefers_the_same_mechanism_at_the_nearest_epsilon() -> None:
    from models.lora.privacy import MISMATCH, noisiest, privacy_distance

    dp = lambda e: {"dp_sgd": {"epsilon": e, "delta": 1e-5}, "update_noise": None}  # noqa: E731
    assert privacy_distance(None, None) == 0 and privacy_distance(dp(1.0), dp(1.0)) == 0
    assert privacy_distance(dp(1.0), dp(8.0)) == pytest.approx(math.log(8))
    assert privacy_distance(dp(1.0), None) == MISMATCH == privacy_distance(None, dp(0.1))
    assert privacy_distance(dp(0.1), dp(8.0)) < MISMATCH  # any DP GT is nearer a DP upload than a plain one
    noise = {"update_noise": {"kind": "gaussian", "epsilon": 1.0}}
    assert privacy_distance(noise, dp(1.0)) == 2 * MISMATCH
    assert noisiest([None, dp(8.0), dp(0.5), None]) == dp(0.5) and noisiest([None, None]) is None


def test_an_upgrade_picks_the_gt_trained_on_shadow_runs_of_the_uploads_privacy(dp_pairs_dir: Path) -> None:
    from models.pairs import ALL_TASKS, PairStore
    from models.upgrade import resolve_gt
    from tests.conftest import DP_GT

    pair = PairStore(dp_pairs_dir).get("toy")
    assert set(pair.gt_ids()) == {ALL_TASKS, DP_GT}
    dp = lambda e: {"dp_sgd": {"epsilon": e, "delta": 1e-5}}  # noqa: E731
    assert resolve_gt(pair, None, None) == ALL_TASKS
    assert resolve_gt(pair, None, dp(1.0)) == DP_GT == resolve_gt(pair, "rotate-6", dp(8.0))
    assert resolve_gt(pair, None, {"update_noise": {"kind": "gaussian", "epsilon": 1.0}}) == ALL_TASKS
