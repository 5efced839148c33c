"""Generated adapters as the chat engine applies them: each LoRA target Linear of the base model becomes a
`SwitchableLinear` that adds the low-rank term of whichever adapter is active in the calling thread,

    y = x W^T (+ bias) + (x A^T) (scale * B)^T          A: [r, in], B: [out, r]

The active adapter is a context variable set around each forward call (`active`): one adapter for a
request decoding alone, or one per group of rows (`RowAdapters`) when the batcher decodes many requests
in one forward. Requests on different adapters share the same weights without mixing, and switching costs
a variable assignment.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from models.errors import AdapterError

LoraFactors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # module name -> (A [r, in], scale * B [out, r])


@dataclass(frozen=True)
class RowAdapters:
    """A batch's adapters: (row indices, or None for every row; factors) per distinct adapter in it."""

    groups: tuple[tuple[torch.Tensor | None, LoraFactors], ...]


_ACTIVE: ContextVar[LoraFactors | RowAdapters | None] = ContextVar("gradlift_active_adapter", default=None)


class SwitchableLinear(torch.nn.Module):
    """A base Linear plus the active adapter's low-rank term for this module, if it has one."""

    def __init__(self, base: torch.nn.Linear, name: str) -> None:
        super().__init__()
        self.weight, self.bias, self.name = base.weight, base.bias, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        active = _ACTIVE.get()
        groups = active.groups if isinstance(active, RowAdapters) else ((None, active),) if active else ()
        for rows, factors in groups:
            if (ab := factors.get(self.name)) is None:
                continue
            if rows is None:  # every row
                out = out + F.linear(F.linear(x, ab[0]), ab[1])
            else:
                out = out.index_add(0, rows, F.linear(F.linear(x[rows], ab[0]), ab[1]))
        return out


def make_switchable(model: torch.nn.Module, targets: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """Swap every target Linear for a SwitchableLinear in place; returns {module name: (out, in)}."""
    shapes = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, SwitchableLinear(module, name))
            shapes[name] = tuple(module.weight.shape)
    if not shapes:
        raise AdapterError(f"the model has no Linear modules named {targets}")
    return shapes


def read_factors(path: Path, shapes: dict[str, tuple[int, int]], scale: float,
                 device: torch.device | str = "cpu") -> LoraFactors:
    """An adapter's PEFT safetensors file as per-module factors on `device`, checked against the base model."""
    tensors = load_file(str(path))
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        if ".lora_" not in name:
            raise AdapterError(f"not a LoRA tensor name: {name!r}")
        module = name[: name.index(".lora_")].removeprefix("base_model.model.")
        by_module.setdefault(module, {})[name[name.index(".lora_") + 6]] = tensor.float()
    factors: LoraFactors = {}
    for module, ab in by_module.items():
        if module not in shapes or set(ab) != {"A", "B"}:
            raise AdapterError(f"adapter tensors for {module!r} do not fit this model's LoRA targets")
        out_features, in_features = shapes[module]
        a, b = ab["A"], ab["B"]
        if a.shape[1] != in_features or b.shape[0] != out_features or a.shape[0] != b.shape[1]:
            raise AdapterError(f"adapter {module!r}: A {tuple(a.shape)}, B {tuple(b.shape)} do not fit "
                               f"a Linear of {in_features} -> {out_features}")
        factors[module] = (a.contiguous().to(device), (scale * b).contiguous().to(device))
    return factors


def factors_bytes(factors: LoraFactors) -> int:
    return sum(t.numel() * t.element_size() for pair in factors.values() for t in pair)


@dataclass(frozen=True)
class AdapterRef:
    """A generated adapter: its id (immutable content) and its PEFT safetensors file."""

    id: str
    path: Path


@contextmanager
def active(factors: LoraFactors | RowAdapters | None) -> Iterator[None]:
    token = _ACTIVE.set(factors)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
