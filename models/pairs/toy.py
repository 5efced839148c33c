"""The toy pair: two small Llama models with a character vocabulary, pretrained in seconds.

The TinyLM (2 layers x 64) and the LLM (4 layers x 128, grouped-query attention) learn every task
family with its key written out; a LoRA fine-tune then has to learn a hidden key. The LLM learns that
well, the TinyLM only partly, which leaves a gap for a generated update to recover.

Seeded pretraining gives slightly different weights on different machines (float order), and every
measurement on the pair moves with them, so the seed-0 pair ships built in `models/assets/toy/` (3.6 MB)
and building it copies those files; another seed is pretrained here.

    python -m models.pairs.toy --out models/assets/toy   # rebuild the shipped files (seeded; ~2 min)
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import string
import time
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from models.data.tasks import DEFAULT_TASKS, TOY_FAMILIES, pretraining_stream
from models.data.textdata import encode_batch
from models.pairs.store import PairSpec, write_pair

log = logging.getLogger(__name__)
ASSETS = Path(__file__).parents[1] / "assets" / "toy"  # models/assets/toy: the seed-0 pair, built
SHIPPED = ("tiny", "llm", "tiny_lora_init.safetensors", "llm_lora_init.safetensors", "pair.json")

SPECIALS = ["<pad>", "<eos>", "<unk>"]
CHARS = string.ascii_lowercase + string.digits + " ?:#=+-.,\n"

TINY = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4)
LLM = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
           num_key_value_heads=2)
# The TinyLM learns the formats but not the operations; the LLM learns both. Measured: LoRA fine-tune
# accuracy ~0 vs ~1.0 on the default tasks. LLM pretraining sits near a plateau: 350 or 500 steps left a
# family unlearned on some runs, so it gets 600.
PRETRAIN = {"tiny": dict(steps=300, lr=3e-3), "llm": dict(steps=600, lr=3e-3)}


def char_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(CHARS))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>")


def char_llama(size: dict, tokenizer: PreTrainedTokenizerFast, seed: int,
               max_positions: int = 64) -> LlamaForCausalLM:
    """A seeded, untrained Llama of `size` over the character vocabulary."""
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=max_positions, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None, **size)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def pretrain(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, steps: int, lr: float,
             seed: int, batch_size: int = 64, families: tuple[str, ...] = TOY_FAMILIES) -> float:
    """Teach the task formats of `families` with keys written out; returns the last loss."""
    torch.manual_seed(seed)
    draw = pretraining_stream(seed, families)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        batch = encode_batch(tokenizer, [draw() for _ in range(batch_size)])
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return loss.item()


def build_toy_models(out: Path, seed: int = 0) -> dict[str, float]:
    """Write `out/tiny` and `out/llm` (save_pretrained + tokenizer); returns seconds per model."""
    tokenizer = char_tokenizer()
    timings = {}
    for offset, (name, size) in enumerate((("tiny", TINY), ("llm", LLM))):
        start = time.perf_counter()
        model = char_llama(size, tokenizer, seed + offset)
        loss = pretrain(model, tokenizer, seed=seed + offset, **PRETRAIN[name])
        model.save_pretrained(out / name)
        tokenizer.save_pretrained(out / name)
        timings[name] = time.perf_counter() - start
        log.info("pretrained toy %s: %d params, loss %.3f, %.1fs", name, model.num_parameters(), loss,
                 timings[name])
    return timings


def toy_spec(pair_id: str, seed: int) -> PairSpec:
    return PairSpec(id=pair_id, tiny="toy:tiny (2x64, char vocab)", llm="toy:llm (4x128, char vocab)",
                    seed=seed, tasks=DEFAULT_TASKS)


def build_toy_pair(out: Path, seed: int = 0) -> None:
    """A ready toy pair folder at `out`: both models, pair.json and both LoRA init files; the shipped
    files for seed 0, else both models pretrained here."""
    staging = out.with_name(out.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    if seed == 0 and (ASSETS / "pair.json").is_file():
        staging.mkdir(parents=True)
        for name in SHIPPED:
            copy = shutil.copytree if (ASSETS / name).is_dir() else shutil.copy2
            copy(ASSETS / name, staging / name)
        (staging / "pair.json").write_text(json.dumps(toy_spec(out.name, seed).to_dict(), indent=2, sort_keys=True))
    else:
        pretrain_pair(staging, out.name, seed)
    staging.rename(out)


def pretrain_pair(folder: Path, pair_id: str, seed: int) -> None:
    """Both models pretrained into `folder`, with pair.json and both LoRA init files."""
    build_toy_models(folder, seed)
    write_pair(folder, toy_spec(pair_id, seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ASSETS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)
    if args.out.exists():
        shutil.rmtree(args.out)
    pretrain_pair(args.out, "toy", args.seed)
    print(json.dumps({"out": str(args.out)}))


if __name__ == "__main__":
    main()
