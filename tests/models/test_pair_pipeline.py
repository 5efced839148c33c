"""The toy pair end to end in process: init tensors as data, fine-tuning, shadow runs, generated adapters."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from models.data.tasks import get_task, make_splits
from models.data.textdata import encode_prompts
from models.errors import VerificationError
from models.lora.update import LoraLayout, add, merge_into, read_adapter, subtract, validate_adapter_file
from models.pairs import ALL_TASKS, Pair, ensure_pair
from models.training.finetune import FinetuneConfig, finetune_adapter, finetune_lora
from models.training.shadow import ShadowPlan, build_shadow, load_shadow
from models.upgrade import resolve_gt, run_upgrade
from models.upgrade.checks import check


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_toy_llm_is_larger_than_the_tinylm_and_layouts_match_the_paper(toy_pair: Pair):
    tiny, llm = toy_pair.load_model("tiny"), toy_pair.load_model("llm")
    assert llm.num_parameters() > 5 * tiny.num_parameters()
    layout = LoraLayout(toy_pair.init("llm"), toy_pair.spec.lora.targets)
    c = llm.config
    kv = c.num_key_value_heads * c.hidden_size // c.num_attention_heads
    assert (layout.num_layers, layout.token_dim) == (c.num_hidden_layers, 2 * (3 * c.hidden_size + kv))


def test_the_toy_pair_is_built_from_its_shipped_files(toy_pair: Pair):
    """Seeded pretraining differs between machines; the toy pair ships built so measurements reproduce."""
    from models.pairs.toy import ASSETS

    for name in ("tiny/model.safetensors", "llm/model.safetensors", "tiny_lora_init.safetensors",
                 "llm_lora_init.safetensors"):
        assert sha(toy_pair.root / name) == sha(ASSETS / name), name


def test_a_toy_model_of_another_seed_is_pretrained_here():
    """The path a pair of another seed takes (and `python -m models.pairs.toy`): the formats are learned."""
    from models.pairs.toy import TINY, char_llama, char_tokenizer, pretrain

    tokenizer = char_tokenizer()
    model = char_llama(TINY, tokenizer, seed=1)
    first = pretrain(model, tokenizer, steps=1, lr=3e-3, seed=1)
    model = char_llama(TINY, tokenizer, seed=1)
    assert pretrain(model, tokenizer, steps=60, lr=3e-3, seed=1) < 0.8 * first


def test_init_tensors_are_stored_once_and_reused(toy_pair: Pair, tmp_path: Path):
    before = sha(toy_pair.llm_init_path), sha(toy_pair.tiny_init_path)
    assert ensure_pair(toy_pair.root.parent, "toy").init("llm").keys() == toy_pair.init("llm").keys()
    # the published init is itself a valid upload: an update of zero
    validate_adapter_file(toy_pair.tiny_init_path, toy_pair.tiny_adapter_shapes())
    adapter = finetune_adapter(toy_pair, "rotate-3", tmp_path / "a", steps=3)
    update = subtract(read_adapter(adapter / "adapter_model.safetensors"), toy_pair.init("tiny"))
    b_names = [n for n in update if "lora_B" in n]
    assert all(update[n].abs().sum() > 0 for n in b_names)  # B moved away from B0 = 0
    assert (sha(toy_pair.llm_init_path), sha(toy_pair.tiny_init_path)) == before


def test_finetuning_is_deterministic_and_leaves_the_base_model_alone(toy_pair: Pair):
    model, tok, init = toy_pair.load_model("tiny"), toy_pair.load_tokenizer("tiny"), toy_pair.init("tiny")
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    data = make_splits(get_task("drop-5"), 200, 200, 10).private
    cfg = FinetuneConfig(steps=4, keep_last=2, seed=7)
    one, two = (finetune_lora(model, tok, init, toy_pair.spec.lora, data, cfg) for _ in range(2))
    assert all(torch.equal(one.update[k], two.update[k]) for k in one.update)
    assert len(one.snapshots) == 2 and all(torch.equal(one.snapshots[-1][k], one.update[k]) for k in one.update)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_shadow_build_resumes_and_pairs_snapshots(toy_pair: Pair):
    plan = ShadowPlan("rotate-3", subsets=2, subset_size=64, keep_last=3, finetune=FinetuneConfig(steps=4))
    build_shadow(toy_pair, [plan], progress=False)
    first = plan.run_path(toy_pair, 1)
    digest = sha(first)
    first.unlink()  # as if the build was killed before this run finished
    mtime = plan.run_path(toy_pair, 0).stat().st_mtime_ns
    build_shadow(toy_pair, [plan], progress=False)
    assert sha(first) == digest  # rebuilt identically
    assert plan.run_path(toy_pair, 0).stat().st_mtime_ns == mtime  # finished runs are not redone
    data = load_shadow(toy_pair, [plan])
    assert data.src.shape[0] == data.tgt.shape[0] == 6 and data.run.tolist() == [0, 0, 0, 1, 1, 1]


def test_a_dead_writers_temporary_file_is_cleared_and_the_run_written_whole(toy_pair: Pair):
    import os
    import time

    plan = ShadowPlan("drop-5", subsets=1, subset_size=32, keep_last=2, finetune=FinetuneConfig(steps=3))
    plan.folder(toy_pair).mkdir(parents=True, exist_ok=True)
    debris = plan.folder(toy_pair) / "0000.safetensors.4242-dead.tmp"
    debris.write_bytes(b"half a file")
    os.utime(debris, (time.time() - 3600, time.time() - 3600))
    fresh = plan.folder(toy_pair) / "0000.safetensors.4243-live.tmp"  # another worker writing right now
    fresh.write_bytes(b"being written")
    build_shadow(toy_pair, [plan], progress=False)
    assert not debris.exists() and fresh.exists()
    assert load_shadow(toy_pair, [plan]).src.shape[0] == 2


def test_a_generated_adapter_loads_with_peft_and_changes_the_llm(toy_pair: Pair, toy_adapter: Path,
                                                                  tmp_path: Path):
    assert resolve_gt(toy_pair, None) == ALL_TASKS
    result = run_upgrade(toy_pair, ALL_TASKS, [toy_adapter / "adapter_model.safetensors"], tmp_path / "out")
    assert sorted(p.name for p in result.files.values()) == sorted(
        ["adapter_config.json", "adapter_model.safetensors", "update.safetensors"])
    base = toy_pair.load_model("llm")
    tok = toy_pair.load_tokenizer("llm")
    batch = encode_prompts(tok, [get_task("rotate-3").example("abcdefgh").prompt])
    with torch.no_grad():
        base_logits = base(**batch).logits
        peft_logits = PeftModel.from_pretrained(base, str(tmp_path / "out")).eval()(**batch).logits
    assert (peft_logits - base_logits).abs().max() > 1e-4
    # merging the same weights by hand gives the adapter's output
    merged = merge_into(toy_pair.load_model("llm"), add(toy_pair.init("llm"), result.update),
                        toy_pair.spec.lora.scale)
    with torch.no_grad():
        assert torch.allclose(merged(**batch).logits, peft_logits, atol=1e-4)


def test_verification_refuses_an_update_that_changes_nothing(toy_pair: Pair, toy_adapter: Path,
                                                             tmp_path: Path):
    result = run_upgrade(toy_pair, ALL_TASKS, [toy_adapter / "adapter_model.safetensors"], tmp_path / "out")
    zero = {k: torch.zeros_like(v) for k, v in result.update.items()}
    with pytest.raises(VerificationError, match="zero"):
        check(toy_pair, tmp_path / "out", zero, [get_task("rotate-3").example("abcdefgh").prompt], ["cdefghab"])


def test_upgrades_in_one_process_share_the_base_llm_and_leave_it_clean(toy_pair: Pair, toy_adapter: Path,
                                                                       tmp_path: Path):
    from models.upgrade.checks import _base_llm

    first = run_upgrade(toy_pair, ALL_TASKS, [toy_adapter / "adapter_model.safetensors"], tmp_path / "one")
    loaded = _base_llm.cache_info()
    second = run_upgrade(toy_pair, ALL_TASKS, [toy_adapter / "adapter_model.safetensors"], tmp_path / "two")
    after = _base_llm.cache_info()
    assert (after.hits, after.misses) == (loaded.hits + 1, loaded.misses)  # the second found the first's LLM
    assert first.verification == second.verification
    base = _base_llm(toy_pair.root, (toy_pair.llm_dir / "config.json").stat().st_mtime_ns, torch.device("cpu"))
    assert not any("lora" in name for name, _ in base.named_modules())
    fresh = toy_pair.load_model("llm")
    assert all(torch.equal(a, b) for a, b in zip(base.state_dict().values(), fresh.state_dict().values(),
                                                  strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_an_upgrade_on_a_gpu_equals_the_one_on_the_cpu(toy_pair: Pair, toy_adapter: Path, tmp_path: Path):
    paths = [toy_adapter / "adapter_model.safetensors"]
    cpu = run_upgrade(toy_pair, ALL_TASKS, paths, tmp_path / "cpu")
    gpu = run_upgrade(toy_pair, ALL_TASKS, paths, tmp_path / "gpu", device=torch.device("cuda"))
    assert gpu.update.keys() == cpu.update.keys()
    for name, tensor in gpu.update.items():
        assert tensor.device.type == "cpu"
        torch.testing.assert_close(tensor, cpu.update[name], rtol=1e-4, atol=1e-5)
    assert gpu.verification["modules"] == cpu.verification["modules"]
    assert gpu.verification["probe_max_logit_change"] == pytest.approx(cpu.verification["probe_max_logit_change"],
                                                                       rel=1e-3)


def test_a_tasks_own_gt_is_preferred_to_the_pair_wide_one(toy_pair: Pair, tmp_path: Path):
    import shutil

    root = tmp_path / "pairs"
    shutil.copytree(toy_pair.root, root / "toy", ignore=shutil.ignore_patterns("shadow", "bench", "*.lock"))
    pair = Pair(root / "toy")
    own, other = pair.spec.tasks[:2]
    shutil.copytree(pair.gt_dir(ALL_TASKS), pair.gt_dir(own))
    assert set(pair.gt_ids()) == {ALL_TASKS, own}
    assert resolve_gt(pair, own) == own
    assert resolve_gt(pair, other) == ALL_TASKS and resolve_gt(pair, None) == ALL_TASKS
