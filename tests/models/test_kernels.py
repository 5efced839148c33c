"""The CPU kernels every process pins when it imports `models` (models/kernels.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.kernels import AVX2, SETTING, pin_cpu_kernels


@pytest.fixture
def bare_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (*AVX2, SETTING):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\n")
    return path


def test_an_avx2_cpu_gets_avx2_kernels_of_all_three_libraries_unless_the_environment_says_otherwise(
        tmp_path: Path, bare_env: pytest.MonkeyPatch) -> None:
    bare_env.setenv("MKL_CBWR", "COMPATIBLE")  # what the environment sets is kept
    chosen = pin_cpu_kernels(cpuinfo(tmp_path, "avx avx2 avx512f"))
    assert chosen == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert os.environ["ATEN_CPU_CAPABILITY"] == "avx2" and os.environ["MKL_CBWR"] == "COMPATIBLE"


def test_native_and_portable_kernels_a_cpu_without_avx2_and_a_wrong_setting(
        tmp_path: Path, bare_env: pytest.MonkeyPatch) -> None:
    assert pin_cpu_kernels(cpuinfo(tmp_path, "avx sse4_2")) == {}
    assert pin_cpu_kernels(tmp_path / "absent") == {}
    bare_env.setenv(SETTING, "native")
    assert pin_cpu_kernels(cpuinfo(tmp_path, "avx2")) == {} and "ATEN_CPU_CAPABILITY" not in os.environ
    bare_env.setenv(SETTING, "portable")  # MKL's branch for Intel and AMD alike
    assert pin_cpu_kernels(cpuinfo(tmp_path, "avx2"))["MKL_CBWR"] == "COMPATIBLE"
    bare_env.setenv(SETTING, "avx512")
    with pytest.raises(ValueError, match="GRADLIFT_CPU_KERNELS must be"):
        pin_cpu_kernels(cpuinfo(tmp_path, "avx2"))


@pytest.mark.skipif(" avx2" not in (Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""),
                    reason="the CPU has no AVX2")
def test_importing_models_makes_torch_use_its_avx2_kernels() -> None:
    """In a fresh process, before any tensor operation: torch then runs its AVX2 kernels, whatever the CPU
    offers beyond."""
    code = "import torch, models; torch.ones(2).sum(); print(torch.backends.cpu.get_cpu_capability())"
    env = {k: v for k, v in os.environ.items() if k not in (*AVX2, SETTING)}
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert got.stdout.strip() == "AVX2"
