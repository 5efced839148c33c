"""A pair from two Hugging Face causal-LM folders on disk: checked, copied into the pairs folder, its LoRA
init tensors written once (as for the pairs gradlift builds itself).

Checked before anything is written: each folder loads as a causal LM with a tokenizer, every LoRA target
names Linear modules in both models, the LLM has more parameters than the TinyLM, and each model's LoRA
tensors make one equal-sized token per layer (what the Gradient Transformer reads).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from models.errors import AdapterError, ConfigError
from models.lora.spec import LoraSpec
from models.pairs.store import Pair, PairSpec, PairStore, locked, write_pair
from models.pairs.tasks import TASK_ID

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)


def load_causal_lm(folder: Path, side: str) -> PreTrainedModel:
    """The model in `folder`, or ConfigError saying why it is not a causal LM gradlift can fine-tune."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not (Path(folder) / "config.json").is_file():
        raise ConfigError(f"--{side} {folder}: not a Hugging Face model folder (no config.json)")
    try:
        AutoConfig.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    except (ValueError, OSError, KeyError) as exc:
        raise ConfigError(f"--{side} {folder}: not a causal language model ({str(exc).splitlines()[0]})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"--{side} {folder}: no usable tokenizer ({str(exc).splitlines()[0]})") from None
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"--{side} {folder}: the tokenizer has no end-of-sequence token")
    return model


def check_targets(model: PreTrainedModel, targets: tuple[str, ...], side: str) -> None:
    import torch

    found = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = [t for t in targets if t not in found]
    if missing:
        raise ConfigError(f"the {side} model has no Linear modules named {missing}; its Linear modules: "
                          f"{', '.join(sorted(found))}")


def add_pair(root: Path, pair_id: str, tiny_dir: Path, llm_dir: Path, lora: LoraSpec, seed: int = 0) -> Pair:
    """Register the pair `pair_id` under `root` from two model folders (copied; the sources are not changed)."""
    from models.lora.update import LoraLayout

    if not TASK_ID.match(pair_id):
        raise ConfigError(f"pair id {pair_id!r}: use 1-64 lower-case letters, digits, '.', '-' or '_'")
    if pair_id in PairStore(root).ids():
        raise ConfigError(f"pair {pair_id!r} exists already at {Path(root) / pair_id}")
    models = {side: load_causal_lm(Path(folder), side) for side, folder in (("tiny", tiny_dir), ("llm", llm_dir))}
    for side, model in models.items():
        check_targets(model, lora.targets, side)
    sizes = {side: model.num_parameters() for side, model in models.items()}
    if sizes["llm"] <= sizes["tiny"]:
        raise ConfigError(f"the LLM ({sizes['llm']:,} parameters) must be larger than the TinyLM "
                          f"({sizes['tiny']:,})")
    with locked(Path(root) / f".{pair_id}.lock"):
        staging = Path(root) / f".{pair_id}.adding"
        shutil.rmtree(staging, ignore_errors=True)
        for side, folder in (("tiny", tiny_dir), ("llm", llm_dir)):
            shutil.copytree(folder, staging / side)
        try:
            pair = write_pair(staging, PairSpec(id=pair_id, tiny=str(tiny_dir), llm=str(llm_dir), lora=lora,
                                                seed=seed))
            for side in ("tiny", "llm"):
                LoraLayout(pair.init(side), lora.targets)  # one equal-sized token per layer, or AdapterError
        except AdapterError as exc:
            shutil.rmtree(staging)
            raise ConfigError(f"these LoRA targets do not fit the Gradient Transformer: {exc}") from None
        staging.rename(Path(root) / pair_id)
    log.info("pair %s: TinyLM %s parameters, LLM %s", pair_id, f"{sizes['tiny']:,}", f"{sizes['llm']:,}")
    return PairStore(root).get(pair_id)
