"""Property-based tests (Hypothesis): arbitrary bytes and JSON at the upload parser, arbitrary numbers at
query and body fields. Whatever comes in, the answer is a 2xx or a 4xx in the error shape, never a 500.
Examples are bounded (a few seconds each) so the suite stays fast; the seed varies from run to run."""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.db.session import session_scope
from app.db.tables import Job, utcnow
from models.errors import AdapterError
from models.lora.update import validate_adapter_file
from tests.app.api.conftest import Api
from tests.app.api.test_auth_and_errors import _org_id

SHAPES = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": (2, 4)}
FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=30)
entries = st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "F16", "BF16", "I64", 7]),
                                 "shape": st.lists(st.integers(-2, 8) | st.floats(0, 8), max_size=3),
                                 "data_offsets": st.lists(st.integers(-4, 64), min_size=0, max_size=3)})
headers = st.dictionaries(st.sampled_from([*SHAPES, "__metadata__", "other"]), entries | json_values, max_size=3)


def _file(tmp: Path, content: bytes) -> Path:
    path = tmp / "upload.safetensors"
    path.write_bytes(content)
    return path


@FEW
@given(content=st.binary(max_size=4096))
def test_arbitrary_bytes_are_an_adapter_error_or_valid(tmp_path: Path, content: bytes) -> None:
    with contextlib.suppress(AdapterError):
        validate_adapter_file(_file(tmp_path, content), SHAPES)


@FEW
@given(header=headers, data=st.binary(max_size=128), length_delta=st.sampled_from([0, 0, 0, -1, 1, 2**40]))
def test_arbitrary_headers_are_an_adapter_error_or_valid(tmp_path: Path, header: dict, data: bytes,
                                                         length_delta: int) -> None:
    text = json.dumps(header).encode()
    content = struct.pack("<Q", max(0, len(text) + length_delta)) + text + data
    with contextlib.suppress(AdapterError):
        validate_adapter_file(_file(tmp_path, content), SHAPES)


@FEW
@given(start=st.integers(0, 12), extra=st.sampled_from([0, 0, -4, 4]), padding=st.integers(0, 12),
       dtype=st.sampled_from(["F32", "F16"]), shape=st.sampled_from([[2, 4], [4, 2], [8], [2, 4.0]]))
def test_nearly_valid_layouts_are_an_adapter_error_or_valid(tmp_path: Path, start: int, extra: int, padding: int,
                                                            dtype: str, shape: list) -> None:
    """The one tensor of SHAPES, its offsets and the data around it a little off: what passes the header
    check must load."""
    size = 8 * (4 if dtype == "F32" else 2) + extra
    name = next(iter(SHAPES))
    text = json.dumps({name: {"dtype": dtype, "shape": shape, "data_offsets": [start, start + size]}}).encode()
    content = struct.pack("<Q", len(text)) + text + b"\0" * (start + size + padding)
    with contextlib.suppress(AdapterError):
        validate_adapter_file(_file(tmp_path, content), SHAPES)


def _no_server_error(response) -> None:  # noqa: ANN001 - an httpx Response
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@FEW
@given(content=st.binary(max_size=2048), config=st.none() | json_values.map(lambda v: json.dumps(v).encode()))
def test_arbitrary_uploads_never_answer_500(toy_api: Api, content: bytes, config: bytes | None) -> None:
    files = {"file": ("adapter_model.safetensors", content)}
    if config is not None:
        files["config"] = ("adapter_config.json", config)
    response = toy_api.client.post("/v1/checkpoints", headers=toy_api.auth(), data={"pair": "toy"}, files=files)
    _no_server_error(response)
    assert response.status_code != 200 or response.json()["bytes"] == len(content)


# Numbers as JSON text, including what json.dumps will not write: 5000 digits, NaN, Infinity, exponents.
number_texts = (st.integers().map(str) | st.floats(allow_nan=False, allow_infinity=False).map(repr)
                | st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-0", "9" * 5000, "2e-400",
                                   str(2**63), str(2**64), str(-(2**63) - 1)]))
CHAT_FIELDS = ["max_tokens", "max_completion_tokens", "min_tokens", "temperature", "top_p", "seed", "n"]


@FEW
@given(field=st.sampled_from(CHAT_FIELDS), number=number_texts)
def test_arbitrary_numbers_in_chat_bodies(api: Api, field: str, number: str) -> None:
    body = ('{"model": "toy-llm", "messages": [{"role": "user", "content": "hi"}], '
            f'"{field}": {number}}}')
    response = api.client.post("/v1/chat/completions", headers=api.auth() | {"Content-Type": "application/json"},
                               content=body)
    _no_server_error(response)


@FEW
@given(path=st.sampled_from(["/v1/checkpoints?limit=", "/v1/upgrades?limit=", "/v1/deltas?limit=",
                             "/v1/collaborations?limit=", "/v1/upgrades/upg_a/events?after="]),
       number=number_texts)
def test_arbitrary_numbers_in_queries(api: Api, path: str, number: str) -> None:
    if not api.keys:
        api.auth("acme")
        with session_scope() as s:
            s.add(Job(id="upg_a", org_id=_org_id(api, "acme"), pair="toy", task=None, gt_id="all", inputs=[],
                      status="queued", progress=0.0, stage="queued", cancel_requested=False, attempts=0,
                      created_at=utcnow()))
    _no_server_error(api.client.get(path + number, headers=api.auth()))


@pytest.mark.parametrize("text", ['{"pair": "toy", "checkpoint_ids": [' + "1" * 5000 + "]}",
                                  '{"pair": ' + "[" * 100_000 + "]" * 100_000 + "}",
                                  '{"pair": "toy", "checkpoint_ids": [NaN]}'])
def test_hostile_json_bodies(api: Api, text: str) -> None:
    response = api.client.post("/v1/upgrades", headers=api.auth() | {"Content-Type": "application/json"},
                               content=text)
    _no_server_error(response)
    assert response.status_code in (400, 422)
