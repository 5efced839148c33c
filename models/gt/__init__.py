"""The Gradient Transformer: the network (network.py, read it top to bottom), its training on shadow runs,
its checkpoints, and the baselines it is measured against (ridge, nearest shadow run, mean update)."""
