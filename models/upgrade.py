"""One upgrade, end to end: TinyLM adapters in, a verified PEFT adapter for the LLM out.

    adapters -> update vectors (minus the TinyLM's A0) -> average (several organizations)
             -> layer tokens [L_S, D_S] -> Gradient Transformer -> [L_T, D_T] -> LLM dA, dB
             -> PEFT folder (A0 + dA, B0 + dB) -> checks -> result
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from models.data.tasks import get_task
from models.data.textdata import encode_prompts
from models.errors import NotFoundError, VerificationError
from models.gt.checkpoint import load_gt, read_config
from models.gt.network import GradientTransformer
from models.lora.privacy import privacy_distance
from models.lora.update import LoraLayout, Update, add, mean, read_adapter, save_update, subtract
from models.pairs import ALL_TASKS, Pair
from models.training.finetune import write_adapter_folder

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
FILES = ("adapter_config.json", "adapter_model.safetensors", "update.safetensors")
CPU = torch.device("cpu")


@dataclass
class UpgradeResult:
    files: dict[str, Path]
    verification: dict
    gt_version: str
    update: Update


def resolve_gt(pair: Pair, task: str | None, privacy: dict | None = None) -> str:
    """The GT to use: the task's own, else the pair's GT for all tasks; of those (named `<task>` or
    `<task>@<anything>`), the one whose shadow runs' privacy (its config's `shadow_privacy`) is nearest
    the upload's (`models.privacy.privacy_distance`; ties: the plainest name first)."""
    ids = pair.gt_ids()
    by_task: dict[str, list[str]] = {}
    for gt_id in ids:
        by_task.setdefault(gt_id.split("@", 1)[0], []).append(gt_id)
    if task is not None and task in by_task:
        candidates = by_task[task]
    elif ALL_TASKS in by_task and (task is None or task in pair.spec.tasks):
        candidates = by_task[ALL_TASKS]
    else:
        wanted = task or "a task-free upgrade"
        have = ", ".join(ids) or "none"
        raise NotFoundError(f"pair {pair.id!r} has no Gradient Transformer for {wanted}; it has: {have}")
    if len(candidates) == 1:
        return candidates[0]
    distance = {gt_id: privacy_distance(privacy, read_config(pair.gt_dir(gt_id)).get("shadow_privacy"))
                for gt_id in candidates}
    return min(candidates, key=lambda gt_id: (distance[gt_id], len(gt_id), gt_id))


def _stamp(path: Path) -> int:
    """Changes when a file is rewritten (checkpoints are replaced by rename, never edited in place)."""
    return path.stat().st_mtime_ns


@lru_cache(maxsize=8)
def _gt(gt_dir: Path, stamp: int, device: torch.device) -> tuple:
    model, meta = load_gt(gt_dir)
    return model.to(device), meta


@lru_cache(maxsize=2)
def _base_llm(pair_root: Path, stamp: int, device: torch.device):
    """One LLM per pair and worker process, loaded on first use; verify() hands it back unchanged."""
    return Pair(pair_root).load_model("llm", device)


def lift(pair: Pair, model: GradientTransformer, tiny_updates: list[Update]) -> Update:
    """The LLM update a GT generates for the element-wise average of one or more TinyLM updates (the GT runs
    on its own device; the update comes back on the CPU)."""
    src = LoraLayout(pair.init("tiny"), pair.spec.lora.targets).to_tokens(mean(tiny_updates))  # [L_S, D_S]
    device = next(model.parameters()).device
    tgt = model.generate(src[None].to(device))[0].cpu()  # [L_T, D_T]
    return LoraLayout(pair.init("llm"), pair.spec.lora.targets).from_tokens(tgt)


def generate_update(pair: Pair, gt_id: str, tiny_updates: list[Update],
                    device: torch.device = CPU) -> tuple[Update, str]:
    """The LLM update the pair's GT `gt_id` generates for the TinyLM updates, and the GT's version."""
    gt_dir = pair.gt_dir(gt_id)
    model, meta = _gt(gt_dir, _stamp(gt_dir / "config.json"), device)
    return lift(pair, model, tiny_updates), meta["weights_sha256"][:12]


def probe_prompt(pair: Pair) -> str:
    """A prompt in the format of the pair's first task (its input drawn as the task draws inputs)."""
    if not pair.spec.tasks:
        return "Hello"
    task = get_task(pair.spec.tasks[0])
    return task.example(task.family.sample_input(random.Random(0))).prompt


@torch.no_grad()
def verify(pair: Pair, folder: Path, update: Update, device: torch.device = CPU) -> dict:
    """Load the folder with PEFT onto the LLM and check it really changes the model; raise otherwise."""
    from peft import PeftModel

    init = pair.init("llm")
    layout = LoraLayout(init, pair.spec.lora.targets)
    per_layer = layout.to_tokens(update).norm(dim=1)
    zero = [i for i, n in enumerate(per_layer.tolist()) if n == 0 or n != n]
    if zero:
        raise VerificationError(f"the generated update is zero or NaN in LLM layers {zero}")
    base = _base_llm(pair.root, _stamp(pair.llm_dir / "config.json"), device)
    tokenizer = pair.load_tokenizer("llm")
    batch = {k: v.to(device) for k, v in encode_prompts(tokenizer, [probe_prompt(pair)]).items()}
    base_logits = base(**batch).logits[0, -1]
    peft_model = PeftModel.from_pretrained(base, str(folder)).eval()
    try:
        lora_modules = {n for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A)}
        new_logits = peft_model(**batch).logits[0, -1]
    finally:
        peft_model.unload()  # the cached base model goes back without adapters
    expected = {s.name[: s.name.index(".lora_")] for s in layout.slots}
    if lora_modules != expected:
        missing = sorted(expected - lora_modules)[:1] or sorted(lora_modules - expected)[:1]
        raise VerificationError(f"adapter modules do not match the LLM's target modules (first: {missing})")
    diff = float((new_logits - base_logits).abs().max())
    if not diff > 0:
        raise VerificationError("the upgraded LLM's logits on the probe prompt equal the base model's")
    return {"modules": len(lora_modules), "layers_nonzero": len(per_layer), "probe_max_logit_change": diff,
            "update_norm": float(per_layer.norm())}


def run_upgrade(pair: Pair, gt_id: str, adapter_paths: list[Path], out_dir: Path,
                on_progress: Progress | None = None, device: torch.device = CPU) -> UpgradeResult:
    """Turn uploaded TinyLM adapters into a verified LLM adapter folder in out_dir; the GT and the
    verification's LLM run on `device`."""
    report = on_progress or (lambda fraction, stage: None)
    report(0.05, "reading adapters")
    tiny_init = pair.init("tiny")
    tiny_updates = [subtract(read_adapter(Path(p)), tiny_init) for p in adapter_paths]
    report(0.2, "generating update")
    update, gt_version = generate_update(pair, gt_id, tiny_updates, device)
    report(0.5, "writing adapter")
    out_dir = Path(out_dir)
    sources = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in adapter_paths]
    meta = {"pair": pair.id, "gt": gt_id, "gt_version": gt_version, "sources": sources}
    write_adapter_folder(out_dir, pair.spec.lora, pair.llm_name, add(pair.init("llm"), update), meta)
    save_update(update, out_dir / "update.safetensors", metadata=meta)
    report(0.7, "verifying")
    checks = verify(pair, out_dir, update, device)
    report(1.0, "done")
    return UpgradeResult({name: out_dir / name for name in FILES}, checks, gt_version, update)
