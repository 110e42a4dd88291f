"""E-step statistics against hand-computed values."""

import math

import numpy as np
import pytest

from autocode_jax.em.estep import (advantages, code_prior, curate, reference_strategy,
                                   subsample, values)


def test_prior_is_laplace_smoothed():
  assert code_prior([1, 0, 0, 1, 1, 0, 0, 0]) == pytest.approx(4 / 10)
  assert code_prior([0] * 8) == pytest.approx(1 / 10)
  assert code_prior([]) == pytest.approx(0.5)


def test_values_and_missing_labels():
  assert values([0, 1, 1, 0], [1.0, 0.0, 1.0, 0.0]) == pytest.approx((0.5, 0.5))
  assert values([0, 0, 0], [1.0, 1.0, 0.0]) == pytest.approx((2 / 3, 0.0))  # no c = 1 rollout
  assert values([1, 1], [0.0, 1.0]) == pytest.approx((0.0, 0.5))


def test_reference_strategy_eq5():
  # alpha * pi * Q: 4 * 0.6 * 0.5 = 1.2 for c = 0 and 4 * 0.4 * 0.75 = 1.2 for c = 1: a tie.
  assert reference_strategy(0.4, (0.5, 0.75), 4.0) == pytest.approx((0.5, 0.5))
  s = reference_strategy(0.1, (0.0, 1.0), 4.0)
  z = math.exp(0.0) + math.exp(0.4)
  assert s == pytest.approx((1 / z, math.exp(0.4) / z))
  assert sum(reference_strategy(0.9, (1.0, 1.0), 100.0)) == pytest.approx(1.0)


def test_curate_by_hand():
  """A query's steps 2-5: the prior from its vanilla rollouts only, the values and s* from all,
  the M picks as subsample draws them from the same generator, their advantages."""
  vanilla = [(0, 1.0), (0, 0.0), (1, 1.0), (0, 1.0)]
  code = [(1, 1.0), (1, 0.0), (0, 0.0), (1, 1.0)]
  labels, rewards = [l for l, _ in vanilla + code], [r for _, r in vanilla + code]
  cur = curate([l for l, _ in vanilla], labels, rewards, 2.0, 6, np.random.default_rng(5))
  assert cur.pi1 == pytest.approx(2 / 6)
  assert cur.q == pytest.approx((2 / 4, 3 / 4))
  l0, l1 = 2.0 * (4 / 6) * 0.5, 2.0 * (2 / 6) * 0.75
  assert cur.s_star == pytest.approx((math.exp(l0) / (math.exp(l0) + math.exp(l1)),
                                      math.exp(l1) / (math.exp(l0) + math.exp(l1))))
  assert list(cur.picks) == subsample(labels, cur.s_star, 6, np.random.default_rng(5))
  np.testing.assert_allclose(cur.advantages, advantages([rewards[i] for i in cur.picks]))
  assert len(cur.picks) == len(cur.advantages) == 6


def test_subsample_proportions_and_fallback():
  labels = [0, 0, 1, 0, 1, 1, 0, 0]
  rng = np.random.default_rng(0)
  idx = subsample(labels, (0.25, 0.75), 40_000, rng)
  share_code = np.mean([labels[i] for i in idx])
  assert abs(share_code - 0.75) < 0.01
  counts = np.bincount(idx, minlength=8)
  assert abs(counts[2] / counts[[2, 4, 5]].sum() - 1 / 3) < 0.02  # uniform within a label
  only_plain = subsample([0, 0, 0], (0.1, 0.9), 100, np.random.default_rng(1))
  assert set(only_plain) <= {0, 1, 2}  # no c = 1 rollout: drawn from the other label
  assert subsample(labels, (0.5, 0.5), 5, np.random.default_rng(3)) == \
      subsample(labels, (0.5, 0.5), 5, np.random.default_rng(3))
