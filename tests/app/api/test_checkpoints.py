"""Uploads: a valid adapter is stored once by content; every bad one is refused with a clear message and
leaves nothing behind in storage or in the database."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save

from tests.app.api.conftest import Api
from tests.app.api.test_auth_and_errors import assert_error

PEFT_CONFIG = json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 32}).encode()


@pytest.fixture(scope="module")
def init(toy_pairs_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(toy_pairs_dir / "toy" / "tiny_lora_init.safetensors"))


def adapter(init: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """A plausible fine-tuned adapter: the init plus a small update."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in init.items()}


def raw(header: dict, data: bytes, length: int | None = None) -> bytes:
    """A safetensors file written by hand, to make the broken ones."""
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def header_of(tensors: dict[str, torch.Tensor], dtype: str = "F32") -> tuple[dict, bytes]:
    header, data, offset = {}, b"", 0
    for name, tensor in tensors.items():
        blob = tensor.numpy().tobytes() if dtype == "F32" else tensor.to(torch.float64).numpy().tobytes()
        span = [offset, offset + len(blob)]
        header[name] = {"dtype": dtype, "shape": list(tensor.shape), "data_offsets": span}
        data, offset = data + blob, offset + len(blob)
    return header, data


def upload(api: Api, content: bytes, *, filename: str = "adapter_model.safetensors", pair: str = "toy",
           org: str = "acme", config: bytes | None = None, key: str | None = None,
           prompts: bytes | None = None):  # noqa: ANN201
    files = {"file": (filename, content, "application/octet-stream")}
    if config is not None:
        files["config"] = ("adapter_config.json", config, "application/json")
    if prompts is not None:
        files["prompts"] = ("prompts.jsonl", prompts, "application/jsonl")
    headers = api.auth(org) | ({"Idempotency-Key": key} if key else {})
    return api.client.post("/v1/checkpoints", headers=headers, data={"pair": pair}, files=files)


def test_upload_list_get_delete(toy_api: Api, init: dict) -> None:
    content = save(adapter(init))
    first = upload(toy_api, content, config=PEFT_CONFIG)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["pair"] == "toy" and body["bytes"] == len(content) and body["adapter_config"]["r"] == 2
    assert set(body) >= {"id", "pair", "sha256", "bytes", "created_at"}
    second = upload(toy_api, content).json()
    assert second["id"] != body["id"] and second["sha256"] == body["sha256"]
    assert len(toy_api.stored_files()) == 1  # same bytes, one blob
    listed = toy_api.client.get("/v1/checkpoints", headers=toy_api.auth()).json()
    assert listed["count"] == 2
    assert toy_api.client.get(f"/v1/checkpoints/{body['id']}", headers=toy_api.auth()).json() == body
    assert toy_api.client.delete(f"/v1/checkpoints/{body['id']}", headers=toy_api.auth()).json()["deleted"]
    assert len(toy_api.stored_files()) == 1  # still used by the second checkpoint
    toy_api.client.delete(f"/v1/checkpoints/{second['id']}", headers=toy_api.auth())
    assert toy_api.stored_files() == []


def test_the_published_init_is_itself_a_valid_upload(toy_api: Api) -> None:
    response = toy_api.client.get("/v1/pairs/toy/tiny-lora-init", headers=toy_api.auth())
    assert response.status_code == 200 and response.headers["etag"]
    assert upload(toy_api, response.content).status_code == 200


def test_idempotency_key_replays_the_first_response(toy_api: Api, init: dict) -> None:
    content = save(adapter(init))
    first = upload(toy_api, content, key="k1").json()
    assert upload(toy_api, content, key="k1").json() == first
    assert toy_api.client.get("/v1/checkpoints", headers=toy_api.auth()).json()["count"] == 1
    assert_error(upload(toy_api, save(adapter(init, seed=1)), key="k1"), 409, "idempotency_key_reused")
    # Keys are scoped per organization: another one's "k1" is its own request, neither a replay nor a conflict.
    theirs = upload(toy_api, content, key="k1", org="globex")
    assert theirs.status_code == 200 and theirs.json()["id"] != first["id"]
    assert upload(toy_api, save(adapter(init, seed=1)), key="k1", org="initech").status_code == 200
    assert toy_api.client.get("/v1/checkpoints", headers=toy_api.auth("globex")).json()["count"] == 1


