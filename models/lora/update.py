"""LoRA update vectors: dA = A - A0 and dB = B - B0 per adapted module, as the paper defines them.

An update is a dict from PEFT's saved tensor names to deltas. `LoraLayout` orders those tensors into
one token per transformer layer, [q.A, q.B, v.A, v.B] flattened (the paper's order; generally: each
target module in the pair's order, A before B), and back exactly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.errors import AdapterError
from models.lora.header import read_header

Update = dict[str, torch.Tensor]

_NAME = re.compile(r"\.layers\.(\d+)\..*?\.([A-Za-z0-9_]+)\.lora_([AB])\.weight$")


@dataclass(frozen=True)
class Slot:
    name: str
    layer: int
    module: str
    kind: str  # "A" or "B"
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(torch.Size(self.shape).numel())


class LoraLayout:
    """Where each LoRA tensor sits in the [layers, token_dim] sequence."""

    def __init__(self, init: Update, targets: tuple[str, ...]):
        slots = []
        for name, tensor in init.items():
            match = _NAME.search(name)
            if match is None or match.group(2) not in targets:
                raise AdapterError(f"tensor {name!r} is not a LoRA weight of a target module {targets}")
            slots.append(Slot(name, int(match.group(1)), match.group(2), match.group(3), tuple(tensor.shape)))
        slots.sort(key=lambda s: (s.layer, targets.index(s.module), s.kind))
        self.slots = slots
        self.num_layers = 1 + max(s.layer for s in slots)
        per_layer = [sum(s.size for s in slots if s.layer == i) for i in range(self.num_layers)]
        if len(set(per_layer)) != 1:
            raise AdapterError(f"layers carry different LoRA sizes {per_layer}; one token per layer needs equal sizes")
        self.token_dim = per_layer[0]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.slots]

    def to_tokens(self, update: Update) -> torch.Tensor:
        """[L, D] layer tokens from an update dict."""
        rows: list[list[torch.Tensor]] = [[] for _ in range(self.num_layers)]
        for s in self.slots:
            rows[s.layer].append(update[s.name].reshape(-1).float())
        return torch.stack([torch.cat(r) for r in rows])

    def from_tokens(self, tokens: torch.Tensor) -> Update:
        """The inverse of to_tokens; tokens is [L, D]."""
        if tuple(tokens.shape) != (self.num_layers, self.token_dim):
            raise AdapterError(f"tokens of shape {tuple(tokens.shape)}, expected {(self.num_layers, self.token_dim)}")
        out, offset = {}, [0] * self.num_layers
        for s in self.slots:
            start = offset[s.layer]
            out[s.name] = tokens[s.layer, start:start + s.size].reshape(s.shape).clone()
            offset[s.layer] = start + s.size
        return out


def subtract(adapter: Update, init: Update) -> Update:
    """dA, dB of an adapter against the init it was trained from."""
    return {name: adapter[name].float() - init[name].float() for name in init}


def add(init: Update, update: Update) -> Update:
    """A0 + dA, B0 + dB: the LoRA weights that carry an update."""
    return {name: (init[name].float() + update[name].float()).contiguous() for name in init}


def mean(updates: list[Update]) -> Update:
    """Element-wise average: the paper's pooling of several organizations' updates."""
    return {name: torch.stack([u[name].float() for u in updates]).mean(0) for name in updates[0]}


def delta_weight(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """The dense change one LoRA module makes to its base weight: scale * B @ A."""
    return scale * (b.float() @ a.float())


def module_deltas(lora_weights: Update, scale: float) -> dict[str, torch.Tensor]:
    """Each adapted module's dense weight change (scale * B @ A), keyed by the plain model's parameter name."""
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in lora_weights.items():
        match = _NAME.search(name)
        if match is None:
            raise AdapterError(f"not a LoRA tensor name: {name!r}")
        module = name[: name.index(".lora_")].removeprefix("base_model.model.")
        by_module.setdefault(module, {})[match.group(3)] = tensor
    return {f"{module}.weight": delta_weight(ab["A"], ab["B"], scale) for module, ab in by_module.items()}


def merge_into(model: torch.nn.Module, lora_weights: Update, scale: float) -> torch.nn.Module:
    """Add every module's delta weight to a plain model in place (no PEFT wrapper; fast evaluation)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, delta in module_deltas(lora_weights, scale).items():
            params[name] += delta
    return model


# ---- files from users: safetensors only, checked from the header before any tensor is read ----

MAX_ABS = 1e4  # far above any LoRA weight a fine-tune makes; anything larger is corrupt or hostile


def validate_adapter_file(path: Path, expected_shapes: dict[str, tuple[int, ...]]) -> None:
    """Reject anything but a finite LoRA adapter with exactly the expected tensor names and shapes."""
    header = read_header(Path(path))
    for name, shape in expected_shapes.items():
        if name not in header:
            raise AdapterError(f"missing tensor {name!r}")
        if tuple(header[name]["shape"]) != tuple(shape):
            raise AdapterError(f"tensor {name!r} has shape {header[name]['shape']}, expected {list(shape)}")
    extra = sorted(set(header) - set(expected_shapes))
    if extra:
        raise AdapterError(f"unexpected tensor {extra[0]!r}: not a LoRA weight of this pair's TinyLM")
    try:
        tensors = load_file(str(path))
    except SafetensorError as exc:  # read_header refuses what the library refuses; this is the backstop
        raise AdapterError(f"safetensors cannot read the file: {exc}") from None
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise AdapterError(f"tensor {name!r} holds NaN or Inf")
        if tensor.abs().max() > MAX_ABS:
            raise AdapterError(f"tensor {name!r} holds values above {MAX_ABS:g} in magnitude")


def read_adapter(path: Path) -> Update:
    return {k: v.float() for k, v in load_file(str(path)).items()}


def save_update(update: Update, path: Path, metadata: dict | None = None) -> None:
    """Write tensors, with metadata as one sorted JSON string: the same content gives the same bytes
    (safetensors writes several metadata keys in no fixed order)."""
    meta = {"gradlift": json.dumps(metadata, sort_keys=True)} if metadata else None
    save_file({k: v.contiguous() for k, v in update.items()}, str(path), metadata=meta)
