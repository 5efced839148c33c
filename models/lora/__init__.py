"""LoRA plumbing that knows no model on disk: the LoRA settings, update vectors (dA, dB) and their layer
tokens, merging, header-only checks of safetensors files, and privacy (DP-SGD settings, output noise)."""
