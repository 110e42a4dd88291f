"""The query record shared by training and evaluation."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Query:
  """One math problem.

  id: unique within its source, e.g. "math500/test/precalculus/807.json" or "gsm8k/12".
  problem: the question text shown to the model.
  gold: the normalised gold answer (see grading.normalize_gold).
  level: difficulty 1-5 where the source has one (MATH), else None.
  source: the dataset name (a key of data.DATASETS).
  solution: a worked solution ending in \\boxed{answer}, where the source has one (train sets);
    the `sft` baseline trains on it.
  """
  id: str
  problem: str
  gold: str
  level: int | None
  source: str
  solution: str | None = None


@dataclasses.dataclass(frozen=True)
class SftExample:
  """A supervised example: the query, its prompt mode (cot / code / auto), the response text,
  and an opening `prefix` tokenised on its own (as the code-probe prefix is in rollouts):
  written by the model and trained on like the rest, or with `prefix_given` part of the context
  (out of the loss), as the code_prefix probe appends it to the prompt."""
  query: Query
  response: str
  mode: str = "auto"
  prefix: str = ""
  prefix_given: bool = False
