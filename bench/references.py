"""Give GTs trained before references existed the reference of their shadow runs (models/gt/reference.py),
without training them again: the recipe's shadow runs are rebuilt (they are seeded, so identical), checked
against the sha256 of the data each GT recorded, and standardised with the GT's own statistics.

    python -m bench.references --pair smol --export models/assets/smol/gts

Writes <gt>/reference.safetensors into the pair's GTs (and copies it into --export); a GT whose data hash
does not match the rebuilt runs is left alone and reported, unless --allow-mismatch (float rounding on
another machine can change a rebuilt run slightly; the reference only measures closeness).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import torch

from models.gt.checkpoint import data_hash, load_gt
from models.gt.reference import FILE, build_reference, save_reference
from models.pairs import ALL_TASKS, ensure_pair
from models.recipes import recipe_for
from models.training.shadow import build_shadow, load_shadow

log = logging.getLogger("bench.references")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="smol")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--export", type=Path, help="also copy each reference into <export>/<gt>/")
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="write a reference even where the rebuilt runs' hash differs from the GT's")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)
    pair = ensure_pair(args.data_dir / "pairs", args.pair)
    recipe = recipe_for(pair)
    plans = {t: recipe.plan(t) for t in pair.spec.tasks}
    build_shadow(pair, list(plans.values()), workers=args.workers)
    for gt_id in pair.gt_ids():
        chosen = list(plans.values()) if gt_id == ALL_TASKS else [plans[gt_id]] if gt_id in plans else None
        if chosen is None:
            print(f"{gt_id}: no recipe plan; skipped")
            continue
        model, meta = load_gt(pair.gt_dir(gt_id))
        data = load_shadow(pair, chosen)
        if data_hash(data.src, data.tgt) != meta.get("data_sha256"):
            drift = float((data.src.mean(0) - model.src_mean).norm() / model.src_mean.norm())
            print(f"{gt_id}: the rebuilt shadow runs differ from the ones it was trained on (hash; their mean "
                  f"input is {drift:.2%} off the GT's)" + ("; writing it anyway" if args.allow_mismatch else
                                                           "; skipped"))
            if not args.allow_mismatch:
                continue
        save_reference(build_reference(model, data), pair.gt_dir(gt_id))
        if args.export is not None:
            shutil.copy2(pair.gt_dir(gt_id) / FILE, args.export / gt_id / FILE)
        print(f"{gt_id}: reference of {len(set(data.run.tolist()))} runs written")


if __name__ == "__main__":
    main()
