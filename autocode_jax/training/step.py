"""Train state and the one pure train step (M-step, RL and SFT baselines alike).

`train_step` computes per-token log-probs with the model's chunked function, the loss of
`LossConfig`, gradients accumulated over micro-batches (equal to the full-batch gradient: every
micro-batch is normalised by the whole batch's token / row counts), and the optax update. A
non-finite loss or gradient leaves parameters and optimizer state untouched and is reported.
`make_train_step` jits it once with explicit NamedShardings and the state donated.

Batch (all [B, T] aligned with `tokens`, rows right-padded; position 0 is never scored):
  tokens int32; attention_mask (1 real, 0 padding); policy_mask (`model` tokens: L_pg / SFT);
  old_logprobs (behaviour log-probs); advantages [B]; optional ref_logprobs (KL).
  With ce_coef, the decision rows ([B, Td], one per query of the batch, the rest padding; see
  training.collate.decision_rows): decision_tokens, decision_attention, decision_mask (the probe
  prefix's tokens) and decision_s1 [B] (s*(c=1|x)).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from autocode_jax.flagging import check_choices, option, requirer
from autocode_jax.models import sharding as sharding_lib
from autocode_jax.models.transformer import token_logprobs
from autocode_jax.training import losses

LOSS_KINDS = ("policy", "sft")
RATIO_LEVELS = ("token", "sequence")
BATCH_KEYS = ("tokens", "attention_mask", "policy_mask", "old_logprobs", "advantages")
DECISION_KEYS = ("decision_tokens", "decision_attention", "decision_mask", "decision_s1")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """The loss of a train step. kind (set by the run, not a flag): "policy" (L_pg + beta L_ce +
  optional KL and entropy terms) or "sft". The clip and aggregation fields are those of
  losses.policy_loss; ce_coef is beta of the decision term (losses.decision_loss)."""
  kind: str = "policy"
  eps_low: float = option(0.2, "ratio clip below 1")
  eps_high: float = option(0.2, "ratio clip above 1")
  dual_clip: float | None = option(None, "dual-clip constant c > 1 (unset: off)")
  ratio_level: str = option("token", "importance ratio level", choices=RATIO_LEVELS)
  loss_aggregation: str = option("token_mean", "token aggregation",
                                 choices=losses.AGGREGATIONS)
  ce_coef: float = option(1.0, "beta: weight of the decision cross-entropy")
  kl_coef: float = option(0.0, "KL-to-reference weight")
  entropy_coef: float = option(0.0, "entropy bonus weight")

  @property
  def decision_term(self) -> bool:
    """Whether the loss has the decision term (and the batch needs DECISION_KEYS)."""
    return self.kind == "policy" and bool(self.ce_coef)

  def __post_init__(self):
    need = requirer(self)
    need(self.kind in LOSS_KINDS, "kind", f"expected one of {LOSS_KINDS}")
    check_choices(self)
    need(0 <= self.eps_low < 1, "eps_low", "must be in [0, 1)")
    need(self.eps_high >= 0, "eps_high", "must be >= 0")
    need(self.dual_clip is None or self.dual_clip > 1, "dual_clip", "must be > 1")


class TrainState(NamedTuple):
  step: jax.Array       # train-step calls so far
  updates: jax.Array    # updates applied (skipped non-finite steps do not count)
  params: nnx.State
  opt_state: optax.OptState


def denominators(batch, cfg: LossConfig) -> dict:
  """Whole-batch normalisers, computed before splitting into micro-batches."""
  out = {"policy": losses.denominators(batch["policy_mask"])}
  if cfg.decision_term:
    out["decisions"] = losses.denominators(batch["decision_mask"])["seq_mean"]
  return out


def loss_from_logprobs(logp_bt, entropy_bt, batch, cfg: LossConfig, denoms, decision_logp_bt=None):
  """(loss, parts) from per-token log-probs aligned with tokens (and, with ce_coef, those of the
  decision rows aligned with decision_tokens): everything after the model."""
  pm, agg = batch["policy_mask"], cfg.loss_aggregation
  pol_denom = denoms["policy"]["seq_mean" if cfg.ratio_level == "sequence" else agg]
  if cfg.kind == "sft":
    loss = losses.sft_loss(logp_bt, pm, agg, denoms["policy"][agg])
    return loss, {"sft_loss": loss}
  loss, parts = losses.policy_loss(
      logp_bt, batch["old_logprobs"], batch["advantages"], pm, eps_low=cfg.eps_low,
      eps_high=cfg.eps_high, dual_clip=cfg.dual_clip, ratio_level=cfg.ratio_level,
      aggregation=agg, denominator=pol_denom)
  parts = dict(parts, pg_loss=loss)
  if cfg.decision_term:
    ce, log_p1 = losses.decision_loss(decision_logp_bt, batch["decision_mask"],
                                      batch["decision_s1"], denoms["decisions"])
    valid = jnp.any(batch["decision_mask"] > 0, axis=-1).astype(jnp.float32)
    n = jnp.maximum(denoms["decisions"], 1.0)
    loss, parts["ce_loss"] = loss + cfg.ce_coef * ce, ce
    # Batch means (sums over micro-batches add up) over the decisions: pi(P|x), its log (what
    # moves when pi(P|x) is far below 1e-6) and s*(1|x).
    parts["decision_p1"] = jnp.sum(jnp.exp(log_p1) * valid) / n
    parts["decision_logp1"] = jnp.sum(log_p1 * valid) / n
    parts["decision_s1"] = jnp.sum(batch["decision_s1"] * valid) / n
  if cfg.kl_coef:
    kl = losses.kl_penalty(logp_bt, batch["ref_logprobs"], pm, agg, denoms["policy"][agg])
    loss, parts["kl"] = loss + cfg.kl_coef * kl, kl
  if cfg.entropy_coef:
    ent = losses.entropy_bonus(entropy_bt, pm, agg, denoms["policy"][agg])
    loss, parts["entropy"] = loss - cfg.entropy_coef * ent, ent
  return loss, parts


def compute_loss(params, graphdef, batch, cfg: LossConfig, denoms):
  tokens, am = batch["tokens"], batch["attention_mask"]
  out = token_logprobs(graphdef, params, tokens[:, :-1], tokens[:, 1:], None, am[:, :-1],
                       with_entropy=bool(cfg.entropy_coef))
  lp, ent = out if cfg.entropy_coef else (out, None)
  shift = lambda x: jnp.pad(x, ((0, 0), (1, 0)))  # align with tokens: position 0 has no score
  dec = None
  if cfg.decision_term:
    dt, da = batch["decision_tokens"], batch["decision_attention"]
    dec = shift(token_logprobs(graphdef, params, dt[:, :-1], dt[:, 1:], None, da[:, :-1]))
  return loss_from_logprobs(shift(lp), None if ent is None else shift(ent), batch, cfg, denoms,
                            dec)


def _split(batch, micro_batch: int):
  """[B, ...] -> [B / micro_batch, micro_batch, ...], micro-batch i = rows i, i + n, i + 2n, ...
  so that each micro-batch spans every data shard."""
  def one(x):
    n = x.shape[0] // micro_batch
    return x.reshape(micro_batch, n, *x.shape[1:]).swapaxes(0, 1)
  return jax.tree.map(one, batch)


def loss_and_grads(params, graphdef, batch, cfg: LossConfig, micro_batch: int | None = None):
  """(loss, metrics, grads) over the batch, accumulated over micro-batches of `micro_batch` rows."""
  missing = [k for k in BATCH_KEYS if k not in batch]
  if cfg.kl_coef and "ref_logprobs" not in batch:
    missing.append("ref_logprobs")
  if cfg.decision_term:
    missing += [k for k in DECISION_KEYS if k not in batch]
  if missing:
    raise ValueError(f"train batch lacks field(s) {missing}; it has {sorted(batch)}")
  b = batch["tokens"].shape[0]
  micro_batch = micro_batch or b
  if b % micro_batch:
    raise ValueError(f"batch of {b} rows is not a multiple of micro_batch={micro_batch}")
  denoms = denominators(batch, cfg)
  grad_fn = jax.value_and_grad(compute_loss, has_aux=True)

  def units(mb):  # what the policy statistics average over, per micro-batch
    m = mb["policy_mask"]
    return jnp.sum(jnp.any(m > 0, -1)) if cfg.ratio_level == "sequence" else jnp.sum(m)

  def body(carry, mb):
    g_acc, m_acc = carry
    (loss, parts), g = grad_fn(params, graphdef, mb, cfg, denoms)
    u = units(mb).astype(jnp.float32)
    g_acc = jax.tree.map(jnp.add, g_acc, g)
    new = {"loss": m_acc["loss"] + loss, "units": m_acc["units"] + u}
    for k, v in parts.items():
      if k in ("clip_frac", "ratio_mean"):
        new[k] = m_acc[k] + v * u
      elif k == "ratio_min":
        new[k] = jnp.minimum(m_acc[k], v)
      elif k == "ratio_max":
        new[k] = jnp.maximum(m_acc[k], v)
      else:
        new[k] = m_acc[k] + v
    return (g_acc, new), None

  micro = _split(batch, micro_batch)
  first = jax.tree.map(lambda x: x[0], micro)
  part_shapes = jax.eval_shape(lambda: compute_loss(params, graphdef, first, cfg, denoms))[1]
  init = {"loss": jnp.float32(0), "units": jnp.float32(0)}
  for k in part_shapes:
    init[k] = {"ratio_min": jnp.float32(3e38), "ratio_max": jnp.float32(-3e38)}.get(k, jnp.float32(0))
  zeros = jax.tree.map(jnp.zeros_like, params)
  (grads, m), _ = jax.lax.scan(body, (zeros, init), micro)
  for k in ("clip_frac", "ratio_mean"):
    if k in m:
      m[k] = m[k] / jnp.maximum(m["units"], 1.0)
  m.pop("units")
  return m["loss"], m, grads


def train_step(state: TrainState, batch: dict, *, graphdef, optimizer, schedule,
               loss_cfg: LossConfig, micro_batch: int | None = None):
  """One update: pure, jit it (see make_train_step). Returns (new state, metrics)."""
  loss, metrics, grads = loss_and_grads(state.params, graphdef, batch, loss_cfg, micro_batch)
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, new_opt = optimizer.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  metrics = dict(metrics, grad_norm=grad_norm, learning_rate=schedule(state.updates),
                 tokens=jnp.sum(batch["policy_mask"]), skipped=(~finite).astype(jnp.int32))
  new_state = TrainState(state.step + 1, state.updates + finite.astype(jnp.int32),
                         keep(new_params, state.params), keep(new_opt, state.opt_state))
  return new_state, metrics


def batch_sharding(mesh, batch_size: int):
  """Rows over (data, fsdp) when they divide the batch, else replicated."""
  spec = sharding_lib.logical_to_spec(("batch",), (batch_size,), dict(mesh.shape))
  return NamedSharding(mesh, PartitionSpec(*spec))


def init_train_state(params: nnx.State, optimizer, mesh=None, rules=None):
  """(state, state shardings). With a mesh, parameters follow the logical rules and the
  optimizer's parameter-shaped states follow their parameters; counters are replicated."""
  if mesh is None:
    state = TrainState(jnp.int32(0), jnp.int32(0), params, optimizer.init(params))
    # One placement for every leaf: with loaded (committed) parameters beside new (uncommitted)
    # counters and moments, the step's outputs, all committed, would miss the first call's
    # compilation and compile the step again on the second call.
    committed = [x for x in jax.tree.leaves(params) if getattr(x, "committed", False)]
    if committed:
      state = jax.device_put(state, committed[0].sharding)
    return state, None
  shardings = train_state_shardings(params, optimizer, mesh, rules)
  params = jax.device_put(params, shardings.params)
  opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
  state = jax.device_put(TrainState(jnp.int32(0), jnp.int32(0), params, opt_state), shardings)
  return state, shardings


