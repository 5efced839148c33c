"""Malformed input through the API: each is a clear 4xx naming the problem, never a 500, and the upload
leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save

from app.db.session import session_scope
from app.db.tables import Job, utcnow
from tests.app.api.conftest import Api
from tests.app.api.test_auth_and_errors import _org_id, assert_error
from tests.app.api.test_checkpoints import adapter, upload

README = b"# Our adapter\n\nTrained on the support tickets of 2026; load it with PEFT.\n" * 40


@pytest.fixture(scope="module")
def init(toy_pairs_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(toy_pairs_dir / "toy" / "tiny_lora_init.safetensors"))


def test_a_readme_is_not_a_safetensors_file(toy_api: Api) -> None:
    error = assert_error(upload(toy_api, README, filename="README.md"), 422, "invalid_adapter")
    assert "not a safetensors file" in error["message"] and "is longer than the file" not in error["message"]
    assert toy_api.stored_files() == []


@pytest.mark.parametrize("case, config, message", [
    ("deeply nested", b'{"r": 2, "x": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", "nested deeper"),
    ("5000-digit integer", b'{"r": ' + b"7" * 5000 + b"}", "5000 digits"),
    ("Infinity", b'{"r": 2, "lora_alpha": Infinity}', "not a JSON number"),
    ("NaN", b'{"r": 2, "lora_dropout": NaN}', "not a JSON number"),
    ("r as a flag", b'{"r": true}', "rank"),
])
def test_hostile_adapter_configs(toy_api: Api, init: dict, case: str, config: bytes, message: str) -> None:
    error = assert_error(upload(toy_api, save(adapter(init)), config=config), 422, "invalid_adapter")
    assert message in error["message"] and error["param"] == "config", case
    assert toy_api.stored_files() == []


@pytest.mark.parametrize("case, record, message", [
    ("deeply nested", '{"privacy": ' + "[" * 30_000 + "]" * 30_000 + "}", "nested deeper"),
    ("epsilon Infinity", '{"privacy": {"dp_sgd": {"epsilon": Infinity}}}', "not a JSON number"),
    ("5000-digit epsilon", '{"privacy": {"dp_sgd": {"epsilon": ' + "3" * 5000 + "}}}", "5000 digits"),
])
def test_hostile_gradlift_metadata(toy_api: Api, init: dict, case: str, record: str, message: str) -> None:
    error = assert_error(upload(toy_api, save(adapter(init), metadata={"gradlift": record})), 422,
                         "invalid_adapter")
    assert message in error["message"], case
    assert toy_api.stored_files() == []


def test_float_shapes_and_gaps_in_an_upload(toy_api: Api, init: dict) -> None:
    import struct

    content = save(adapter(init))
    (length,) = struct.unpack("<Q", content[:8])
    header = json.loads(content[8:8 + length])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [float(x) for x in header[name]["shape"]]
    text = json.dumps(header).encode()
    floats = struct.pack("<Q", len(text)) + text + content[8 + length:]
    assert "whole numbers" in assert_error(upload(toy_api, floats), 422, "invalid_adapter")["message"]
    padded = content + b"\0" * 8  # eight bytes no tensor claims
    assert "after the last tensor" in assert_error(upload(toy_api, padded), 422, "invalid_adapter")["message"]
    assert toy_api.stored_files() == []


def test_a_seed_beyond_64_bits_is_refused(api: Api) -> None:
    body = {"model": "toy-llm", "messages": [{"role": "user", "content": "hi"}], "seed": 2**64}
    error = assert_error(api.client.post("/v1/chat/completions", headers=api.auth(), json=body), 400,
                         "invalid_request")
    assert error["param"] == "seed"


def test_an_events_cursor_beyond_64_bits_is_refused(api: Api) -> None:
    api.auth("acme")
    with session_scope() as s:
        s.add(Job(id="upg_a", org_id=_org_id(api, "acme"), pair="toy", task=None, gt_id="all", inputs=[],
                  status="queued", progress=0.0, stage="queued", cancel_requested=False, attempts=0,
                  created_at=utcnow()))
    for after in (2**64, 2**63):
        response = api.client.get(f"/v1/upgrades/upg_a/events?after={after}", headers=api.auth())
        assert assert_error(response, 422, "invalid_request")["param"] == "after"
    last = api.client.get(f"/v1/upgrades/upg_a/events?after={2**63 - 1}", headers=api.auth())
    assert last.status_code == 200 and last.json()["count"] == 0
