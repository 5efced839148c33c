"""The smol pair with a stand-in LLM: SmolLM2's architecture, config and tokenizer, seeded random weights.

For speed figures on a machine that cannot have the real weights (the GGUF file is ~100 MB; a GPU machine
reached with a small working tree). Every shape and every kernel is the real model's, so time per token
is too; answers are noise (greedy decoding rarely meets the end token, so answers run to max_tokens).

    python -m bench.twin --llm-dir data/pairs/smol/llm --out twin-smol   # the LLM's files but its weights
    python -m bench.serving --pair smol --random-llm twin-smol ...       # builds the stand-in pair, seed 0
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from models.pairs import Pair, PairStore

WEIGHTS = ("*.safetensors", "*.bin", "*.gguf")


def export_llm_files(llm_dir: Path, out: Path) -> Path:
    """Copy the LLM folder's config, generation config and tokenizer files, not its weights."""
    shutil.copytree(llm_dir, out, ignore=shutil.ignore_patterns(*WEIGHTS), dirs_exist_ok=True)
    return out


def ensure_twin(pairs_dir: Path, llm_files: Path, seed: int = 0) -> Pair:
    """The stand-in smol pair under pairs_dir, built on first use from the shipped bundle and `llm_files`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from models.pairs.smol import copy_bundle

    store = PairStore(pairs_dir)
    if "smol" in store.ids():
        return store.get("smol")
    staging = copy_bundle(Path(pairs_dir) / "smol.building")
    shutil.copytree(llm_files, staging / "llm", ignore=shutil.ignore_patterns(*WEIGHTS))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(staging / "llm"), dtype=torch.float32)
    model.save_pretrained(staging / "llm")
    (staging / "llm" / "STAND-IN.txt").write_text(f"random weights, seed {seed}: for speed figures only\n")
    staging.rename(Path(pairs_dir) / "smol")
    return store.get("smol")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm-dir", type=Path, default=Path("data/pairs/smol/llm"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    print(export_llm_files(args.llm_dir, args.out))


if __name__ == "__main__":
    main()