def train_state_shardings(params: nnx.State, optimizer, mesh, rules=None) -> TrainState:
  """The TrainState of NamedShardings for (possibly abstract) parameters on a mesh: parameters
  by the logical rules, the optimizer's parameter-shaped states like their parameters, counters
  replicated."""
  param_sh = sharding_lib.state_shardings(params, mesh, rules or sharding_lib.LOGICAL_RULES)
  replicated = NamedSharding(mesh, PartitionSpec())
  abstract_opt = jax.eval_shape(optimizer.init, params)
  opt_sh = optax.tree_map_params(optimizer, lambda _, s: s, abstract_opt, param_sh,
                                 transform_non_params=lambda _: replicated,
                                 is_leaf=lambda x: isinstance(x, nnx.Variable))
  return TrainState(replicated, replicated, param_sh, opt_sh)


def make_train_step(graphdef, optimizer, schedule, loss_cfg: LossConfig, *, micro_batch=None,
                    mesh=None, state_shardings=None, batch_size: int | None = None):
  """train_step jitted once: explicit in/out NamedShardings on a mesh, the state donated."""
  fn = functools.partial(train_step, graphdef=graphdef, optimizer=optimizer, schedule=schedule,
                         loss_cfg=loss_cfg, micro_batch=micro_batch)
  if mesh is None:
    return jax.jit(fn, donate_argnums=0)
  if state_shardings is None or batch_size is None:
    raise ValueError("make_train_step on a mesh needs state_shardings and batch_size")
  row = batch_sharding(mesh, batch_size)
  replicated = NamedSharding(mesh, PartitionSpec())
  jitted = jax.jit(fn, in_shardings=(state_shardings, row), out_shardings=(state_shardings, replicated),
                   donate_argnums=0)

  def step(state, batch):
    with jax.set_mesh(mesh):  # so the model's activation constraints apply
      return jitted(state, batch)

  def lower(state, batch):  # ahead of time, e.g. from ShapeDtypeStructs (em.plan)
    with jax.set_mesh(mesh):
      return jitted.lower(state, batch)

  step.lower = lower
  return step
