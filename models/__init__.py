"""The ML core of gradlift: pairs, LoRA update vectors, the Gradient Transformer, shadow pairs, evaluation.

Importable without `app/` or `workers/`.
"""
