"""Device names: what `auto` picks, and a clear error for a GPU this machine does not have."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from app.config import Settings
from models.device import DeviceError, resolve_device

NO_CUDA = not torch.cuda.is_available()


def test_auto_picks_the_gpu_when_torch_sees_one_else_the_cpu() -> None:
    assert resolve_device("auto").type == ("cpu" if NO_CUDA else "cuda")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "CPU", ""])
def test_names_outside_the_pattern_are_refused_by_the_engine_and_the_settings(name: str, tmp_path) -> None:
    with pytest.raises(DeviceError, match="must be auto, cpu, cuda or cuda:N"):
        resolve_device(name)
    with pytest.raises(ValidationError, match="device"):
        Settings(data_dir=tmp_path, device=name)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU")
def test_asking_for_a_missing_gpu_says_so() -> None:
    for name in ("cuda", "cuda:0"):
        with pytest.raises(DeviceError, match="torch sees no CUDA GPU"):
            resolve_device(name)


@pytest.mark.skipif(NO_CUDA, reason="no CUDA GPU")
def test_a_gpu_index_past_the_last_is_refused() -> None:
    with pytest.raises(DeviceError, match="GPU"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
