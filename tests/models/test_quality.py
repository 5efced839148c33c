"""The quality report's parts: the verdict's rules on written numbers, the shadow-run reference of a GT,
prompts files, and distillation on the toy pair (a real TinyLM teaching the real LLM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.data.datafile import Conversation, parse_prompts, prompt_record
from models.errors import DataFileError
from models.gt.network import GradientTransformer, GTArch, GTConfig
from models.gt.reference import build_reference, load_reference, save_reference
from models.recipes import QualityConfig
from models.training.shadow import ShadowSet
from models.upgrade.checks import agreement, split_prompts
from models.upgrade.quality import confidence, report, verdict

CFG = QualityConfig()


def behaviour(rate: float, base: float) -> dict:
    return {"probes": 100, "rate": rate, "base_rate": base, "similarity": 0.5, "base_similarity": 0.4}


def near(relative: float) -> dict:
    return {"nearest_task": "rotate-6", "nearest_cos": 0.3, "margin": 0.3, "runner_up_task": "drop-5",
            "relative": relative, "runs": 8}


def test_a_gts_update_is_judged_by_how_like_its_shadow_runs_the_upload_is() -> None:
    assert verdict("gt", behaviour(0.10, 0.10), near(0.8), CFG)[0] == "ok"  # a weak TinyLM: agreement says nothing
    assert verdict("gt", behaviour(0.00, 0.00), near(0.2), CFG)[0] == "no_gain"
    assert verdict("gt", behaviour(0.20, 0.00), near(0.2), CFG)[0] == "low_confidence"
    name, reason = verdict("gt", behaviour(0.05, 0.30), near(0.9), CFG)  # it took the LLM away from the TinyLM
    assert name == "low_confidence" and "30%" in reason



def test_where_a_pair_asks_it_a_gts_update_must_also_agree_with_the_tinylm() -> None:
    """smol: an unseen pick key's upload looks like the shadow runs, but its update barely agrees (0.05)."""
    strict = QualityConfig(gt_gain_from=0.15)
    assert verdict("gt", behaviour(0.33, 0.0), near(1.1), strict)[0] == "ok"
    name, reason = verdict("gt", behaviour(0.05, 0.0), near(1.1), strict)
    assert name == "low_confidence" and "tasks it was trained on" in reason
    assert verdict("gt", behaviour(0.05, 0.0), near(1.1), CFG)[0] == "ok"  # the default asks no agreement
    assert verdict("gt", behaviour(0.05, 0.0), near(1.1), strict, "pair")[0] == "ok"  # nor on mixed prompts

def test_without_a_reference_agreement_decides() -> None:
    assert verdict("gt", behaviour(0.30, 0.05), None, CFG)[0] == "ok"
    assert verdict("gt", behaviour(0.08, 0.05), None, CFG)[0] == "low_confidence"
    assert verdict("gt", behaviour(0.05, 0.05), None, CFG)[0] == "no_gain"


def test_a_distilled_update_is_never_vouched_for() -> None:
    assert verdict("distill", behaviour(0.60, 0.05), near(0.9), CFG)[0] == "low_confidence"
    assert verdict("distill", behaviour(0.05, 0.05), None, CFG)[0] == "no_gain"


def test_confidence_orders_by_verdict_then_evidence() -> None:
    ok = report("gt", behaviour(0.1, 0.1), near(0.8), CFG, "pair")
    weak = report("distill", behaviour(0.08, 0.05), None, CFG, "organization")
    none = report("gt", behaviour(0.0, 0.0), near(0.1), CFG, "task")
    assert (ok["verdict"], weak["verdict"], none["verdict"]) == ("ok", "low_confidence", "no_gain")
    assert confidence(ok) > confidence(weak) > confidence(none)
    assert weak["agreement"]["prompts"] == "organization" and weak["gain"] == pytest.approx(0.03)


