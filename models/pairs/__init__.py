"""Model pairs: the store (a pair is a folder: spec, both models, both LoRA init files, GTs, shadow runs)
and the pairs gradlift can build itself (toy, smol), which register here so the store never imports them.

Light on purpose: the API lists pairs without torch; a builder's module loads only when it builds.
"""

from pathlib import Path

from models.pairs.store import (
    ALL_TASKS,
    Pair,
    PairSpec,
    PairStore,
    ensure_pair,
    locked,
    register_builder,
    write_pair,
)


def _build_toy(out: Path, seed: int) -> None:
    from models.pairs.toy import build_toy_pair

    build_toy_pair(out, seed)


def _build_smol(out: Path, seed: int) -> None:
    from models.pairs.smol import build_smol

    build_smol(out, seed)


register_builder("toy", _build_toy)
register_builder("smol", _build_smol)

__all__ = ["ALL_TASKS", "Pair", "PairSpec", "PairStore", "ensure_pair", "locked", "register_builder", "write_pair"]
