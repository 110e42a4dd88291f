"""Run metrics: one JSON object a line in run_dir/metrics.jsonl always, TensorBoard scalars when
asked (tensorboardX, imported only then). Only process 0 writes."""

from __future__ import annotations

import os
import time

import jax

from autocode_jax.files import JsonlStore, read_jsonl


class MetricsWriter:

  def __init__(self, run_dir: str, tensorboard: bool = False):
    self.enabled = jax.process_index() == 0
    self.store = JsonlStore(os.path.join(run_dir, "metrics.jsonl"))
    self._tb = None
    if self.enabled and tensorboard:
      try:
        from tensorboardX import SummaryWriter
      except ImportError:
        raise RuntimeError("--tensorboard needs tensorboardX: pip install tensorboardX") from None
      self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))

  def write(self, kind: str, step: int, values: dict, **tags) -> None:
    """One event: kind (estep, mstep, behaviour, eval, iteration), the global train step, the
    values, and tags such as the iteration. TensorBoard gets every number, nested dicts as
    kind/key/subkey; lists go to the JSONL only."""
    if not self.enabled:
      return
    rec = {"kind": kind, "step": step, **tags, **values, "time": round(time.time(), 3)}
    self.store.append([rec])
    if self._tb is not None:
      for k, v in _scalars(values, kind):
        self._tb.add_scalar(k, v, step)
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _scalars(values: dict, prefix: str):
  """(tag, number) for every number in nested dicts; lists and None are skipped."""
  for k, v in values.items():
    if isinstance(v, dict):
      yield from _scalars(v, f"{prefix}/{k}")
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
      yield f"{prefix}/{k}", v


def read_metrics(run_dir: str, kind: str | None = None) -> list[dict]:
  """The events of run_dir/metrics.jsonl (of `kind`, if given), in order."""
  recs = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
  return [r for r in recs if kind is None or r["kind"] == kind]
