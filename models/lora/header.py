"""Reading a safetensors header without torch: names, dtypes, shapes and offsets, checked against the
file before any tensor is loaded (uploads are refused here, before compute is spent).

Everything here reads bytes a stranger sent, so every cost is bounded before it is paid: the header's
length against `MAX_HEADER_BYTES` before it is read, JSON through `strict_json` (no NaN or Infinity, no
integer longer than 20 digits, no nesting deeper than asked), and the layout as strictly as the
safetensors library itself reads it (tensors back to back from offset 0 to the end of the file), so a
file that passes here never fails to load."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from models.errors import AdapterError

_DTYPES = {"F32": 4, "F16": 2, "BF16": 2}
# A LoRA header names each tensor once in ~150 bytes: an adapter of every projection of a 7B model needs
# ~100 KB. Anything far larger is not an adapter, and is refused before it is read.
MAX_HEADER_BYTES = 1 << 20
MAX_INT_DIGITS = 20  # 2**64 has 20 digits: no offset or size in a file is longer
_NOT_SAFETENSORS = ("not a safetensors file: it must start with an 8-byte header length and a JSON header "
                    "(adapter_model.safetensors, as PEFT saves it)")


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits")
    return int(text)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is out of range")
    return value


def _constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _depth(value: object) -> int:
    """How deeply containers nest in a parsed JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in children)
    return deepest


def strict_json(text: str | bytes, max_depth: int) -> Any:
    """JSON as the standard library reads it, less what it lets through that no file of ours holds:
    NaN and Infinity, integers longer than 20 digits (whose conversion alone is slow), numbers out of
    float range, and containers nested deeper than `max_depth`. ValueError (with the reason) otherwise."""
    try:
        value = json.loads(text, parse_int=_int, parse_float=_finite, parse_constant=_constant)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8: {exc}") from None
    if _depth(value) > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels")
    return value


def _parse(path: Path) -> tuple[dict, int]:
    """The header as a JSON object, its length checked against the limit and the file's size; and the
    number of bytes after it."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if size < 8:
            raise AdapterError("file is empty or truncated: a safetensors file starts with an 8-byte header length")
        (length,) = struct.unpack("<Q", handle.read(8))
        if size > 8 and handle.read(1) != b"{":
            raise AdapterError(_NOT_SAFETENSORS)
        if length > MAX_HEADER_BYTES:
            raise AdapterError(f"header of {length} bytes is larger than the limit of {MAX_HEADER_BYTES} bytes")
        if length > size - 8:
            raise AdapterError(f"header length {length} is longer than the file ({size} bytes)")
        handle.seek(8)
        try:
            header = strict_json(handle.read(length), max_depth=3)
        except ValueError as exc:
            raise AdapterError(f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise AdapterError("header is not a JSON object")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise AdapterError("header's __metadata__ is not an object of strings")
    return header, size - 8 - length


def read_metadata(path: Path) -> dict[str, str]:
    """The header's `__metadata__` (string keys and values), {} if it has none."""
    return _parse(path)[0].get("__metadata__", {})


def _natural(value: object) -> bool:
    return type(value) is int and value >= 0  # not bool, not float: JSON's 2.0 is no shape


def _entry(name: str, info: object) -> tuple[int, int, str, list[int]]:
    """(start, end, dtype, shape) of one tensor's header entry, each checked for its type."""
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise AdapterError(f"tensor {name!r} has a malformed header entry (dtype, shape, data_offsets)")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(shape, list) or not all(_natural(x) for x in shape):
        raise AdapterError(f"tensor {name!r} has shape {shape!r}: not a list of whole numbers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_natural(x) for x in offsets):
        raise AdapterError(f"tensor {name!r} has data_offsets {offsets!r}: not two whole numbers")
    if dtype not in _DTYPES:
        raise AdapterError(f"tensor {name!r} has dtype {dtype}; expected one of {', '.join(_DTYPES)}")
    return offsets[0], offsets[1], dtype, shape


def read_header(path: Path) -> dict:
    """The JSON header of a safetensors file, checked against the file's size and offsets: tensors lie
    back to back from the start of the data to its end, as the safetensors library requires."""
    header, data_size = _parse(path)
    header.pop("__metadata__", None)
    spans = []
    for name, info in header.items():
        start, end, dtype, shape = _entry(name, info)
        if end < start or end - start != _DTYPES[dtype] * math.prod(shape):
            raise AdapterError(f"tensor {name!r}: offsets {start}..{end} do not match its shape {shape}")
        spans.append((start, end, name))
    spans.sort()
    position, previous = 0, None
    for start, end, name in spans:
        if start < position:
            raise AdapterError(f"tensors {previous!r} and {name!r} overlap in the file")
        if start > position:
            raise AdapterError(f"a gap of {start - position} bytes before tensor {name!r}: the data must be "
                               "tensors back to back")
        position, previous = end, name
    if position > data_size:
        raise AdapterError(f"file is truncated: tensor {previous!r} ends past the end of the data")
    if position < data_size:
        raise AdapterError(f"{data_size - position} bytes after the last tensor belong to none")
    return header
