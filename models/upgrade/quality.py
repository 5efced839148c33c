"""A delta's quality report, and the verdict that says how much to trust it.

    similarity  how the upload compares with the GT's shadow runs: the nearest run's task and cosine, the
                margin to the best run of another task, and `relative` (that cosine over the median cosine
                of a held-out shadow run to its nearest neighbour; models/gt/reference.py)
    agreement   on probe prompts, how often the upgraded LLM answers exactly as the organization's TinyLM
                does (`rate`), beside the base LLM's rate, and their mean character similarity
    verdict     ok | low_confidence | no_gain, with the reason in words

Two signals, because each fails alone. A GT maps what it has seen: an upload unlike its shadow runs (a key
it never trained on) gets a confident-looking but wrong update, and similarity catches that. The TinyLM is
weaker than the LLM, so a good update does not copy it; on a task where the fine-tuned TinyLM stays near its
base behaviour, agreement cannot tell a perfect update from none (measured on the toy pair: drop-5's GT
update scored 100% with the same agreement as the base LLM), so for a GT's update similarity decides and
agreement only vetoes clear harm. Where a pair's TinyLMs learn their tasks well enough that a right update
agrees with them (smol), `gt_gain_from` also asks a GT's update for that much agreement on probes of the
task's format (the organization's prompts or the task's; on the pair's mixed prompts a right update can
agree little: smol's pick-2, 0.016): an upload of a key the GT never saw can look just like its shadow runs
(smol's pick-1) and still get a wrong update, which then agrees with the TinyLM barely more than the base
LLM does. A distilled update has no shadow runs to compare with, and copying the TinyLM well is no sign of
being right: on the toy pair a distilled LLM that answered 0.2% of rotate-2 agreed with its TinyLM far more
(gain 0.32) than one that answered 59% of rotate-5 (gain 0.04) (bench/results/modes-toy.json). So a
distilled update is at best `low_confidence` (it carries the TinyLM's behaviour, and is bounded by it),
`no_gain` when it does not move towards the TinyLM at all.
Thresholds: models/recipes.py QualityConfig, checked by `python -m bench.modes`.
"""

from __future__ import annotations

from models.recipes import QualityConfig

VERDICTS = ("ok", "low_confidence", "no_gain")


def gain(behaviour: dict) -> float:
    """How far the update moved the LLM towards the TinyLM's answers: exact agreement over the base LLM's."""
    return behaviour["rate"] - behaviour["base_rate"]


def _agree(behaviour: dict) -> str:
    return (f"the upgraded LLM answers {behaviour['rate']:.0%} of {behaviour['probes']} probe prompts as the "
            f"TinyLM does, the base LLM {behaviour['base_rate']:.0%}")


def _by_behaviour(behaviour: dict, cfg: QualityConfig) -> tuple[str, str]:
    moved = gain(behaviour)
    if moved < cfg.no_gain_below:
        return "no_gain", _agree(behaviour) + ": the update does not carry the TinyLM's behaviour"
    if moved < cfg.ok_from:
        return "low_confidence", _agree(behaviour) + ": a small gain"
    return "ok", _agree(behaviour)


def verdict(mode: str, behaviour: dict, similarity: dict | None, cfg: QualityConfig,
            prompts: str = "organization") -> tuple[str, str]:
    """(verdict, reason) for an update made by `mode` ("gt" or "distill"), probed on `prompts` ("organization",
    "task" or "pair")."""
    if mode == "distill":
        if gain(behaviour) < cfg.no_gain_below:
            return "no_gain", _agree(behaviour) + ": the distilled update does not carry the TinyLM's behaviour"
        return "low_confidence", (_agree(behaviour) + ": distilled from the TinyLM's answers, so about as good "
                                  "as they are (often better, rarely as good as a GT on a task it knows); no "
                                  "shadow run vouches for it")
    if similarity is None:
        return _by_behaviour(behaviour, cfg)
    near = (f"the upload's nearest shadow run is of {similarity['nearest_task']} (cosine "
            f"{similarity['nearest_cos']:.2f}, {similarity['relative']:.2f} of a typical shadow run's)")
    if similarity["relative"] < cfg.relative_from:
        name = "no_gain" if gain(behaviour) < cfg.no_gain_below else "low_confidence"
        return name, f"{near}: unlike what the GT was trained on; {_agree(behaviour)}"
    if gain(behaviour) < cfg.harm_below:
        return "low_confidence", f"{near}, but {_agree(behaviour)}"
    if cfg.gt_gain_from is not None and prompts != "pair" and gain(behaviour) < cfg.gt_gain_from:
        return "low_confidence", (f"{near}, but {_agree(behaviour)}: less than the GT's updates agree on tasks "
                                  "it was trained on")
    return "ok", near


def report(mode: str, behaviour: dict, similarity: dict | None, cfg: QualityConfig, prompts: str) -> dict:
    """The `quality` object of a delta; `prompts` says whose probe prompts were used."""
    name, reason = verdict(mode, behaviour, similarity, cfg, prompts)
    return {"mode": mode, "verdict": name, "reason": reason, "similarity": similarity,
            "agreement": {**behaviour, "prompts": prompts}, "gain": round(gain(behaviour), 4),
            "thresholds": {"no_gain_below": cfg.no_gain_below, "ok_from": cfg.ok_from,
                           "relative_from": cfg.relative_from, "harm_below": cfg.harm_below}}


def confidence(quality: dict) -> float:
    """One number that orders deltas by how much to trust them: the verdict's rank, then its evidence (a GT's:
    how close the upload is to its shadow runs; a distilled one's: how closely it answers as the TinyLM)."""
    rank = {"no_gain": 0.0, "low_confidence": 1.0, "ok": 2.0}[quality["verdict"]]
    similarity = quality.get("similarity")
    evidence = similarity["relative"] if quality["mode"] == "gt" and similarity else \
        quality["agreement"]["similarity"]
    return rank + max(0.0, min(evidence, 0.99))
