"""What bench.unseen holds out and what its distillation baseline may read when the task is not given."""

from __future__ import annotations

from bench.unseen import distill_prompts, families_of
from models.data.tasks import ANSWER_MARK
from models.pairs import Pair
from models.upgrade.checks import public_prompts


def test_held_out_families_are_those_with_seven_keys_or_named(toy_pair: Pair) -> None:
    assert families_of(toy_pair, None) == ["rotate", "drop", "separate"]
    assert families_of(toy_pair, ["pick6"]) == ["pick6"]


def test_distillation_reads_the_pairs_public_prompts_and_the_held_out_formats(toy_pair: Pair) -> None:
    pool, _ = public_prompts(toy_pair, None)
    assert distill_prompts(toy_pair, ["rotate", "drop"]) == pool  # the pair's tasks already show these formats
    wider = distill_prompts(toy_pair, ["pick6"])
    added = wider[len(pool):]
    assert wider[:len(pool)] == pool and len(added) == 1000 and len(set(added)) == 1000
    assert all(p.startswith("pick ?: ") and p.endswith(ANSWER_MARK) for p in added)  # the key stays hidden
