"""`grade` and `grade_batch`: is a response's final answer equivalent to the gold?"""

from __future__ import annotations

import atexit
import threading

from autocode_jax.grading.extract import extract_answer
from autocode_jax.grading.pool import GraderPool

_default: GraderPool | None = None
_default_lock = threading.Lock()


def default_pool() -> GraderPool:
  """The process-wide pool (one worker per core), started on first use."""
  global _default
  with _default_lock:
    if _default is None:
      _default = GraderPool()
      atexit.register(_default.close)
    return _default


def grade(response: str, gold: str, dataset: str | None = None, *, timeout_s: float = 5.0,
          pool: GraderPool | None = None) -> bool:
  """True iff the final answer of `response` equals the (normalised) `gold`.

  A response without an extractable answer, or whose comparison errors or runs past
  `timeout_s` (the worker is then killed), grades False.
  """
  return grade_batch([response], [gold], dataset, timeout_s=timeout_s, pool=pool)[0]


def grade_batch(responses: list[str], golds: list[str], dataset: str | None = None, *,
                timeout_s: float = 5.0, pool: GraderPool | None = None) -> list[bool]:
  """`grade` over many pairs, in parallel over the pool's worker processes."""
  if len(responses) != len(golds):
    raise ValueError(f"grade_batch: {len(responses)} responses but {len(golds)} golds")
  preds = [extract_answer(r, dataset) for r in responses]
  todo = [i for i, p in enumerate(preds) if p is not None]
  out = [False] * len(responses)
  results = (pool or default_pool()).map(
      "equivalent", [(golds[i], preds[i], max(1, int(timeout_s))) for i in todo], timeout_s)
  for i, (ok, value) in zip(todo, results):
    out[i] = bool(ok and value)
  return out
