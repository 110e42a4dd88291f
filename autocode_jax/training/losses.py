"""The M-step's losses as pure functions of arrays (METHOD.md, M-step, Eq. 6).

Shapes: B sequences, T positions. Every per-token array is aligned with the token it scores, and
every mask is 0/1 float: `policy_mask` marks `model` tokens (the only ones in L_pg); `tool`,
`prefix` and padding tokens are 0 in it, so no loss depends on them. The decision term scores
its own rows (the plain prompt + the probe prefix, one per query): `decision_mask` marks the
prefix tokens there.

Aggregation over tokens takes an explicit denominator so that gradient accumulation over
micro-batches equals the full-batch gradient: a micro-batch contributes sum(...) / denominator of
the *whole* batch. `denominators` computes them; called on the full batch with no denominator,
each function is the usual mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

AGGREGATIONS = ("token_mean", "seq_mean")


def denominators(mask_bt: jax.Array) -> dict[str, jax.Array]:
  """token_mean: number of masked-in tokens; seq_mean: number of rows with at least one."""
  return {"token_mean": jnp.sum(mask_bt),
          "seq_mean": jnp.sum(jnp.any(mask_bt > 0, axis=-1).astype(jnp.float32))}


def aggregate(values_bt, mask_bt, mode: str = "token_mean", denominator=None):
  """token_mean: sum_{b,t} m v / sum m.  seq_mean: sum_b [sum_t m v / sum_t m] / #rows with
  any token (fully masked rows contribute nothing). An empty batch aggregates to 0."""
  if mode not in AGGREGATIONS:
    raise ValueError(f"aggregation {mode!r}: expected one of {AGGREGATIONS}")
  if denominator is None:
    denominator = denominators(mask_bt)[mode]
  if mode == "token_mean":
    total = jnp.sum(values_bt * mask_bt)
  else:
    per_row = jnp.sum(values_bt * mask_bt, axis=-1) / jnp.maximum(jnp.sum(mask_bt, axis=-1), 1.0)
    total = jnp.sum(per_row)
  return total / jnp.maximum(denominator, 1.0)


def policy_loss(logp_bt, old_logp_bt, adv_b, mask_bt, *, eps_low: float = 0.2,
                eps_high: float = 0.2, dual_clip: float | None = None,
                ratio_level: str = "token", aggregation: str = "token_mean", denominator=None):
  """Clipped off-policy policy loss.

  token level:  rho_t = exp(logp_t - old_logp_t),
                obj_t = min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A),
                with dual clip c (> 1): obj_t = max(obj_t, c A) where A < 0,
                L_pg = -aggregate_t(obj_t).
  sequence level: rho = exp(sum_t m_t (logp_t - old_logp_t)) (the product of the token ratios),
                the same clipping per sequence, L_pg = -mean over rows with any token.
  Returns (loss, metrics) with the clip fraction (share of scored units whose clipped term is
  the active one) and ratio statistics over masked-in units.
  """
  adv_b = adv_b.astype(jnp.float32)
  if ratio_level == "token":
    log_ratio = logp_bt - old_logp_bt
    adv, unit_mask = adv_b[:, None], mask_bt
  elif ratio_level == "sequence":
    log_ratio = jnp.sum((logp_bt - old_logp_bt) * mask_bt, axis=-1, keepdims=True)
    adv = adv_b[:, None]
    unit_mask = jnp.any(mask_bt > 0, axis=-1, keepdims=True).astype(jnp.float32)
  else:
    raise ValueError(f"ratio_level {ratio_level!r}: expected 'token' or 'sequence'")
  ratio = jnp.exp(log_ratio)
  unclipped = ratio * adv
  clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
  obj = jnp.minimum(unclipped, clipped)
  if dual_clip is not None:
    obj = jnp.where(adv < 0, jnp.maximum(obj, dual_clip * adv), obj)
  if ratio_level == "sequence":
    rows = jnp.sum(unit_mask) if denominator is None else denominator
    loss = -jnp.sum(obj * unit_mask) / jnp.maximum(rows, 1.0)
  else:
    loss = -aggregate(obj, mask_bt, aggregation, denominator)
  n = jnp.maximum(jnp.sum(unit_mask), 1.0)
  is_clipped = (clipped < unclipped).astype(jnp.float32)
  big = jnp.float32(3e38)
  metrics = {
      "clip_frac": jnp.sum(is_clipped * unit_mask) / n,
      "ratio_mean": jnp.sum(ratio * unit_mask) / n,
      "ratio_min": jnp.min(jnp.where(unit_mask > 0, ratio, big)),
      "ratio_max": jnp.max(jnp.where(unit_mask > 0, ratio, -big)),
  }
  return loss, metrics


def log1mexp(x):
  """log(1 - exp(x)) for x <= 0, stable at both ends (Maechler's two branches around -log 2).
  x is capped at -1e-6 in value only (straight through, so the gradient of x stays finite and
  still points away from 1 when x is nearly 0)."""
  x = x + jax.lax.stop_gradient(jnp.minimum(x, -1e-6) - x)
  return jnp.where(x > -0.6931472, jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def decision_loss(logp_bt, decision_mask_bt, s1_b, denominator=None):
  """Eq. 4's CE(s* || pi_theta) over decisions, computed exactly once per query (METHOD.md,
  M-step, Decision term). Row b is a decision row: the query's plain prompt followed by the
  probe prefix P, with `decision_mask_bt` marking P's tokens and s1_b = s*(c=1|x):
    log pi(c=1|x) = sum_t m_bt logp_bt = log pi(P|x),   log pi(c=0|x) = log(1 - pi(P|x)),
    L_ce = sum_b -[(1 - s1_b) log pi(c=0|x) + s1_b log pi(c=1|x)] / #decision rows.
  Rows with no masked token (padding) contribute nothing. The minimum over pi(P|x) is at
  pi(P|x) = s1_b. Returns (loss, log pi(c=1|x) [B])."""
  log_p1 = jnp.sum(jnp.where(decision_mask_bt > 0, logp_bt, 0.0), axis=-1)
  valid = jnp.any(decision_mask_bt > 0, axis=-1).astype(jnp.float32)
  s1 = s1_b.astype(jnp.float32)
  per_row = -(s1 * log_p1 + (1.0 - s1) * log1mexp(jnp.where(valid > 0, log_p1, -1.0)))
  if denominator is None:
    denominator = jnp.sum(valid)
  return jnp.sum(per_row * valid) / jnp.maximum(denominator, 1.0), log_p1


def kl_penalty(logp_bt, ref_logp_bt, mask_bt, aggregation: str = "token_mean", denominator=None):
  """KL(pi_theta || pi_ref) per token with the non-negative k3 estimator:
  exp(ref - logp) - (ref - logp) - 1."""
  d = ref_logp_bt - logp_bt
  return aggregate(jnp.exp(d) - d - 1.0, mask_bt, aggregation, denominator)


def entropy_bonus(entropy_bt, mask_bt, aggregation: str = "token_mean", denominator=None):
  """Mean per-token entropy of pi_theta; subtracted from the loss with its coefficient."""
  return aggregate(entropy_bt, mask_bt, aggregation, denominator)


def sft_loss(logp_bt, mask_bt, aggregation: str = "token_mean", denominator=None):
  """Cross-entropy on given solutions: -aggregate(log pi_theta(y_t | y_<t, x))."""
  return -aggregate(logp_bt, mask_bt, aggregation, denominator)
