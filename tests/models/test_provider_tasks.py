"""Tasks from data files answer through task_splits like the procedural ones; pairs come from model folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.data.evaluate import rouge1, task_score
from models.data.tasks import get_task, make_splits
from models.errors import ConfigError, DataFileError, NotFoundError
from models.lora.spec import LoraSpec
from models.pairs import PairStore
from models.pairs.folders import add_pair
from models.pairs.tasks import TaskExistsError, register_task, task_ids, task_info, task_metric, task_splits


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sum_rows(n: int, offset: int = 0) -> list[dict]:
    return [{"prompt": f"add {a} {a + 1} #### ", "answer": str(2 * a + 1)} for a in range(offset, offset + n)]


def test_a_registered_task_answers_through_task_splits(toy_copy_dir: Path, tmp_path: Path):
    pair = PairStore(toy_copy_dir).get("toy")
    public = write_jsonl(tmp_path / "public.jsonl", sum_rows(40))
    chat = [{"messages": [{"role": "user", "content": "say hi"}, {"role": "assistant", "content": "hi there"}]}]
    test = write_jsonl(tmp_path / "test.jsonl", sum_rows(5, offset=100) + chat)
    info = register_task(pair, "sums", public, test)
    assert (info.n_public, info.n_test, info.metric, info.source) == (40, 6, "exact", "files")
    splits = task_splits(pair, "sums")
    assert [e.answer for e in splits.public[:2]] == ["1", "3"] and splits.private == []
    assert splits.test[-1].answer == "hi there"  # a conversation: its last assistant turn
    assert task_ids(pair) == [*pair.spec.tasks, "sums"] and task_metric(pair, "sums") == "exact"
    procedural = task_splits(pair, "rotate-3")  # the built-in tasks are unchanged
    assert procedural.public == make_splits(get_task("rotate-3"), seed=pair.spec.seed).public
    assert task_info(pair, "rotate-3").source == "procedural"
    with pytest.raises(TaskExistsError):
        register_task(pair, "sums", public)
    with pytest.raises(TaskExistsError, match="built-in"):
        register_task(pair, "rotate-3", public)
    with pytest.raises(NotFoundError, match="sums"):  # an unknown task lists the pair's tasks
        task_info(pair, "nope")


def test_malformed_lines_are_reported_by_number_and_nothing_is_stored(toy_copy_dir: Path, tmp_path: Path):
    pair = PairStore(toy_copy_dir).get("toy")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": "b"}\nnot json\n{"prompt": "a"}\n')
    test = tmp_path / "test.jsonl"
    test.write_text('{"prompt": "x", "answer": ""}\n')
    with pytest.raises(DataFileError) as caught:
        register_task(pair, "broken", bad, test)
    assert [n for n, _ in caught.value.problems] == [2, 3, 1]
    assert "public file" in str(caught.value) and "test file" in str(caught.value)
    assert "broken" not in task_ids(pair) and not any((pair.root / "tasks").glob("*"))
    with pytest.raises(ConfigError, match="metric"):
        register_task(pair, "fine", write_jsonl(tmp_path / "p.jsonl", sum_rows(3)), metric="bleu")
    with pytest.raises(ConfigError, match="task id"):
        register_task(pair, "Has Spaces", tmp_path / "p.jsonl")


def test_rouge1_comes_from_rouge_score_and_task_score_uses_the_metric(toy_pair, tmp_path: Path):
    assert rouge1(["the cat sat"], ["the cat sat"]) == pytest.approx(1.0)
    assert rouge1(["the cat"], ["the cat sat on"]) == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert rouge1(["dog"], ["the cat"]) == 0.0
    model, tok = toy_pair.load_model("llm"), toy_pair.load_tokenizer("llm")
    examples = make_splits(get_task("rotate-3"), seed=0).test[:8]
    exact, rouge = task_score(model, tok, examples, "exact"), task_score(model, tok, examples, "rouge1")
    assert 0 <= exact <= rouge <= 1  # an exact answer scores 1 in both; a near miss only in ROUGE-1
    with pytest.raises(ValueError, match="metric"):
        task_score(model, tok, examples, "bleu")


def tiny_llama(folder: Path, hidden: int, layers: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from models.pairs.toy import char_tokenizer

    tok = char_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_a_pair_from_two_model_folders(tmp_path: Path):
    small, large = tiny_llama(tmp_path / "small", 32, 1), tiny_llama(tmp_path / "large", 64, 2)
    pair = add_pair(tmp_path / "pairs", "mine", small, large, LoraSpec(r=2, alpha=16))
    assert PairStore(tmp_path / "pairs").ids() == ["mine"] and pair.spec.tasks == ()
    assert set(pair.init("llm")) == {f"base_model.model.model.layers.{i}.self_attn.{m}_proj.lora_{k}.weight"
                                     for i in range(2) for m in "qv" for k in "AB"}
    assert pair.load_model("tiny").num_parameters() < pair.load_model("llm").num_parameters()
    with pytest.raises(ConfigError, match="exists"):
        add_pair(tmp_path / "pairs", "mine", small, large, LoraSpec())
    with pytest.raises(ConfigError, match="larger than the TinyLM"):
        add_pair(tmp_path / "pairs", "flipped", large, small, LoraSpec())
    with pytest.raises(ConfigError, match="no Linear modules named"):
        add_pair(tmp_path / "pairs", "wrong", small, large, LoraSpec(targets=("q_proj", "nope_proj")))
    with pytest.raises(ConfigError, match="no config.json"):
        add_pair(tmp_path / "pairs", "empty", tmp_path, large, LoraSpec())
    seq2seq = tmp_path / "t5"
    _t5(seq2seq)
    with pytest.raises(ConfigError, match="not a causal language model"):
        add_pair(tmp_path / "pairs", "t5", seq2seq, large, LoraSpec())
    assert PairStore(tmp_path / "pairs").ids() == ["mine"]  # nothing left by the refusals


def _t5(folder: Path) -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                                        num_heads=2)).save_pretrained(folder)