def test_agreement_counts_exact_answers_and_character_closeness() -> None:
    exact, close = agreement(["abc", "xyz", "pig"], ["abc", "xyw", "dog"])
    assert exact == pytest.approx(1 / 3)
    assert close == pytest.approx((1 + 2 / 3 + 1 / 3) / 3)


def test_probe_prompts_never_double_as_training_prompts() -> None:
    pool = [f"p{i}" for i in range(100)]
    probes, train = split_prompts(pool, 64)
    assert len(probes) == 25 and not set(probes) & set(train) and len(probes) + len(train) == 100
    assert split_prompts(pool, 64) == (probes, train)  # seeded
    assert split_prompts(["only"], 64) == (["only"], ["only"])


def two_task_shadow(seed: int = 0) -> ShadowSet:
    """Two tasks, three runs each, three snapshots per run: each task's TinyLM updates share a direction."""
    gen = torch.Generator().manual_seed(seed)
    direction = {"a": torch.randn(2, 6, generator=gen), "b": torch.randn(2, 6, generator=gen)}
    src, run, task = [], [], []
    for r, name in enumerate(["a", "a", "a", "b", "b", "b"]):
        for _ in range(3):
            src.append(direction[name] + 0.3 * torch.randn(2, 6, generator=gen))
            run.append(r)
            task.append(name)
    src_t = torch.stack(src)
    return ShadowSet(src_t, torch.randn(len(src), 3, 4, generator=gen), torch.tensor(run), task)


def test_a_gts_reference_finds_the_task_an_upload_resembles(tmp_path: Path) -> None:
    data = two_task_shadow()
    model = GradientTransformer(GTConfig(2, 6, 3, 4, GTArch(d_model=16, n_heads=2, d_ff=32)))
    model.set_statistics(data.src, data.tgt)
    reference = build_reference(model, data)
    assert reference.tasks == ["a"] * 3 + ["b"] * 3 and reference.points.shape == (6, 12)
    save_reference(reference, tmp_path)
    loaded = load_reference(tmp_path)
    assert torch.equal(loaded.points, reference.points) and loaded.tasks == reference.tasks
    assert torch.equal(loaded.mean, model.src_mean)  # several tasks: centred
    got = loaded.compare(data.src[data.run == 4].mean(0))
    assert got["nearest_task"] == "b" and got["runner_up_task"] == "a" and got["margin"] > 0
    assert got["relative"] > 1  # its own run's mean: closer than runs are to each other
    stranger = torch.randn(2, 6, generator=torch.Generator().manual_seed(9))
    assert loaded.compare(stranger)["relative"] < got["relative"]
    assert load_reference(tmp_path / "none") is None


def test_prompts_files_take_prompts_or_unanswered_conversations() -> None:
    text = '{"prompt": "rot ?: abc #### "}\n\n{"messages": [{"role": "system", "content": "s"}, ' \
           '{"role": "user", "content": "q"}]}\n'
    plain, chat = parse_prompts(text)
    assert plain == "rot ?: abc #### " and isinstance(chat, Conversation) and chat.answer == ""
    assert [m["role"] for m in chat.messages()] == ["system", "user"]
    assert parse_prompts("\n".join(__import__("json").dumps(prompt_record(p)) for p in (plain, chat))) == [
        plain, chat]
    with pytest.raises(DataFileError) as caught:
        parse_prompts('{"prompt": ""}\n[1]\n{"prompt": "a", "answer": "b"}\n{"prompt": "fine"}\n')
    assert [n for n, _ in caught.value.problems] == [1, 2, 3]


