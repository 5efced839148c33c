"""One upgrade, end to end: TinyLM adapters in, a checked PEFT adapter for the LLM out, with a quality report.

    mode "gt":      adapters -> update -> Gradient Transformer -> LLM update -> PEFT folder -> checks -> report
    mode "distill": adapters -> update -> the TinyLM answers prompts -> LLM LoRA fine-tuned on its answers
    mode "auto":    the GT's update when the upload looks like the GT's shadow runs and its verdict is ok;
                    distillation otherwise (no GT for the task, an unfamiliar upload, no measurable gain):
                    from the pair's init and, unless it moves the LLM away from the TinyLM, from the GT's
                    update; whichever of those and the GT's own update agrees with the TinyLM best on the
                    probe prompts is delivered (bench/results/modes-toy-C.json measures the choice)

The TinyLM labels the prompts once per upgrade; every distillation (each start, and each of the recipe's
`restarts`, fine-tunes seeded apart) learns from those labels, and the probe check chooses between them all
and, where the recipe asks for `soup`, their element-wise mean.

Whatever the mode, the delivered delta says how much to trust it (models/upgrade/quality.py).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from models.data.datafile import Prompt
from models.errors import ConfigError, VerificationError
from models.lora.update import Update, add, mean, read_adapter, save_update, subtract
from models.pairs import Pair
from models.recipes import upgrade_recipe
from models.training.distill import learn, teacher_examples
from models.training.finetune import write_adapter_folder
from models.upgrade.checks import check, public_prompts, split_prompts, teacher_answers, usable
from models.upgrade.lift import generate_update, similarity
from models.upgrade.quality import report

log = logging.getLogger(__name__)

Progress = Callable[..., None]  # (fraction, stage, message=None)
FILES = ("adapter_config.json", "adapter_model.safetensors", "update.safetensors")
MODES = ("gt", "distill", "auto")
CPU = torch.device("cpu")


@dataclass
class UpgradeResult:
    files: dict[str, Path]
    verification: dict
    gt_version: str | None  # the GT's that made the update or that distillation started from; else None
    update: Update
    quality: dict
    mode: str  # what made the delivered update: "gt" or "distill"
    gt_id: str | None = None  # the GT of gt_version
    # the candidates the probe check passed over: their updates and reports (out_dir holds the delivered files)
    alternatives: list[UpgradeResult] = field(default_factory=list)


@dataclass
class _Inputs:
    """What every path of an upgrade shares: the upload, the probes and the TinyLM's answers to them."""

    pair: Pair
    tiny: Update  # the element-wise mean of the uploads' updates
    probes: list[Prompt]
    taught: list[str]  # the TinyLM's answers to the probes
    train: list[Prompt]  # prompts distillation may learn from (never a probe)
    prompts: str  # whose prompts: "organization", "task" or "pair"
    sources: list[str]
    device: torch.device


