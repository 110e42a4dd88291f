"""E-step statistics for one query (METHOD.md, E-step, steps 2-5): the prior pi(c|x), the values
Q(x, c), the reference strategy s*(c|x) (Eq. 5), and the subsample that forms D_train.

Pure functions of the rollouts' labels and rewards; c = 1 means the trajectory executed code.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class QueryStats:
  """pi1: pi(c=1|x), smoothed; q: (Q(x,0), Q(x,1)); s_star: (s*(0|x), s*(1|x));
  n_code_vanilla / k: code-labelled vanilla rollouts out of K."""
  pi1: float
  q: tuple[float, float]
  s_star: tuple[float, float]
  n_code_vanilla: int
  k: int


def code_prior(vanilla_labels: Sequence[int]) -> float:
  """pi(c=1|x) = (n_code + 1) / (K + 2) over the K `vanilla` rollouts (Laplace smoothing)."""
  labels = np.asarray(vanilla_labels, dtype=np.int64)
  return float((labels.sum() + 1) / (labels.size + 2))


def values(labels: Sequence[int], rewards: Sequence[float]) -> tuple[float, float]:
  """Q(x, c) = mean reward of the rollouts labelled c (both probes); 0 where none has label c."""
  labels, rewards = np.asarray(labels), np.asarray(rewards, dtype=np.float64)
  return tuple(float(rewards[labels == c].mean()) if np.any(labels == c) else 0.0 for c in (0, 1))


def reference_strategy(pi1: float, q: tuple[float, float], alpha: float) -> tuple[float, float]:
  """s*(c|x) = softmax_c(alpha * pi(c|x) * Q(x, c)) (Eq. 5)."""
  logits = alpha * np.array([(1.0 - pi1) * q[0], pi1 * q[1]])
  e = np.exp(logits - logits.max())
  s = e / e.sum()
  return float(s[0]), float(s[1])


def subsample(labels: Sequence[int], s_star: tuple[float, float], m: int,
              rng: np.random.Generator) -> list[int]:
  """M indices into the rollouts: each draws c ~ s*, then a rollout uniformly among those
  labelled c (with replacement); if none has label c, from the other label."""
  labels = np.asarray(labels)
  pools = [np.flatnonzero(labels == c) for c in (0, 1)]
  if labels.size == 0:
    raise ValueError("subsample: no rollouts")
  out = []
  for c in rng.choice(2, size=m, p=np.asarray(s_star)):
    pool = pools[c] if pools[c].size else pools[1 - c]
    out.append(int(rng.choice(pool)))
  return out


def query_stats(vanilla: Sequence[tuple[int, float]], code_prefix: Sequence[tuple[int, float]],
                alpha: float = 4.0) -> QueryStats:
  """The statistics of one query from its (label, reward) pairs per probe."""
  pi1 = code_prior([l for l, _ in vanilla])
  both = list(vanilla) + list(code_prefix)
  q = values([l for l, _ in both], [r for _, r in both])
  return QueryStats(pi1, q, reference_strategy(pi1, q, alpha),
                    int(sum(l for l, _ in vanilla)), len(vanilla))
