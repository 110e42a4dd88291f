"""Optimizers from one registry: name -> optax chain, with the learning-rate schedule.

Weight decay applies to parameters whose logical axes include 'embed' (the matrices and the
embedding table) and skips norms and biases, which have no 'embed' axis.
"""

from __future__ import annotations

import dataclasses

import jax
import optax
from flax import nnx

from autocode_jax.flagging import check_choices, option, requirer

OPTIMIZERS = ("adamw", "adam", "sgd", "lion", "adafactor")
SCHEDULES = ("constant", "linear", "cosine")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """The optimizer and its learning-rate schedule; every field is a flag of its name. Each
  schedule starts with `warmup_steps` of linear warmup from 0; linear and cosine decay to
  `end_lr_ratio` x peak at `total_steps`. Weight decay is decoupled (adamw, lion, adafactor,
  sgd) and masked as the module docstring says; adam takes none."""
  optimizer: str = option("adamw", "optimizer", choices=OPTIMIZERS)
  learning_rate: float = option(1e-6, "peak learning rate")
  lr_schedule: str = option("constant", "schedule after warmup", choices=SCHEDULES)
  warmup_steps: int = option(0, "linear warmup updates")
  total_steps: int = option(1000, "updates the schedule spans")
  end_lr_ratio: float = option(0.0, "final / peak rate (linear, cosine)")
  weight_decay: float = option(0.0, "decoupled weight decay")
  adam_b1: float = option(0.9, "Adam / Lion beta1")
  adam_b2: float = option(0.999, "Adam / Lion beta2")
  adam_eps: float = option(1e-8, "Adam epsilon")
  momentum: float = option(0.9, "SGD momentum (0: plain SGD)")
  max_grad_norm: float = option(1.0, "global-norm clip (0: off)")

  def __post_init__(self):
    check_choices(self)
    need = requirer(self)
    need(self.learning_rate > 0, "learning_rate", "must be positive")
    need(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
    need(self.lr_schedule == "constant" or self.warmup_steps < self.total_steps, "total_steps",
         f"must exceed warmup_steps={self.warmup_steps}")
    need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
    need(self.max_grad_norm >= 0, "max_grad_norm", "must be >= 0")
    need(not (self.optimizer == "adam" and self.weight_decay), "weight_decay",
         "optimizer=adam takes no weight decay: use adamw")


def make_schedule(cfg: OptimizerConfig) -> optax.Schedule:
  peak, warm = cfg.learning_rate, cfg.warmup_steps
  if cfg.lr_schedule == "constant":
    after = optax.constant_schedule(peak)
  elif cfg.lr_schedule == "linear":
    after = optax.linear_schedule(peak, peak * cfg.end_lr_ratio, cfg.total_steps - warm)
  else:
    after = optax.cosine_decay_schedule(peak, cfg.total_steps - warm, alpha=cfg.end_lr_ratio)
  if warm == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), after], [warm])


def decay_mask(params: nnx.State) -> nnx.State:
  """True for parameters with an 'embed' logical axis (same tree structure as params)."""
  return jax.tree.map(lambda v: v.replace("embed" in v.get_metadata()["axes"]), params,
                      is_leaf=lambda x: isinstance(x, nnx.Variable))


def build_optimizer(cfg: OptimizerConfig, params: nnx.State):
  """(optax transformation, schedule) for these (possibly abstract) parameters."""
  lr = make_schedule(cfg)
  mask = decay_mask(params)
  if cfg.optimizer == "adamw":
    core = optax.adamw(lr, cfg.adam_b1, cfg.adam_b2, cfg.adam_eps,
                       weight_decay=cfg.weight_decay, mask=mask)
  elif cfg.optimizer == "adam":
    core = optax.adam(lr, cfg.adam_b1, cfg.adam_b2, cfg.adam_eps)
  elif cfg.optimizer == "sgd":
    core = optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask),
                       optax.sgd(lr, momentum=cfg.momentum or None))
  elif cfg.optimizer == "lion":
    core = optax.lion(lr, cfg.adam_b1, cfg.adam_b2, weight_decay=cfg.weight_decay, mask=mask)
  else:
    core = optax.adafactor(lr, weight_decay_rate=cfg.weight_decay or None,
                           weight_decay_mask=mask)
  parts = [optax.clip_by_global_norm(cfg.max_grad_norm)] if cfg.max_grad_norm else []
  return optax.chain(*parts, core), lr
