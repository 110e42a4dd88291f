"""Orbax checkpoints of the train state: save every N steps and at the end, keep K, write
asynchronously, and restore onto any mesh (the target shardings come from the caller)."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Checkpoints under `directory/<step>`. A save that a crash interrupts is never restored:
  orbax commits a step only once all of it is written."""

  def __init__(self, directory: str, save_every: int = 100, keep: int = 3,
               async_save: bool = True):
    if save_every <= 0 or keep <= 0:
      raise ValueError(f"save_every={save_every}, keep={keep}: both must be positive")
    self.directory = os.path.abspath(directory)
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                             enable_async_checkpointing=async_save,
                                             create=True))

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def save(self, step: int, state, force: bool = False) -> bool:
    """Saves if `step` is due (every `save_every`) or `force`; returns whether it saved."""
    return self._mngr.save(step, args=ocp.args.StandardSave(state), force=force)

  def restore(self, step: int | None, target):
    """The state saved at `step` (default: the latest), laid out like `target`: a pytree of
    arrays or jax.ShapeDtypeStructs whose shardings say where each array goes."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        target)
    return self._mngr.restore(step, args=ocp.args.StandardRestore(abstract))

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()
