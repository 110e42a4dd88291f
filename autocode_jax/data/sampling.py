"""Difficulty-stratified sampling of training queries (the paper samples 7K by difficulty)."""

from __future__ import annotations

import collections

import numpy as np

from autocode_jax.data.records import Query


def stratified_sample(queries: list[Query], n: int, seed: int = 0,
                      weights: str = "proportional") -> list[Query]:
  """n queries, stratified by `level` (None is a stratum of its own).

  weights="proportional" keeps each level's share of the pool; "uniform" gives each level the
  same share, capped by its size (the rest spread over the larger levels). Quotas are rounded by
  largest remainder; within a level queries are drawn without replacement. The result is a
  deterministic function of (queries, n, seed, weights), shuffled.
  """
  if not 0 < n <= len(queries):
    raise ValueError(f"stratified_sample: n={n} must be in 1..{len(queries)}")
  if weights not in ("proportional", "uniform"):
    raise ValueError(f"stratified_sample: weights={weights!r}: proportional or uniform")
  groups: dict = collections.defaultdict(list)
  for q in queries:
    groups[q.level].append(q)
  keys = sorted(groups, key=lambda k: (k is None, k if k is not None else 0))
  sizes = np.array([len(groups[k]) for k in keys], dtype=np.int64)
  quota = np.zeros(len(keys), dtype=np.int64)
  remaining = n
  active = np.ones(len(keys), bool)
  while remaining > 0:  # iterate so capped strata hand their excess to the others
    share = sizes * active if weights == "proportional" else active.astype(np.int64)
    ideal = remaining * share / share.sum()
    add = np.minimum(np.floor(ideal).astype(np.int64), sizes - quota)
    left = remaining - add.sum()
    order = np.argsort(-(ideal - np.floor(ideal)), kind="stable")
    for i in order:
      if left == 0:
        break
      if active[i] and quota[i] + add[i] < sizes[i]:
        add[i] += 1
        left -= 1
    quota += add
    remaining = n - quota.sum()
    active = quota < sizes
  rng = np.random.default_rng(seed)
  picked = []
  for k, q in zip(keys, quota):
    idx = rng.choice(len(groups[k]), size=int(q), replace=False)
    picked.extend(groups[k][i] for i in sorted(idx))
  return [picked[i] for i in rng.permutation(len(picked))]
