"""Losses against hand-computed numpy values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autocode_jax.training import losses

# Two rows, three positions; row 1 has its last token masked, row 2 is masked entirely.
LOGP = np.log(np.array([[0.5, 0.2, 0.9], [0.3, 0.3, 0.3]], np.float32))
OLD = np.log(np.array([[0.25, 0.4, 0.9], [0.3, 0.1, 0.6]], np.float32))
MASK = np.array([[1, 1, 0], [0, 0, 0]], np.float32)


def _np_obj(ratio, adv, eps_low=0.2, eps_high=0.2, dual=None):
  obj = min(ratio * adv, np.clip(ratio, 1 - eps_low, 1 + eps_high) * adv)
  if dual is not None and adv < 0:
    obj = max(obj, dual * adv)
  return obj


@pytest.mark.parametrize("adv", [1.5, -1.5])
def test_token_policy_loss_clips_both_sides(adv):
  # ratios of row 1: 0.5/0.25 = 2.0 (above 1 + eps), 0.2/0.4 = 0.5 (below 1 - eps)
  loss, m = losses.policy_loss(LOGP, OLD, jnp.array([adv, 9.0]), MASK)
  want = -(_np_obj(2.0, adv) + _np_obj(0.5, adv)) / 2
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  # A > 0: the 2.0 ratio is clipped (1.2 A < 2 A); the 0.5 one is not (0.5 A < 0.8 A).
  # A < 0: the reverse.
  assert float(m["clip_frac"]) == pytest.approx(0.5)
  np.testing.assert_allclose([m["ratio_min"], m["ratio_max"], m["ratio_mean"]], [0.5, 2.0, 1.25],
                             rtol=1e-6)


def test_asymmetric_eps_and_dual_clip():
  adv = jnp.array([-2.0, 0.0])
  logp = np.log(np.array([[0.9, 0.1, 0.5]], np.float32)).repeat(2, 0)
  old = np.log(np.array([[0.1, 0.1, 0.5]], np.float32)).repeat(2, 0)  # ratios 9, 1, 1
  mask = np.array([[1, 1, 1], [0, 0, 0]], np.float32)
  loss, _ = losses.policy_loss(logp, old, adv, mask, eps_low=0.1, eps_high=0.3)
  np.testing.assert_allclose(loss, -(-18.0 - 2.0 - 2.0) / 3, rtol=1e-6)
  loss, _ = losses.policy_loss(logp, old, adv, mask, eps_low=0.1, eps_high=0.3, dual_clip=3.0)
  np.testing.assert_allclose(loss, -(-6.0 - 2.0 - 2.0) / 3, rtol=1e-6)  # 9 * -2 floored at 3 * -2


def test_sequence_level_ratio():
  adv = jnp.array([1.0, 1.0])
  loss, m = losses.policy_loss(LOGP, OLD, adv, MASK, ratio_level="sequence")
  rho = 2.0 * 0.5  # product of row 1's masked token ratios; row 2 has no token
  np.testing.assert_allclose(loss, -_np_obj(rho, 1.0), rtol=1e-6)
  np.testing.assert_allclose(m["ratio_mean"], rho, rtol=1e-6)


def test_seq_mean_and_all_masked_rows():
  values = np.array([[1.0, 3.0, 100.0], [5.0, 5.0, 5.0], [2.0, 4.0, 6.0]], np.float32)
  mask = np.array([[1, 1, 0], [0, 0, 0], [1, 1, 1]], np.float32)
  np.testing.assert_allclose(losses.aggregate(values, mask, "token_mean"), 16 / 5, rtol=1e-6)
  np.testing.assert_allclose(losses.aggregate(values, mask, "seq_mean"), (2.0 + 4.0) / 2, rtol=1e-6)
  empty = np.zeros_like(mask)
  assert float(losses.aggregate(values, empty, "token_mean")) == 0.0
  loss, m = losses.policy_loss(LOGP, OLD, jnp.ones(2), np.zeros_like(MASK))
  assert float(loss) == 0.0 and float(m["clip_frac"]) == 0.0


def test_group_advantages():
  """estep.advantages, the one the E-step writes into D_train: per group (query), population
  standard deviation, 0 for a group whose rewards are all equal."""
  from autocode_jax.em.estep import advantages
  g0 = np.array([1, 0, 0, 1.0])
  np.testing.assert_allclose(advantages(g0), [1 / (1 + 2e-6), -1 / (1 + 2e-6),
                                              -1 / (1 + 2e-6), 1 / (1 + 2e-6)], rtol=1e-9)
  np.testing.assert_allclose(advantages([1.0, 0.0, 0.0]),
                             [(2 / 3) / (np.sqrt(2) / 3 + 1e-6), (-1 / 3) / (np.sqrt(2) / 3 + 1e-6),
                              (-1 / 3) / (np.sqrt(2) / 3 + 1e-6)], rtol=1e-9)
  np.testing.assert_array_equal(advantages([1.0, 1.0]), [0.0, 0.0])


def test_kl_entropy_sft():
  logp = np.log(np.array([[0.5, 0.25, 0.1]], np.float32))
  prefix = np.array([[1, 1, 0]], np.float32)
  ref = np.log(np.array([[0.25, 0.25, 0.2]], np.float32))
  d = ref - logp
  np.testing.assert_allclose(losses.kl_penalty(logp, ref, np.ones_like(logp)),
                             np.mean(np.exp(d) - d - 1), rtol=1e-5)
  ent = np.array([[1.0, 2.0, 4.0]], np.float32)
  np.testing.assert_allclose(losses.entropy_bonus(ent, prefix), 1.5, rtol=1e-6)
  np.testing.assert_allclose(losses.sft_loss(logp, prefix, "seq_mean"),
                             -(np.log(0.5) + np.log(0.25)) / 2, rtol=1e-6)


def test_explicit_denominators_make_micro_batches_add_up():
  rng = np.random.RandomState(0)
  values = rng.rand(4, 5).astype(np.float32)
  mask = (rng.rand(4, 5) > 0.4).astype(np.float32)
  mask[2] = 0
  for mode in losses.AGGREGATIONS:
    full = losses.aggregate(values, mask, mode)
    denom = losses.denominators(mask)[mode]
    parts = sum(losses.aggregate(values[i:i + 2], mask[i:i + 2], mode, denom) for i in (0, 2))
    np.testing.assert_allclose(parts, full, rtol=1e-6)


def test_policy_gradient_is_zero_where_masked():
  mask = np.array([[1, 0, 1], [1, 1, 0]], np.float32)  # 0 = tool or padding tokens
  old = LOGP - 0.05  # ratios near 1: nothing clipped
  g = jax.grad(lambda lp: losses.policy_loss(lp, old, jnp.array([1.0, -1.0]), mask)[0])(
      jnp.asarray(LOGP))
  assert np.all(np.asarray(g)[mask == 0] == 0.0)
  assert np.all(np.asarray(g)[mask == 1] != 0.0)


def test_bad_options_are_named():
  with pytest.raises(ValueError, match="ratio_level 'word'"):
    losses.policy_loss(LOGP, OLD, jnp.ones(2), MASK, ratio_level="word")
  with pytest.raises(ValueError, match="aggregation 'mean'"):
    losses.aggregate(LOGP, MASK, "mean")
