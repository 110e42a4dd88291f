"""E-step statistics at one decision point, a query or a branch point (METHOD.md, E-step, steps
2-5): the prior pi(c|x), the values Q(x, c), the reference strategy s*(c|x) (Eq. 5), the
subsample that forms D_train, and its group advantages.

Pure functions of the rollouts' labels and rewards; c = 1 means the trajectory executed code.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Curation:
  """Steps 2-5 at one decision point (a query, or a branch point): pi1 = pi(c=1), smoothed;
  q = (Q(c=0), Q(c=1)); s_star = (s*(c=0), s*(c=1)); picks: the M subsampled rollouts (indices,
  in draw order); advantages: the picks' group advantages, in the same order."""
  pi1: float
  q: tuple[float, float]
  s_star: tuple[float, float]
  picks: tuple[int, ...]
  advantages: tuple[float, ...]


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


def advantages(rewards: Sequence[float], eps: float = 1e-6) -> np.ndarray:
  """A = (r - mean r) / (std r + eps) over one group (population std); 0 for equal rewards."""
  r = np.asarray(rewards, np.float64)
  return (r - r.mean()) / (r.std() + eps)


def curate(prior_labels: Sequence[int], labels: Sequence[int], rewards: Sequence[float],
           alpha: float, m: int, rng: np.random.Generator) -> Curation:
  """Steps 2-5 at one decision point: the prior from the labels of the rollouts left free to
  choose (`prior_labels`: a query's vanilla rollouts, a branch point's code-allowed
  continuations); the values and s* from all its rollouts (`labels`, `rewards`); M = m of those
  subsampled (the only draws from rng); the picks' advantages."""
  pi1 = code_prior(prior_labels)
  q = values(labels, rewards)
  s_star = reference_strategy(pi1, q, alpha)
  picks = subsample(labels, s_star, m, rng)
  adv = advantages([rewards[i] for i in picks])
  return Curation(pi1, q, s_star, tuple(picks), tuple(float(a) for a in adv))
