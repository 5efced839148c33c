"""What bench.unseen holds out and what its distillation baseline may read when the task is not given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.unseen import distill_prompts, families_of, finish, merge
from models.data.tasks import ANSWER_MARK, FAMILIES
from models.pairs import Pair
from models.upgrade.checks import public_prompts

RESULT = Path(__file__).parents[2] / "bench" / "results" / "unseen-toy.json"


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
    assert distill_prompts(toy_pair, ["pick6"], own=True) == added  # the organization's format alone


def test_runs_over_parts_of_the_keys_merge_into_the_whole(tmp_path: Path) -> None:
    """The published toy sweep cut into two runs' worth of held-out keys and joined again: the same averages."""
    whole = json.loads(RESULT.read_text())
    parts = []
    for half in (0, 1):
        part = {k: whole[k] for k in ("pair", "config", "timings_s")}
        part["families"] = {f: {"keys": [r for i, r in enumerate(block["keys"]) if i % 2 == half]}
                            for f, block in whole["families"].items()}
        parts.append(part)
    finish(merge(parts[::-1]), tmp_path / "merged.json")
    merged = json.loads((tmp_path / "merged.json").read_text())
    for kind in ("interpolation", "extrapolation", "all"):
        assert merged[kind] == pytest.approx(whole[kind], nan_ok=True)
    for family, block in whole["families"].items():
        assert [r["task"] for r in merged["families"][family]["keys"]] == [r["task"] for r in block["keys"]]
    with pytest.raises(SystemExit, match="differ"):
        merge([parts[0], {**parts[1], "config": {**parts[1]["config"], "runs_per_key": 99}}])


def test_a_later_draw_joins_each_keys_runs(tmp_path: Path) -> None:
    """A second private draw (`--first-seed 1`) merged into the first: each key holds both runs, its means and
    spreads over them; a draw given twice is refused."""
    first = json.loads(RESULT.read_text())
    second = json.loads(RESULT.read_text())
    second["config"] = {**second["config"], "prompts": "public", "first_seed": 1}  # written after --prompts
    for block in second["families"].values():
        for row in block["keys"]:
            for run in row["runs"]:
                run["seed"], run["pgr"] = 1, 0.0
    merged = merge([second, first])
    assert merged["config"]["seeds"] == 2 and merged["config"]["first_seed"] == 0
    for family, block in first["families"].items():
        for before, after in zip(block["keys"], merged["families"][family]["keys"], strict=True):
            assert [r["seed"] for r in after["runs"]] == [0, 1] and after["seeds"] == 2
            assert after["kind"] == before["kind"]
            gt = after["pgr_by_method"]["gt"]
            assert gt["mean"] == pytest.approx(before["pgr"] / 2, nan_ok=True)
            assert gt["std"] == pytest.approx(abs(before["pgr"]) / 2, nan_ok=True)
    finish(merged, tmp_path / "merged.json")
    with pytest.raises(SystemExit, match="two results"):
        merge([first, first])


def test_bench_modes_holds_out_the_same_keys_with_the_same_gts(toy_pair: Pair) -> None:
    """Setting L of bench.modes: every key of bench.unseen's families, each asked of a GT of the other keys."""
    from bench.modes import leave_one_out

    gts, trained_on = leave_one_out(toy_pair)
    keys = {f: FAMILIES[f].keys for f in ("rotate", "drop", "separate")}
    assert sorted(gts) == sorted(f"{f}-{k}" for f, ks in keys.items() for k in ks)
    assert gts["rotate-3"] == "rotate-without-3"
    assert trained_on["rotate-without-3"] == [f"rotate-{k}" for k in keys["rotate"] if k != 3]
    assert set(trained_on) == set(gts.values())


def test_bench_modes_joins_two_processes_files_and_says_how_often_auto_chose_best(tmp_path: Path) -> None:
    """Two processes' held-out keys join into one summary; auto's choice is scored against the test accuracy
    of every candidate it judged; one upgrade twice is refused."""
    from bench.modes import merge

    def row(task: str, p: float, candidates: dict | None) -> dict:
        return {"setting": "L", "task": task, "seed": 1, "prompts": "own", "mode": "auto", "used": "distill",
                "p": p, "pgr": p - 0.2, "seconds": 10.0, "verdict": "low_confidence", "confidence": 0.1,
                "gain": 0.2, "relative": None, "candidates_p": candidates}

    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"pair": "smol", "rows": [
        row("pick6-1", 0.6, {"distill:init": 0.6, "distill:gt": 0.7})]}))
    second.write_text(json.dumps({"pair": "smol", "rows": [
        row("pick6-4", 0.9, {"distill:init": 0.5, "distill:gt": 0.9}), row("pick6-5", 0.4, None)]}))
    merge([first, second], tmp_path / "out.json")
    summary = json.loads((tmp_path / "out.json").read_text())["summary"]
    assert summary["average_p"]["L/own/auto"] == pytest.approx((0.6 + 0.9 + 0.4) / 3)
    assert summary["choice"]["upgrades"] == 2 and summary["choice"]["chose_best"] == 1
    assert summary["choice"]["average_p_best"] == pytest.approx(0.8)
    assert summary["choice"]["average_p_by_candidate"] == pytest.approx({"distill:init": 0.55, "distill:gt": 0.8})
    with pytest.raises(SystemExit, match="two results"):
        merge([first, first], tmp_path / "twice.json")
    other = tmp_path / "c.json"
    other.write_text(json.dumps({"pair": "smol", "distill": {"steps": 40}, "rows": [row("pick6-6", 0.4, None)]}))
    with pytest.raises(SystemExit, match="upgrade recipes"):
        merge([first, other], tmp_path / "mixed.json")
