"""The ML core of gradlift: pairs, LoRA update vectors, the Gradient Transformer, shadow pairs, evaluation.

Importable without `app/` or `workers/`.
"""

from models.kernels import pin_cpu_kernels

pin_cpu_kernels()  # before any tensor operation of the process: see models/kernels.py