@pytest.mark.slow
def test_distillation_teaches_the_llm_the_tinylms_task(honest_pairs_dir: Path, recipe_adapters: dict) -> None:
    """The TinyLM fine-tuned on a key no GT knows answers its own task's public prompts; the LLM distilled
    from those answers does that task clearly better than the base LLM, without the private data."""
    from bench.experiment import Scorer
    from models.lora.update import read_adapter, subtract
    from models.pairs import PairStore
    from models.pairs.tasks import task_splits
    from models.recipes import upgrade_recipe
    from models.training.distill import distill
    from tests.conftest import UNSEEN_TASK

    pair = PairStore(honest_pairs_dir).get("toy")
    tiny = subtract(read_adapter(recipe_adapters[UNSEEN_TASK] / "adapter_model.safetensors"), pair.init("tiny"))
    splits = task_splits(pair, UNSEEN_TASK)
    cfg = upgrade_recipe("toy").distill
    done = distill(pair, tiny, [ex.prompt for ex in splits.public], cfg)
    assert 0 < done.labelled <= cfg.prompts
    scorer = Scorer(pair)
    layout_tokens = scorer.layout.to_tokens(done.update)
    test = splits.test[:100]
    assert scorer.llm_accuracy(layout_tokens, test) >= scorer.llm_accuracy(None, test) + 0.2



@pytest.mark.slow
def test_auto_distils_from_the_init_and_the_gts_update_and_delivers_the_closest(
        honest_pairs_dir: Path, recipe_adapters: dict, tmp_path: Path) -> None:
    """An upload of a key the GT never saw: `auto` does not deliver the GT's update as it is; it distils from
    the pair's init and from the GT's update, and delivers whichever of the three agrees with the TinyLM best,
    naming what made it (a delta distilled from the GT's update names the GT)."""
    from safetensors import safe_open

    from models.lora.update import read_adapter
    from models.pairs import ALL_TASKS, PairStore
    from models.upgrade import run_upgrade
    from tests.conftest import UNSEEN_TASK

    pair = PairStore(honest_pairs_dir).get("toy")
    upload = [recipe_adapters[UNSEEN_TASK] / "adapter_model.safetensors"]
    gt = run_upgrade(pair, ALL_TASKS, upload, tmp_path / "gt", mode="gt")
    assert gt.quality["verdict"] != "ok"
    chosen = run_upgrade(pair, ALL_TASKS, upload, tmp_path / "auto", mode="auto")
    candidates = {c["made_by"]: c["gain"] for c in chosen.quality["candidates"]}
    assert sorted(candidates) == ["distill:gt", "distill:init", "gt"]
    assert candidates["gt"] == gt.quality["gain"]
    assert chosen.quality["gain"] == max(candidates.values())
    made_by = "gt" if chosen.mode == "gt" else f"distill:{chosen.quality['distill']['start']}"
    assert candidates[made_by] == chosen.quality["gain"]
    from models.upgrade.run import made_by as describe  # the candidates passed over are kept beside
    assert sorted(describe(r) for r in [chosen, *chosen.alternatives]) == sorted(candidates)
    assert all(any(not torch.equal(r.update[k], chosen.update[k]) for k in chosen.update) for r in chosen.alternatives)
    named = None if made_by == "distill:init" else ALL_TASKS
    assert (chosen.gt_id, chosen.gt_version) == (named, named and gt.gt_version)
    with safe_open(str(chosen.files["update.safetensors"]), "pt") as f:
        written = json.loads(f.metadata()["gradlift"])
    assert (written.get("gt"), written["mode"]) == (named, chosen.mode)
    delivered = read_adapter(chosen.files["adapter_model.safetensors"])
    assert all(torch.allclose(delivered[k], pair.init("llm")[k] + chosen.update[k], atol=1e-6) for k in delivered)

    plain = run_upgrade(pair, ALL_TASKS, upload, tmp_path / "init", mode="auto", distill_from_gt=False)
    assert [c["made_by"] for c in plain.quality["candidates"]] == ["distill:init", "gt"]
    assert candidates["distill:init"] == plain.quality["candidates"][0]["gain"]  # seeded: the same distillation

