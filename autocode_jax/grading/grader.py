"""`grade`, `grade_batch` and `grade_results`: is a response's final answer equivalent to the gold,
and did the grader manage to say?"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import threading
from typing import Iterable, Sequence

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


@dataclasses.dataclass(frozen=True)
class Grade:
  """One graded response: `correct`, the extracted `answer` (None: nothing to grade), when the
  worker could not answer, `failure`: 'timeout', 'died' or the exception it raised, and the
  `seconds` the comparison took (the round trip to the worker; 0 when nothing was graded)."""
  correct: bool
  answer: str | None = None
  failure: str | None = None
  seconds: float = 0.0

  @property
  def failure_kind(self) -> str | None:
    """'timeout' (the time limit was hit and the worker killed), 'error' (an exception, or a
    worker that died) or None."""
    if self.failure is None:
      return None
    return "timeout" if self.failure == "timeout" else "error"


def failure_counts(kinds: Iterable[str | None]) -> dict[str, int]:
  """{'timeout': n, 'error': n} over failure kinds (Grade.failure_kind, or what a trajectory or
  an eval row kept of it; None: graded)."""
  counts = collections.Counter(kinds)
  return {"timeout": counts["timeout"], "error": counts["error"]}


def grade(response: str, gold: str, dataset: str | None = None, *, timeout_s: float = 5.0,
          pool: GraderPool | None = None) -> bool:
  """True iff the final answer of `response` equals the (normalised) `gold`.

  A response without an extractable answer, or whose comparison errors or runs past
  `timeout_s` (the worker is then killed), grades False; `grade_results` says which.
  """
  return grade_batch([response], [gold], dataset, timeout_s=timeout_s, pool=pool)[0]


def grade_batch(responses: list[str], golds: list[str], dataset: str | None = None, *,
                timeout_s: float = 5.0, pool: GraderPool | None = None) -> list[bool]:
  """`grade` over many pairs, in parallel over the pool's worker processes."""
  return [g.correct for g in grade_results(responses, golds, dataset, timeout_s=timeout_s,
                                           pool=pool)]


def grade_results(responses: Sequence[str], golds: Sequence[str], dataset: str | None = None, *,
                  timeout_s: float = 5.0, pool: GraderPool | None = None) -> list[Grade]:
  """A `Grade` per (response, gold), in parallel over the pool's worker processes."""
  if len(responses) != len(golds):
    raise ValueError(f"grade_results: {len(responses)} responses but {len(golds)} golds")
  preds = [extract_answer(r, dataset) for r in responses]
  todo = [i for i, p in enumerate(preds) if p is not None]
  out = [Grade(False) for _ in responses]
  results = (pool or default_pool()).map(
      "equivalent", [(golds[i], preds[i], max(1, int(timeout_s))) for i in todo], timeout_s,
      seconds=True)
  for i, (ok, value, seconds) in zip(todo, results):
    out[i] = Grade(bool(ok and value), preds[i], None if ok else str(value), seconds)
  return out
