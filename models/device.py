"""Which torch device the ML code runs on: `auto` (the first CUDA GPU torch sees, else the CPU), `cpu`,
`cuda` or `cuda:N`. One place for the rule, so the API's chat engines, the workers and the benchmarks agree.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from models.errors import GradliftError

if TYPE_CHECKING:  # torch loads on first use: the settings import this module
    import torch

DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"


class DeviceError(GradliftError):
    """A device was named that this machine does not have."""


def resolve_device(name: str = "auto") -> torch.device:
    """The device `name` stands for here; DeviceError if it names a GPU torch cannot see."""
    import torch

    if not re.match(DEVICE_PATTERN, name):
        raise DeviceError(f"device must be auto, cpu, cuda or cuda:N, not {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} was asked for, but torch sees no CUDA GPU "
                              f"(torch {torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r} was asked for, but torch sees {torch.cuda.device_count()} GPU(s)")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (for timing); nothing to wait for on the CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