def _bad_uploads(init: dict) -> list[tuple[str, bytes, dict, int, str, str]]:
    good = adapter(init)
    names = list(good)
    header, data = header_of(good)
    wrong_shape = dict(good) | {names[0]: torch.zeros(3, 64)}
    extra = dict(good) | {"base_model.model.lm_head.weight": torch.zeros(2, 2)}
    overlap_header = json.loads(json.dumps(header))
    overlap_header[names[1]]["data_offsets"] = [0, header[names[1]]["data_offsets"][1] - header[names[1]]
                                                ["data_offsets"][0]]
    nan = dict(good) | {names[2]: torch.full_like(good[names[2]], float("nan"))}
    huge = dict(good) | {names[2]: torch.full_like(good[names[2]], 1e9)}
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"a": 1}))
    f64_header, f64_data = header_of(good, dtype="F64")
    return [
        ("wrong pair", save(good), {"pair": "nope"}, 404, "pair_not_found", "nope"),
        ("wrong shapes", save(wrong_shape), {}, 422, "invalid_adapter", "shape"),
        ("missing tensor", save({k: good[k] for k in names[1:]}), {}, 422, "invalid_adapter", "missing"),
        ("extra tensor", save(extra), {}, 422, "invalid_adapter", "unexpected tensor"),
        ("wrong dtype", raw(f64_header, f64_data), {}, 422, "invalid_adapter", "dtype"),
        ("truncated", save(good)[:-100], {}, 422, "invalid_adapter", "truncated"),
        ("header longer than file", raw(header, data, length=10**6), {}, 422, "invalid_adapter", "longer"),
        ("overlapping offsets", raw(overlap_header, data), {}, 422, "invalid_adapter", "overlap"),
        ("NaN", save(nan), {}, 422, "invalid_adapter", "NaN"),
        ("absurd values", save(huge), {}, 422, "invalid_adapter", "magnitude"),
        ("pickle", pickle.dumps(good), {}, 415, "unsupported_file_type", "safetensors"),
        ("torch.save zip", zipped.getvalue(), {}, 415, "unsupported_file_type", "safetensors"),
        (".bin name", save(good), {"filename": "a.bin"}, 415, "unsupported_file_type", "safetensors"),
        ("empty", b"", {}, 422, "invalid_adapter", "empty"),
        ("not json header", raw({}, b"")[:8] + b"{not json", {}, 422, "invalid_adapter", "header"),
        ("bad config", save(good), {"config": b"{nope"}, 422, "invalid_adapter", "adapter_config.json"),
        ("config of another rank", save(good), {"config": json.dumps({"r": 8}).encode()}, 422,
         "invalid_adapter", "rank"),
        ("oversized", b"\0" * (64 * 1024 + 1), {}, 413, "file_too_large", "limit"),
    ]


def test_bad_uploads_are_refused_and_leave_nothing(toy_api: Api, init: dict) -> None:
    for name, content, options, status, code, fragment in _bad_uploads(init):
        error = assert_error(upload(toy_api, content, **options), status, code)
        assert fragment.lower() in error["message"].lower(), (name, error)
        assert toy_api.stored_files() == [], name
    assert toy_api.client.get("/v1/checkpoints", headers=toy_api.auth()).json()["count"] == 0


def test_size_limit_is_enforced_while_streaming(toy_api: Api) -> None:
    """A chunked body (no Content-Length) is cut off as it passes the limit."""
    boundary = "gradliftboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"pair\"\r\n\r\ntoy\r\n--{boundary}\r\n"
            f"Content-Disposition: form-data; name=\"file\"; filename=\"a.safetensors\"\r\n\r\n").encode()

    def body():  # noqa: ANN202 - a generator of chunks
        yield head
        for _ in range(40):
            yield b"\0" * 4096
        yield f"\r\n--{boundary}--\r\n".encode()

    response = toy_api.client.post("/v1/checkpoints", content=body(), headers=toy_api.auth() | {
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert_error(response, 413, "file_too_large")
    assert toy_api.stored_files() == []


def test_malformed_requests(toy_api: Api, init: dict) -> None:
    assert_error(toy_api.client.post("/v1/checkpoints", headers=toy_api.auth(), json={"pair": "toy"}), 400,
                 "invalid_request")
    missing_pair = toy_api.client.post("/v1/checkpoints", headers=toy_api.auth(),
                                       files={"file": ("a.safetensors", save(init))})
    assert assert_error(missing_pair, 400, "invalid_request")["param"] == "pair"
    stray = toy_api.client.post("/v1/checkpoints", headers=toy_api.auth(), data={"pair": "toy", "x": "1"},
                                files={"file": ("a.safetensors", save(init))})
    assert assert_error(stray, 400, "invalid_request")["param"] == "x"
    assert toy_api.stored_files() == []


def test_a_retry_answers_as_the_resource_is_now(toy_api: Api, init: dict) -> None:
    """A replay returned the first response, a checkpoint long deleted included."""
    content = save(adapter(init))
    first = upload(toy_api, content, key="k2").json()
    assert toy_api.client.delete(f"/v1/checkpoints/{first['id']}", headers=toy_api.auth()).status_code == 200
    error = assert_error(upload(toy_api, content, key="k2"), 409, "conflict")
    assert first["id"] in error["message"] and "deleted" in error["message"]
    assert toy_api.stored_files() == []
