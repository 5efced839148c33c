"""Hostile files: every malformed safetensors header and `gradlift` record is an AdapterError or a
ConfigError naming the problem, found from the header alone, before anything large is read."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from safetensors.torch import save_file

from models.errors import AdapterError, ConfigError
from models.lora.header import MAX_HEADER_BYTES, read_header, read_metadata, strict_json
from models.lora.privacy import adapter_privacy
from models.lora.update import validate_adapter_file
from tests.models.test_update import fake_init

NAME = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


def raw(path: Path, header: bytes | str, data: bytes = b"", length: int | None = None) -> Path:
    text = header.encode() if isinstance(header, str) else header
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


def entry(shape: object, offsets: object, dtype: str = "F32") -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


@pytest.mark.parametrize("case, header, data, message", [
    ("float shape", {NAME: entry([2.0, 2], [0, 16])}, b"\0" * 16, "not a list of whole numbers"),
    ("bool shape", {NAME: entry([True, 4], [0, 16])}, b"\0" * 16, "not a list of whole numbers"),
    ("negative shape", {NAME: entry([-2, -2], [0, 16])}, b"\0" * 16, "not a list of whole numbers"),
    ("string offsets", {NAME: entry([4], ["0", "16"])}, b"\0" * 16, "not two whole numbers"),
    ("three offsets", {NAME: entry([4], [0, 8, 16])}, b"\0" * 16, "not two whole numbers"),
    ("entry not an object", {NAME: [1, 2]}, b"", "malformed header entry"),
    ("extra field", {NAME: {**entry([4], [0, 16]), "x": 1}}, b"\0" * 16, "malformed header entry"),
    ("gap between tensors", {NAME: entry([2], [0, 8]), "b": entry([2], [12, 20])}, b"\0" * 20, "gap of 4"),
    ("gap before the first", {NAME: entry([2], [4, 12])}, b"\0" * 12, "gap of 4"),
    ("bytes after the last", {NAME: entry([2], [0, 8])}, b"\0" * 12, "4 bytes after the last tensor"),
    ("end before start", {NAME: entry([0], [8, 0])}, b"\0" * 8, "do not match"),
    ("metadata of numbers", {"__metadata__": {"a": 1}, NAME: entry([2], [0, 8])}, b"\0" * 8, "__metadata__"),
    ("metadata not an object", {"__metadata__": "x", NAME: entry([2], [0, 8])}, b"\0" * 8, "__metadata__"),
])
def test_malformed_entries_are_named(tmp_path: Path, case: str, header: dict, data: bytes, message: str) -> None:
    path = raw(tmp_path / "bad.safetensors", json.dumps(header), data)
    with pytest.raises(AdapterError, match=message):
        read_header(path)


@pytest.mark.parametrize("case, text, message", [
    ("5000-digit integer", '{"a": {"dtype": "F32", "shape": [' + "9" * 5000 + '], "data_offsets": [0, 4]}}',
     "5000 digits"),
    ("NaN", '{"a": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}', "NaN is not a JSON number"),
    ("Infinity", '{"a": {"dtype": "F32", "shape": [Infinity], "data_offsets": [0, 4]}}', "not a JSON number"),
    ("number out of range", '{"a": {"dtype": "F32", "shape": [1e999], "data_offsets": [0, 4]}}', "out of range"),
    ("nested past the recursion limit", '{"a": ' + "[" * 200_000 + "]" * 200_000 + "}", "nested deeper"),
    ("nested below it", '{"a": ' + "[" * 50 + "]" * 50 + "}", "nested deeper"),
    ("not UTF-8", b'{"a\xff": 1}', "not UTF-8"),
])
def test_hostile_json_in_the_header_is_refused(tmp_path: Path, case: str, text: str | bytes, message: str) -> None:
    path = raw(tmp_path / "bad.safetensors", text, b"\0" * 4)
    with pytest.raises(AdapterError, match=message):
        read_header(path)


def test_a_file_that_is_not_safetensors_says_so(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# My adapter\n\nFine-tuned on our data; see adapter_model.safetensors.\n" * 20)
    with pytest.raises(AdapterError, match="^not a safetensors file"):
        read_header(readme)


def test_a_huge_header_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """A header claiming 100 MiB in a file that holds it (sparse: nothing is written) is refused by its
    length; reading and parsing it took seconds and a gigabyte."""
    path = raw(tmp_path / "big.safetensors", "{", length=100 * 2**20)
    with open(path, "r+b") as handle:
        handle.truncate(101 * 2**20)
    with pytest.raises(AdapterError, match=f"larger than the limit of {MAX_HEADER_BYTES} bytes"):
        read_header(path)


def test_a_gap_is_an_adapter_error_not_a_loader_crash(tmp_path: Path) -> None:
    """Before the gap check, validate_adapter_file passed the header and safetensors' loader raised its
    own error (a 500 for the upload)."""
    init = fake_init(layers=1)
    good = tmp_path / "good.safetensors"
    save_file(init, str(good))
    content = good.read_bytes()
    (length,) = struct.unpack("<Q", content[:8])
    header = json.loads(content[8:8 + length])
    first = min((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    for name, info in header.items():
        if name != "__metadata__" and name != first:
            info["data_offsets"] = [info["data_offsets"][0] + 4, info["data_offsets"][1] + 4]
    data = content[8 + length:]
    first_end = header[first]["data_offsets"][1]
    bad = raw(tmp_path / "gap.safetensors", json.dumps(header), data[:first_end] + b"\0" * 4 + data[first_end:])
    with pytest.raises(AdapterError, match="gap of 4 bytes"):
        validate_adapter_file(bad, {k: tuple(v.shape) for k, v in init.items()})


def test_strict_json_reads_what_plain_json_reads() -> None:
    text = '{"a": [1, -2, 3.5, "x", true, null, {"b": []}], "c": 18446744073709551615}'
    assert strict_json(text, max_depth=4) == json.loads(text)
    with pytest.raises(ValueError, match="deeper than 3"):
        strict_json(text, max_depth=3)


def _metadata_file(tmp_path: Path, record: str) -> Path:
    path = tmp_path / "meta.safetensors"
    save_file(fake_init(layers=1), str(path), metadata={"gradlift": record})
    return path


@pytest.mark.parametrize("case, record, message", [
    ("deeply nested", '{"privacy": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested deeper"),
    ("nested settings", json.dumps({"privacy": {"dp_sgd": {"epsilon": 1.0, "x": [[[1]]]}}}), "nested deeper"),
    ("a list among the settings", json.dumps({"privacy": {"dp_sgd": {"epsilon": 1.0, "x": [1]}}}),
     "other than numbers"),
    ("epsilon Infinity", '{"privacy": {"dp_sgd": {"epsilon": Infinity}}}', "not a JSON number"),
    ("epsilon out of range", '{"privacy": {"dp_sgd": {"epsilon": 1e400}}}', "out of range"),
    ("epsilon true", '{"privacy": {"dp_sgd": {"epsilon": true}}}', "without an epsilon"),
    ("5000-digit epsilon", '{"privacy": {"dp_sgd": {"epsilon": ' + "1" * 5000 + "}}}", "5000 digits"),
    ("a long word", json.dumps({"privacy": {"dp_sgd": {"epsilon": 1.0, "kind": "x" * 300}}}), "numbers and words"),
])
def test_hostile_privacy_records_are_config_errors(tmp_path: Path, case: str, record: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        adapter_privacy(read_metadata(_metadata_file(tmp_path, record)))
