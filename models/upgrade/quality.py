"""A delta's quality report, and the verdict that says how much to trust it.

    similarity  how the upload compares with the GT's shadow runs (nearest task, cosine, margin, `typical`)
    agreement   on probe prompts, how often the upgraded LLM answers exactly as the organization's TinyLM
                does (`rate`), beside the base LLM's rate, and their mean character similarity
    verdict     ok | low_confidence | no_gain, with the reason in words

The TinyLM is weaker than the LLM, so a good upgrade does not copy it: it agrees where the TinyLM is right.
What a useless upgrade cannot do is move the LLM towards the TinyLM at all, so the verdict reads the gain
over the base LLM. Thresholds: models/recipes.py QualityConfig, calibrated by `python -m bench.modes`.
"""

from __future__ import annotations

from models.recipes import QualityConfig

VERDICTS = ("ok", "low_confidence", "no_gain")


def gain(behaviour: dict) -> float:
    """How far the upgrade moved the LLM towards the TinyLM's answers: exact agreement over the base LLM's."""
    return behaviour["rate"] - behaviour["base_rate"]


def verdict(behaviour: dict, similarity: dict | None, cfg: QualityConfig) -> tuple[str, str]:
    """(verdict, reason). `similarity` counts only for a GT's output (None: not a GT's, or no reference)."""
    moved = gain(behaviour)
    agree = (f"the upgraded LLM answers {behaviour['rate']:.0%} of {behaviour['probes']} probe prompts as the "
             f"TinyLM does, the base LLM {behaviour['base_rate']:.0%}")
    if moved < cfg.no_gain_below:
        return "no_gain", agree + ": the upgrade does not carry the TinyLM's behaviour"
    if similarity is not None and similarity["typical"] < cfg.typical_from:
        return "low_confidence", (f"{agree}, but the upload is less like the GT's shadow runs (nearest: "
                                  f"{similarity['nearest_task']}, cosine {similarity['nearest_cos']:.2f}) than "
                                  f"{1 - similarity['typical']:.0%} of held-out runs were")
    if moved < cfg.ok_from:
        return "low_confidence", agree + ": a small gain"
    return "ok", agree


def report(mode: str, behaviour: dict, similarity: dict | None, cfg: QualityConfig, prompts: str) -> dict:
    """The `quality` object of a delta; `prompts` says whose probe prompts were used."""
    judged_similarity = similarity if mode == "gt" else None
    name, reason = verdict(behaviour, judged_similarity, cfg)
    return {"mode": mode, "verdict": name, "reason": reason, "similarity": similarity,
            "agreement": {**behaviour, "prompts": prompts}, "gain": round(gain(behaviour), 4),
            "thresholds": {"no_gain_below": cfg.no_gain_below, "ok_from": cfg.ok_from,
                           "typical_from": cfg.typical_from}}
