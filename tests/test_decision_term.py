"""The M-step's decision term (METHOD.md, M-step, Decision term): exact CE(s* || pi_theta) over
one decision row per query. Hand-computed values and gradients for both decisions; invariance to
how many code_prefix trajectories a batch holds; its minimiser pi(P|x) = s*(1|x) reached by
training a tiny model; decision rows from D_train records."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from autocode_jax.em import mstep
from autocode_jax.models import init_model, preset
from autocode_jax.models.transformer import token_logprobs
from autocode_jax.training import losses
from autocode_jax.training.collate import decision_rows
from autocode_jax.training.step import LossConfig, loss_and_grads
from train_fixtures import record


def _ce(p1, s1):
  return -(s1 * np.log(p1) + (1 - s1) * np.log(1 - p1))


def test_decision_loss_by_hand():
  # Row 0: P = 2 tokens with probabilities 0.5 and 0.4, so pi(c=1|x) = 0.2, s*(1|x) = 0.9.
  # Row 1: P = 1 token with probability 0.7, s*(1|x) = 0.25. Row 2: padding (no decision).
  logp = np.log(np.array([[1.0, 0.5, 0.4, 1.0], [1.0, 0.7, 0.3, 1.0], [1.0, 1.0, 1.0, 1.0]]))
  mask = np.array([[0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], np.float32)
  s1 = np.array([0.9, 0.25, 0.6], np.float32)
  loss, log_p1 = losses.decision_loss(logp.astype(np.float32), mask, s1)
  want = (_ce(0.2, 0.9) + _ce(0.7, 0.25)) / 2
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  np.testing.assert_allclose(log_p1[:2], np.log([0.2, 0.7]), rtol=1e-6)
  # d/d log p1 of -[s log p1 + (1 - s) log(1 - p1)] = -s + (1 - s) p1 / (1 - p1): each prefix
  # token of a row gets its row's value (halved by the mean over the two queries).
  g = jax.grad(lambda x: losses.decision_loss(x, mask, s1)[0])(jnp.asarray(logp, jnp.float32))
  for row, (p1, s) in enumerate(((0.2, 0.9), (0.7, 0.25))):
    d = (-s + (1 - s) * p1 / (1 - p1)) / 2
    np.testing.assert_allclose(np.asarray(g)[row][mask[row] > 0], d, rtol=1e-5)
  assert np.all(np.asarray(g)[mask == 0] == 0.0)
  # Its sign: raise pi(P|x) where s* is above it (row 0), lower it where below (row 1).
  assert np.asarray(g)[0, 1] < 0 < np.asarray(g)[1, 1]


def test_decision_loss_is_stable_near_certainty():
  logp = jnp.array([[0.0, -1e-9], [0.0, -40.0]], jnp.float32)  # pi(P|x) = 1 - 1e-9, e^-40
  mask = jnp.array([[0, 1], [0, 1]], jnp.float32)
  s1 = jnp.array([0.5, 0.5], jnp.float32)
  loss, _ = losses.decision_loss(logp, mask, s1)
  g = jax.grad(lambda x: losses.decision_loss(x, mask, s1)[0])(logp)
  assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(g)))
  assert float(g[0, 1]) > 0 > float(g[1, 1])  # lower the certain one, raise the unlikely one
  np.testing.assert_allclose(losses.log1mexp(jnp.float32(-40.0)), -np.exp(-40.0), rtol=1e-6)
  np.testing.assert_allclose(losses.log1mexp(jnp.float32(-1e-3)), np.log(-np.expm1(-1e-3)),
                             rtol=1e-6)


PROMPTS = {"q1": [11, 12, 13, 14], "q2": [21, 22, 23], "q3": [31, 32, 33, 34, 35]}
PREFIX = [7, 8, 9]
S_STAR = {"q1": [0.9, 0.1], "q2": [0.5, 0.5], "q3": [0.1, 0.9]}  # s*(0|x), s*(1|x)


def _record(q, probe, response, advantage=0.0):
  roles = ("p" * len(PREFIX) if probe == "code_prefix" else "") + "m" * len(response)
  ids = (PREFIX if probe == "code_prefix" else []) + response
  return record(query_id=q, probe=probe, prompt_ids=PROMPTS[q], token_ids=ids, roles=roles,
                logprobs=[-1.0] * len(ids), advantage=advantage, s_star=S_STAR[q],
                decision_ids=PREFIX)


def test_decision_rows_one_per_query():
  recs = [_record("q2", "vanilla", [5]), _record("q1", "code_prefix", [6, 6]),
          _record("q2", "code_prefix", [4])]
  d = decision_rows(recs, num_rows=4, pad_id=0, length_multiple=4)
  assert d["decision_tokens"].shape == (4, 8)
  assert d["decision_tokens"][0].tolist() == [21, 22, 23, 7, 8, 9, 0, 0]  # q2 first: order seen
  assert d["decision_tokens"][1].tolist() == [11, 12, 13, 14, 7, 8, 9, 0]
  assert d["decision_mask"][0].tolist() == [0, 0, 0, 1, 1, 1, 0, 0]
  assert d["decision_attention"][1].tolist() == [1] * 7 + [0]
  assert d["decision_s1"].tolist() == [0.5, pytest.approx(0.1), 0.0, 0.0]
  assert not d["decision_mask"][2:].any()
  bad = dataclasses.replace(recs[2], s_star=[0.2, 0.8])
  with pytest.raises(ValueError, match="record 1 of group 'q2'"):
    decision_rows([recs[0], bad], 2)
  with pytest.raises(ValueError, match="3 decision rows do not fit in 2"):
    decision_rows([_record(q, "vanilla", [5]) for q in PROMPTS], 2)


@pytest.fixture(scope="module")
def tiny():
  return nnx.split(init_model(preset("tiny-qwen2").replace(vocab_size=64), seed=0))


def _batch(records):
  beh = [np.full(len(r.token_ids), -1.0, np.float32) for r in records]
  return mstep.make_batch(records, beh, range(len(records)), pad_id=0, length_multiple=8,
                          decisions=True)


def test_decision_term_ignores_how_many_prefix_rows_a_batch_holds(tiny):
  graphdef, params = tiny
  cfg = LossConfig(ce_coef=1.0)
  few = [_record("q1", "vanilla", [5, 6]), _record("q2", "vanilla", [5]),
         _record("q1", "code_prefix", [4])]
  many = few + [_record("q1", "code_prefix", [6, 6, 6]) for _ in range(4)] + [
      _record("q2", "code_prefix", [3, 3])]
  # Advantages 0: the policy term and its gradient are exactly 0, what is left is L_ce.
  (la, ma, ga), (lb, mb, gb) = (loss_and_grads(params, graphdef, _batch(r), cfg)
                                for r in (few, many))
  assert float(ma["pg_loss"]) == 0.0
  np.testing.assert_allclose(la, lb, rtol=1e-6)
  np.testing.assert_allclose(ma["ce_loss"], mb["ce_loss"], rtol=1e-6)
  scale = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(ga))
  assert scale > 0
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(x, y, atol=1e-6 * scale)
  # ... and equals the exact CE of the two queries, computed from a direct model call.
  want = []
  for q in ("q1", "q2"):
    row = jnp.asarray([PROMPTS[q] + PREFIX], jnp.int32)
    lp = token_logprobs(graphdef, params, row[:, :-1], row[:, 1:])[0, -len(PREFIX):]
    want.append(_ce(float(np.exp(np.sum(lp))), S_STAR[q][1]))
  np.testing.assert_allclose(ma["ce_loss"], np.mean(want), rtol=1e-4)


def test_minimiser_is_pi_of_the_prefix_equal_to_s_star(tiny):
  """A few hundred Adam steps on the decision term alone drive pi(P|x) to s*(1|x)."""
  graphdef, params = tiny
  cfg = LossConfig(ce_coef=1.0)
  batch = {k: jnp.asarray(v) for k, v in _batch(
      [_record(q, "vanilla", [5]) for q in PROMPTS]).items()}
  opt = optax.adam(1e-2)
  state = opt.init(params)

  @jax.jit
  def step(params, state):
    _, m, g = loss_and_grads(params, graphdef, batch, cfg)
    updates, state = opt.update(g, state, params)
    return optax.apply_updates(params, updates), state, m

  for _ in range(300):
    params, state, m = step(params, state)
  for q in PROMPTS:
    row = jnp.asarray([PROMPTS[q] + PREFIX], jnp.int32)
    lp = token_logprobs(graphdef, params, row[:, :-1], row[:, 1:])[0, -len(PREFIX):]
    p1 = float(np.exp(np.sum(lp)))
    assert abs(p1 - S_STAR[q][1]) < 0.02, (q, p1, S_STAR[q][1])
  # At the minimum L_ce is the mean entropy of s*.
  entropy = np.mean([_ce(S_STAR[q][1], S_STAR[q][1]) for q in PROMPTS])
  np.testing.assert_allclose(m["ce_loss"], entropy, rtol=2e-2)
