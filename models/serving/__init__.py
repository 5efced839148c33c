"""Chat on upgraded models: one base LLM per pair with generated adapters switched per request
(adapters.py), sampling (sampling.py), continuous batching (batch.py), the engine that owns them (engine.py)."""
