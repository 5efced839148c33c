"""The organization's command line without a service: settings, flag checks, data errors by line number."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import ClientSettings

GRADLIFT = [sys.executable, "-m", "app.cli"]


def run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(GRADLIFT + args, capture_output=True, text=True, timeout=120, env=base | env,
                          cwd=Path(__file__).resolve().parents[3])


def test_client_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GRADLIFT_URL", "http://example.test:9000/")
    monkeypatch.setenv("GRADLIFT_API_KEY", "k")
    monkeypatch.setenv("GRADLIFT_CACHE_DIR", str(tmp_path / "c"))
    settings = ClientSettings()
    assert (settings.url, settings.api_key, settings.cache_dir) == ("http://example.test:9000", "k", tmp_path / "c")
    with pytest.raises(ValidationError, match="GRADLIFT_URL"):
        ClientSettings(url="example.test")


def test_malformed_data_lines_are_reported_by_number_before_anything_runs(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join([json.dumps({"prompt": "p", "answer": "a"}), "{oops", json.dumps({"answer": "a"}),
                               json.dumps({"messages": [{"role": "user", "content": "hi"}]})]) + "\n")
    # no service and no pair: the data is checked first
    done = run(["finetune", "--pair", "toy", "--data", str(data), "--out", str(tmp_path / "out")], tmp_path,
               GRADLIFT_URL="http://127.0.0.1:9")
    assert done.returncode == 1, done.stderr
    assert "3 malformed line(s)" in done.stderr
    assert all(f"line {n}:" in done.stderr for n in (2, 3, 4)) and "line 1:" not in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--dp-clip", "2"], "need --dp-epsilon"),
    (["--update-noise", "gaussian", "--clip", "1"], "needs --noise-epsilon and --clip"),
    (["--noise-epsilon", "1"], "need --update-noise"),
    (["--dp-epsilon", "-1"], "epsilon must be a positive number"),
    (["--update-noise", "laplace", "--noise-epsilon", "1", "--clip", "0"], "clip norm must be positive"),
])
def test_privacy_flags_that_do_not_fit_are_usage_errors(tmp_path: Path, flags: list[str], message: str) -> None:
    done = run(["finetune", "--pair", "toy", "--data", "x.jsonl", "--out", "o", *flags], tmp_path)
    assert done.returncode == 2 and message in done.stderr and "usage: gradlift finetune" in done.stderr


def test_commands_need_a_key_and_a_reachable_service(tmp_path: Path) -> None:
    done = run(["watch", "upg_x"], tmp_path)
    assert done.returncode == 1 and "no API key" in done.stderr
    done = run(["watch", "upg_x", "--url", "http://127.0.0.1:9", "--api-key", "k"], tmp_path)
    assert done.returncode == 1 and "cannot reach http://127.0.0.1:9" in done.stderr


def test_a_pair_from_folders_that_are_not_models_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tiny").mkdir()
    done = run(["admin", "pair", "add", "--id", "mine", "--tiny", str(tmp_path / "tiny"), "--llm",
                str(tmp_path / "tiny")], tmp_path, GRADLIFT_DATA_DIR=str(tmp_path / "data"))
    assert done.returncode == 1 and "--tiny" in done.stderr and "no config.json" in done.stderr
    assert not (tmp_path / "data" / "pairs" / "mine").exists()


def test_the_quality_line_says_what_made_the_update() -> None:
    from app.client.jobs import describe_quality

    gt = {"mode": "gt", "verdict": "ok", "reason": "close to pick-2"}
    assert describe_quality({"quality": gt}) == "quality: ok (gt update; close to pick-2)"
    refined = {"mode": "distill", "verdict": "low_confidence", "reason": "r", "distill": {"start": "gt"}}
    assert describe_quality({"quality": refined}) == \
        "quality: low_confidence (distill update, started from the GT's; r)"
    plain = {**refined, "distill": {"start": "init"}}
    assert describe_quality({"quality": plain}) == "quality: low_confidence (distill update; r)"
    assert describe_quality({}) == "quality: not reported"
