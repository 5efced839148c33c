"""The shipped smol pair: its LLM converts from the packaged GGUF, and its published results hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.pairs import Pair, PairStore

pytestmark = pytest.mark.slow

RESULTS = Path(__file__).parents[2] / "bench" / "results" / "smol.json"
PROMPTS = ["What is the capital of France?", "pick ?: tree pig rock train watch #### "]


@pytest.fixture(scope="module")
def smol(smol_pairs_dir: Path) -> Pair:
    return PairStore(smol_pairs_dir).get("smol")


def test_the_converted_llm_answers_like_the_gguf(smol: Pair) -> None:
    from models.data.evaluate import answers
    from models.pairs.smol_llm import load_gguf

    gguf_model, gguf_tokenizer = load_gguf()
    model, tokenizer = smol.load_model("llm"), smol.load_tokenizer("llm")
    assert tokenizer.chat_template == gguf_tokenizer.chat_template
    assert tokenizer("a b c")["input_ids"] == gguf_tokenizer("a b c")["input_ids"]
    expected = answers(gguf_model, gguf_tokenizer, PROMPTS, max_new_tokens=12)
    assert answers(model, tokenizer, PROMPTS, max_new_tokens=12) == expected
    assert "Paris" in expected[0]
    batch = tokenizer(PROMPTS[:1], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, gguf_model(**batch).logits, atol=1e-4)
    names = {p.name for p in smol.llm_dir.iterdir()}
    assert "model.safetensors" in names and not any(n.endswith(".gguf") for n in names)


def test_the_tinylm_is_at_most_half_the_llm_outside_embeddings(smol: Pair) -> None:
    def body(model) -> int:
        embedding = model.get_input_embeddings().weight.numel()
        return sum(p.numel() for p in model.parameters()) - embedding

    assert body(smol.load_model("tiny")) * 2 <= body(smol.load_model("llm"))


@pytest.mark.skipif(not RESULTS.is_file(), reason="bench/results/smol.json not published yet")
def test_the_published_results_reproduce_on_a_sample(smol: Pair) -> None:
    """For one task of setting A and one of B: the TinyLM's private fine-tune, the shipped GT, the
    recorded answers of the upgraded SmolLM2 on the first test questions."""
    from bench.experiment import Scorer, finetune_side, sample_answers
    from models.data.tasks import get_task, make_splits
    from models.gt.checkpoint import load_gt
    from models.lora.update import LoraLayout
    from models.pairs import ALL_TASKS
    from models.recipes import recipe_for

    results = json.loads(RESULTS.read_text())
    scorer = Scorer(smol)
    recipe = recipe_for(smol)
    for setting, gt_id in (("A", None), ("B", ALL_TASKS)):
        row = results["settings"][setting]["tasks"][0]
        task = row["task"]
        splits = make_splits(get_task(task), seed=smol.spec.seed)
        update, _, _ = finetune_side(smol, "tiny", splits.private, recipe.tiny)
        tiny_tokens = LoraLayout(smol.init("tiny"), smol.spec.lora.targets).to_tokens(update)
        gt, _ = load_gt(smol.gt_dir(gt_id or task))
        model = scorer.llm_model(gt.generate(tiny_tokens[None])[0])
        test = splits.test
        got = sample_answers(model, scorer.tokenizer, test)
        assert got == row["gt_sample"], f"setting {setting}, {task}"


def test_the_tinylm_learns_every_key_of_the_held_out_family(smol: Pair) -> None:
    """Setting C's smol family (`pick6`, bench.unseen): a fine-tune with the pair's recipe lifts the TinyLM by at
    least 10 points on every key (14-44 measured), though it was never pretrained on lists of six."""
    from bench.experiment import finetune_side
    from models.data.evaluate import accuracy
    from models.data.tasks import FAMILIES, get_task, make_splits
    from models.recipes import recipe_for

    tiny, tokenizer = smol.load_model("tiny"), smol.load_tokenizer("tiny")
    for key in FAMILIES["pick6"].keys:
        splits = make_splits(get_task(f"pick6-{key}"), seed=smol.spec.seed)
        _, tuned, _ = finetune_side(smol, "tiny", splits.private, recipe_for(smol).tiny)
        base, after = accuracy(tiny, tokenizer, splits.test), accuracy(tuned, tokenizer, splits.test)
        assert after >= base + 0.10, (key, base, after)


def test_an_upgrade_on_the_smol_pair_passes_verification(smol: Pair, tmp_path: Path) -> None:
    """The worker's path with the shipped pair-wide GT: adapter in, verified SmolLM2 adapter out."""
    from models.pairs import ALL_TASKS
    from models.training.finetune import finetune_adapter
    from models.upgrade import run_upgrade

    adapter = finetune_adapter(smol, "pick-2", tmp_path / "tiny", steps=3)
    result = run_upgrade(smol, ALL_TASKS, [adapter / "adapter_model.safetensors"], tmp_path / "llm")
    assert result.verification["probe_max_logit_change"] > 0 and result.verification["layers_nonzero"] == 30
    assert (tmp_path / "llm" / "adapter_config.json").is_file()