def test_a_one_task_gts_reference_is_not_centred() -> None:
    """Centred on its own mean, one task's runs are noise around zero and tell nothing; uncentred, an upload of
    the task is as close to the runs as they are to each other, and another task's is not."""
    data = two_task_shadow()
    one = data.select(torch.tensor([t == "a" for t in data.task]))
    model = GradientTransformer(GTConfig(2, 6, 3, 4, GTArch(d_model=16, n_heads=2, d_ff=32)))
    model.set_statistics(one.src, one.tgt)
    reference = build_reference(model, one)
    assert torch.equal(reference.mean, torch.zeros(2, 6)) and float(reference.loo.min()) > 0.5
    own = reference.compare(one.src[:3].mean(0))
    other = reference.compare(data.src[data.run == 4].mean(0))
    assert own["margin"] is None and own["relative"] > 0.8 and other["relative"] < 0.5 * own["relative"]


def test_distillation_restarts_learn_from_one_labelling_and_the_probe_check_picks(
        toy_pairs_dir: Path, toy_adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With two restarts in the pair's recipe a distillation is fine-tuned twice, seeded apart, from one labelling
    of the prompts by the TinyLM; the one that agrees with the TinyLM most on the probes is delivered, each
    averaged over the share of its last steps the recipe names."""
    from dataclasses import replace

    from models.lora.update import read_adapter
    from models.pairs import PairStore
    from models.recipes import UPGRADES
    from models.upgrade import run_upgrade

    recipe = UPGRADES["toy"]
    quick = replace(recipe.distill.finetune, steps=30)
    monkeypatch.setitem(UPGRADES, "toy", replace(recipe, distill=replace(recipe.distill, restarts=2, finetune=quick,
                                                                          average_tail=0.5)))
    pair = PairStore(toy_pairs_dir).get("toy")
    said: list[str] = []
    got = run_upgrade(pair, None, [toy_adapter / "adapter_model.safetensors"], tmp_path, mode="distill",
                      on_progress=lambda fraction, stage, message=None: said.append(message or ""))
    candidates = got.quality["candidates"]
    assert [c["made_by"] for c in candidates] == ["distill:init", "distill:init:1"]
    assert got.quality["gain"] == max(c["gain"] for c in candidates)
    assert sum("the TinyLM answers the prompts" in m for m in said) == 1
    assert sum("restart 1" in m for m in said) == 1
    assert got.quality["distill"]["averaged_steps"] == 15
    delivered = read_adapter(got.files["adapter_model.safetensors"])
    assert all(torch.allclose(delivered[k], pair.init("llm")[k] + got.update[k], atol=1e-6) for k in delivered)


def test_the_mean_of_the_distillations_is_a_candidate_too(
        toy_pairs_dir: Path, toy_adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With `soup`, the element-wise mean of an upgrade's distilled updates is judged beside them, names itself
    `distill:soup`, and is delivered only where it agrees with the TinyLM best."""
    from dataclasses import replace

    from models.lora.update import mean
    from models.pairs import PairStore
    from models.recipes import UPGRADES
    from models.upgrade import run_upgrade
    from models.upgrade.run import made_by

    recipe = UPGRADES["toy"]
    quick = replace(recipe.distill.finetune, steps=30)
    monkeypatch.setitem(UPGRADES, "toy", replace(recipe, distill=replace(recipe.distill, restarts=2, finetune=quick)))
    pair = PairStore(toy_pairs_dir).get("toy")
    upload = [toy_adapter / "adapter_model.safetensors"]
    got = run_upgrade(pair, None, upload, tmp_path / "soup", mode="distill", soup=True)
    gains = {c["made_by"]: c["gain"] for c in got.quality["candidates"]}
    assert list(gains) == ["distill:init", "distill:init:1", "distill:soup"]
    assert got.quality["gain"] == max(gains.values()) and gains[made_by(got)] == got.quality["gain"]
    every = {made_by(r): r for r in [got, *got.alternatives]}
    soup = mean([every["distill:init"].update, every["distill:init:1"].update])
    assert all(torch.equal(every["distill:soup"].update[k], soup[k]) for k in soup)
    assert every["distill:soup"].quality["distill"]["of"] == 2  # without soup: the restarts test above
