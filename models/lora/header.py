"""Reading a safetensors header without torch: names, dtypes, shapes and offsets, checked against the
file before any tensor is loaded (uploads are refused here, before compute is spent)."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from models.errors import AdapterError

_DTYPES = {"F32": 4, "F16": 2, "BF16": 2}


def _parse(path: Path) -> tuple[dict, int]:
    """The header as a JSON object, its length checked against the file's size; and the bytes after it."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if size < 8:
            raise AdapterError("file is empty or truncated: a safetensors file starts with an 8-byte header length")
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > size - 8:
            raise AdapterError(f"header length {length} is longer than the file ({size} bytes)")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AdapterError(f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise AdapterError("header is not a JSON object")
    return header, size - 8 - length


def read_metadata(path: Path) -> dict[str, str]:
    """The header's `__metadata__` (string keys and values), {} if it has none."""
    metadata = _parse(path)[0].get("__metadata__")
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        return {}
    return metadata


def read_header(path: Path) -> dict:
    """The JSON header of a safetensors file, checked against the file's size and offsets."""
    header, data_size = _parse(path)
    header.pop("__metadata__", None)
    spans = []
    for name, info in header.items():
        try:
            start, end = (int(x) for x in info["data_offsets"])
            dtype, shape = info["dtype"], [int(x) for x in info["shape"]]
        except (KeyError, TypeError, ValueError):
            raise AdapterError(f"tensor {name!r} has a malformed header entry") from None
        if dtype not in _DTYPES:
            raise AdapterError(f"tensor {name!r} has dtype {dtype}; expected one of {', '.join(_DTYPES)}")
        if end - start != _DTYPES[dtype] * math.prod(shape) or start < 0:
            raise AdapterError(f"tensor {name!r}: offsets {start}..{end} do not match its shape {shape}")
        spans.append((start, end, name))
    spans.sort()
    for (_, e0, n0), (s1, _, n1) in zip(spans, spans[1:], strict=False):
        if s1 < e0:
            raise AdapterError(f"tensors {n0!r} and {n1!r} overlap in the file")
    if spans and spans[-1][1] > data_size:
        raise AdapterError(f"file is truncated: tensor {spans[-1][2]!r} ends past the end of the data")
    return header