def run_upgrade(pair: Pair, gt_id: str | None, adapter_paths: list[Path], out_dir: Path,
                on_progress: Progress | None = None, device: torch.device = CPU, *, mode: str = "gt",
                prompts: list[Prompt] | None = None, task: str | None = None,
                distill_from_gt: bool | None = None, soup: bool | None = None) -> UpgradeResult:
    """Turn uploaded TinyLM adapters into a checked LLM adapter folder in out_dir (models and checks run on
    `device`). `prompts`: the organization's own (unlabelled) prompts, for probes and distillation.
    `distill_from_gt`: whether `auto` also distils from the GT's undelivered update (default: the pair's
    recipe). `soup`: whether the mean of the distilled updates, where there are several, is a candidate too
    (default: the recipe's)."""
    if mode not in MODES or (mode == "gt" and gt_id is None):
        raise ConfigError(f"mode must be one of {MODES} (gt needs a GT), not {mode!r}")
    say = on_progress or (lambda fraction, stage, message=None: None)
    say(0.05, "reading adapters")
    tiny_init = pair.init("tiny")
    tiny = [subtract(read_adapter(Path(p)), tiny_init) for p in adapter_paths]
    inputs = _inputs(pair, mean(tiny), prompts, task, adapter_paths, device)
    say(0.1, "asking the TinyLM")
    inputs.taught = teacher_answers(pair, inputs.tiny, inputs.probes, device)
    out_dir = Path(out_dir)
    gt_result = None
    if mode != "distill" and gt_id is not None:
        gt_result = _gt_path(inputs, gt_id, tiny, out_dir, say)
        if mode == "gt" or (gt_result is not None and gt_result.quality["verdict"] == "ok"):
            if gt_result is None:
                raise VerificationError("the GT's update failed its checks")
            return gt_result
        why = (f"{gt_result.quality['verdict']}: {gt_result.quality['reason']}" if gt_result is not None
               else "it failed its checks")
        say(0.45, "distilling", f"the GT's update is not delivered ({why}); distilling instead")
    elif mode == "auto":
        say(0.3, "distilling", "no Gradient Transformer covers this upgrade: distilling")
    recipe = upgrade_recipe(pair.id)
    distill_from_gt = recipe.distill_from_gt if distill_from_gt is None else distill_from_gt
    starts = [None] + ([gt_result] if distill_from_gt and _may_start(gt_result, pair) else [])
    made = _distill_paths(inputs, out_dir, say, starts)
    if len(made) > 1 and (recipe.soup if soup is None else soup):
        made.append(_soup(inputs, made, out_dir, say))
    candidates = [*made, *([gt_result] if gt_result is not None else [])]
    best = max(candidates, key=lambda r: r.quality["gain"])  # the first on a tie: the init's distillation
    best.quality["candidates"] = [{"made_by": made_by(r), "gain": r.quality["gain"],
                                   "verdict": r.quality["verdict"]} for r in candidates]
    if len(candidates) > 1:
        gains = ", ".join(f"{c['made_by']} {c['gain']:.3f}" for c in best.quality["candidates"])
        say(0.95, "checking", f"delivering {made_by(best)}: it agrees with the TinyLM best (gain: {gains})")
    if best is not made[-1]:  # the last one written is the one in out_dir
        best = _deliver(inputs, best.update, out_dir, best.mode, best.gt_version, best.quality, gt_id=best.gt_id)
    best.alternatives = [r for r in candidates if r.quality is not best.quality]
    return best


def made_by(result: UpgradeResult) -> str:
    """"gt", "distill:init" or "distill:gt" (distilled from the GT's update), and ":<r>" for restart r > 0;
    "distill:soup" for the mean of the distilled updates."""
    if result.mode == "gt":
        return "gt"
    restart = result.quality["distill"].get("restart", 0)
    return f"distill:{result.quality['distill']['start']}" + (f":{restart}" if restart else "")


def _inputs(pair: Pair, tiny: Update, prompts: list[Prompt] | None, task: str | None,
            adapter_paths: list[Path], device: torch.device) -> _Inputs:
    pool, whose = (prompts, "organization") if prompts else public_prompts(pair, task)
    probes, train = split_prompts(pool, upgrade_recipe(pair.id).quality.probes)
    probes = usable(pair, probes)
    if not probes:
        raise ConfigError("no probe prompt fits the models' contexts")
    sources = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in adapter_paths]
    return _Inputs(pair, tiny, probes, [], train, whose, sources, device)


def _gt_path(inputs: _Inputs, gt_id: str, tiny: list[Update], out_dir: Path, say: Progress
             ) -> UpgradeResult | None:
    """The GT's update, checked and judged; None when it fails a structural check."""
    say(0.2, "generating update")
    update, version = generate_update(inputs.pair, gt_id, tiny, inputs.device)
    near = similarity(inputs.pair, gt_id, tiny)
    say(0.3, "checking the GT's update")
    try:
        return _deliver(inputs, update, out_dir, "gt", version, None, near, gt_id)
    except VerificationError as exc:
        log.warning("GT %s: %s", gt_id, exc)
        return None


