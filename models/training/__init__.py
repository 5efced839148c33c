"""Fine-tuning a pair's models with LoRA from the pair's stored init (organizations' TinyLM runs, shadow
runs, baselines) and building shadow runs: the Gradient Transformer's training data."""
