"""One set of CPU kernels for every process, so that a rerun computes the same bits.

PyTorch, MKL and oneDNN each pick their kernels by what the CPU offers (AVX2, AVX-512, ...), and the kernels
round differently: a 4-step LoRA fine-tune of the smol pair's LLM, one thread, ends on other bits under
PyTorch's AVX-512 kernels than under its AVX2 ones on the same machine, and a shadow run, a GT training or a
distillation from the GT's update amplifies that (`python -m bench.kernels` shows it and compares with
`bench/results/kernels.json`). So every process asks all three for their AVX2 path (`avx2`, the default),
which every x86 machine of the last decade has: the same computation on any machine of one CPU maker.
Across makers it is not: MKL honours its AVX2 branch on Intel CPUs only and falls back to its own choice on
others (Intel's oneMKL guide), and the pinned fine-tune ends on other bits on an AMD EPYC than on an Intel
Xeon. `portable` takes MKL's COMPATIBLE (SSE2) branch instead, the one Intel documents as giving the same
results on Intel and compatible CPUs, at two to three times the fine-tune's time (37.9 s against 13.6 s for 4
steps on an Intel Xeon, 24.1 s against 11.9 s on an AMD EPYC), yet it too ended on other bits on the two
machines: no choice here reproduces across makers (bench.kernels records each operation's bits to find
which parts them). `native` keeps each library's own choice (9.8 s on the Xeon: there the pin costs about
40% of a fine-tune's time; on the AMD EPYC, nothing).

A variable the environment already sets is kept. The choice has to happen before the process's first tensor
operation (each library fixes its choice then), so importing `models` does it; CUDA kernels are not touched.
"""

from __future__ import annotations

import os
from pathlib import Path

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
PORTABLE = AVX2 | {"MKL_CBWR": "COMPATIBLE"}
CHOICES = {"avx2": AVX2, "portable": PORTABLE, "native": {}}
SETTING = "GRADLIFT_CPU_KERNELS"  # one of CHOICES; "avx2" by default


def pin_cpu_kernels(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """Ask PyTorch, MKL and oneDNN for the kernels the setting names where the CPU has AVX2; returns the
    variables it set (none that the environment already had)."""
    choice = os.environ.get(SETTING, "avx2").lower()
    if choice not in CHOICES:
        raise ValueError(f"{SETTING} must be one of {', '.join(CHOICES)}, not {choice!r}")
    if " avx2" not in cpu_description(cpuinfo):
        return {}
    chosen = {name: value for name, value in CHOICES[choice].items() if name not in os.environ}
    os.environ.update(chosen)
    return chosen


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The kernel's description of the CPU (model name, flags); empty where there is none (not Linux)."""
    try:
        return cpuinfo.read_text()
    except OSError:
        return ""