def _may_start(gt_result: UpgradeResult | None, pair: Pair) -> bool:
    """Whether distillation may start from the GT's update: it passed its checks and does not make the LLM
    agree with the TinyLM clearly less than the base LLM does."""
    return gt_result is not None and gt_result.quality["gain"] >= upgrade_recipe(pair.id).quality.harm_below


def _distill_paths(inputs: _Inputs, out_dir: Path, say: Progress, starts: list[UpgradeResult | None]
                   ) -> list[UpgradeResult]:
    """Distillation from the pair's init (None) or a GT's update, each start fine-tuned `restarts` times with
    seeds apart (the recipe's), all from one labelling of the prompts by the TinyLM; each result names its
    start and restart."""
    cfg = upgrade_recipe(inputs.pair.id).distill
    say(0.5, "distilling", "the TinyLM answers the prompts")
    started = time.perf_counter()
    examples = teacher_examples(inputs.pair, inputs.tiny, inputs.train, cfg, inputs.device)
    teacher_s = time.perf_counter() - started
    runs = [(start, restart) for start in starts for restart in range(cfg.restarts)]
    made = []
    for i, (start, restart) in enumerate(runs):
        lo, hi = 0.55 + 0.35 * i / len(runs), 0.55 + 0.35 * (i + 1) / len(runs)
        say(lo, "distilling", "starting from the " + ("pair's init" if start is None else "GT's update")
            + (f" (restart {restart})" if restart else ""))

        def on_step(step: int, loss: float, lo: float = lo, hi: float = hi) -> None:
            say(lo + 0.9 * (hi - lo) * (step + 1) / cfg.finetune.steps, "distilling")

        started = time.perf_counter()
        update = learn(inputs.pair, examples, replace(cfg.finetune, seed=cfg.finetune.seed + restart),
                       None if start is None else start.update, on_step, inputs.device, cfg.average_last)
        train_s = time.perf_counter() - started
        say(hi, "checking the distilled update")
        version, gt_id = (None, None) if start is None else (start.gt_version, start.gt_id)
        made.append(_deliver(inputs, update, out_dir, "distill", version, None, None, gt_id,
                             {"labelled": len(examples), "teacher_s": round(teacher_s, 2),
                              "train_s": round(train_s, 2), "start": "init" if start is None else "gt",
                              "restart": restart, "averaged_steps": cfg.average_last or 1}))
    return made


def _soup(inputs: _Inputs, made: list[UpgradeResult], out_dir: Path, say: Progress) -> UpgradeResult:
    """The element-wise mean of the distilled updates (LoRA factors, as pooling averages organizations'),
    checked and judged like each of them."""
    say(0.92, "checking the mean of the distilled updates")
    start = next((r for r in made if r.gt_version is not None), None)
    return _deliver(inputs, mean([r.update for r in made]), out_dir, "distill",
                    None if start is None else start.gt_version, None, None, None if start is None else start.gt_id,
                    {"labelled": made[0].quality["distill"]["labelled"], "start": "soup", "of": len(made)})


def _deliver(inputs: _Inputs, update: Update, out_dir: Path, mode: str, version: str | None,
             quality: dict | None, near: dict | None = None, gt_id: str | None = None,
             extra: dict | None = None) -> UpgradeResult:
    """Write the PEFT folder and update file, check them, and judge them (unless `quality` is given)."""
    pair = inputs.pair
    meta = {"pair": pair.id, "mode": mode, "gt": gt_id, "gt_version": version, "sources": inputs.sources}
    write_adapter_folder(out_dir, pair.spec.lora, pair.llm_name, add(pair.init("llm"), update),
                         {k: v for k, v in meta.items() if v is not None})
    save_update(update, out_dir / "update.safetensors", metadata={k: v for k, v in meta.items() if v is not None})
    verification, behaviour = check(pair, out_dir, update, inputs.probes, inputs.taught, inputs.device)
    if quality is None:
        quality = report(mode, behaviour, near, upgrade_recipe(pair.id).quality, inputs.prompts)
        if extra:
            quality["distill"] = extra
    return UpgradeResult({name: out_dir / name for name in FILES}, verification, version, update, quality, mode,
                         gt_id)
