"""A resumable run of train steps: restore the latest checkpoint, step, save; killed at any point
and restarted with the same arguments, it ends with the same parameters as an uninterrupted run
(the batch of step s is a function of s alone)."""

from __future__ import annotations

from typing import Callable

import jax

from autocode_jax.training.checkpoint import Checkpointer


def fit(state, step_fn: Callable, batch_fn: Callable[[int], dict], num_steps: int,
        checkpointer: Checkpointer, on_metrics: Callable[[int, dict], None] | None = None):
  """Runs train steps int(state.step) .. num_steps - 1, resuming from the latest checkpoint.

  step_fn(state, batch) -> (state, metrics); batch_fn(step) -> batch. The state passed in is
  the fresh initial state, whose arrays also give the shardings a restore lands on.
  """
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(None, state)
  for step in range(int(state.step), num_steps):
    state, metrics = step_fn(state, batch_fn(step))
    if on_metrics is not None:
      on_metrics(step, jax.device_get(metrics))
    checkpointer.save(step + 1, state, force=step + 1 == num_steps)
  checkpointer.wait()
  return state
