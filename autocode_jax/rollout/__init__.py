"""Rollout engines: the interface, sampling parameters, and the built-in JAX sampler."""

from autocode_jax.rollout.engine import STOP_REASONS, Completion, RolloutEngine, SamplingParams
from autocode_jax.rollout.jax_sampler import JaxSampler
from autocode_jax.rollout.slots import SlotBatch
