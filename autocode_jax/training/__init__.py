"""Losses, optimizers, the sharded train step and checkpoints."""
