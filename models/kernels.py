"""One set of CPU kernels on every x86 machine, so that a rerun elsewhere computes the same bits.

PyTorch, MKL and oneDNN each pick their kernels by what the CPU offers (AVX2, AVX-512, ...), and the kernels
round differently: a 4-step LoRA fine-tune of the smol pair's LLM, one thread, ends on other bits under
PyTorch's AVX-512 kernels than under its AVX2 ones on the same machine, and a shadow run, a GT training or a
distillation from the GT's update amplifies that (`python -m bench.kernels` shows it and compares with
`bench/results/kernels.json`). Asking all three for their AVX2 path, which every x86 machine of the last
decade has, makes the built pair, shadow runs and benchmarks one computation wherever they run; it cost
nothing measurable here (`python -m bench.kernels`, 4 fine-tune steps: 9.1 s pinned and 8.9 s on AVX-512, then
9.4 and 9.3).

`GRADLIFT_CPU_KERNELS=native` keeps each library's own choice; a variable the environment already sets is
kept. It has to happen before the process's first tensor operation (each library fixes its choice then), so
importing `models` does it; CUDA kernels are not touched.
"""

from __future__ import annotations

import os
from pathlib import Path

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
SETTING = "GRADLIFT_CPU_KERNELS"  # "avx2" (the default) or "native"


def pin_cpu_kernels(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """Ask PyTorch, MKL and oneDNN for their AVX2 kernels where the CPU has AVX2 and the setting does not say
    `native`; returns the variables it set (none that the environment already had)."""
    choice = os.environ.get(SETTING, "avx2").lower()
    if choice not in ("avx2", "native"):
        raise ValueError(f"{SETTING} must be 'avx2' or 'native', not {choice!r}")
    if choice == "native" or " avx2" not in cpu_description(cpuinfo):
        return {}
    chosen = {name: value for name, value in AVX2.items() if name not in os.environ}
    os.environ.update(chosen)
    return chosen


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The kernel's description of the CPU (model name, flags); empty where there is none (not Linux)."""
    try:
        return cpuinfo.read_text()
    except OSError:
        return ""
