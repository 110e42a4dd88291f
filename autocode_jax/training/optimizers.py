"""Optimizers from one registry: name -> optax chain, with the learning-rate schedule.

Weight decay applies to parameters whose logical axes include 'embed' (the matrices and the
embedding table) and skips norms and biases, which have no 'embed' axis.
"""

from __future__ import annotations

import dataclasses

import jax
import optax
from flax import nnx

OPTIMIZERS = ("adamw", "adam", "sgd", "lion", "adafactor")
SCHEDULES = ("constant", "linear", "cosine")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """name: one of OPTIMIZERS. learning_rate: peak rate. schedule: one of SCHEDULES, each after
  `warmup_steps` of linear warmup from 0; linear and cosine decay to `end_lr_ratio` x peak at
  `total_steps`. weight_decay: decoupled (adamw, lion, adafactor, sgd), masked as above; adam
  takes none. b1, b2, eps: Adam/Lion moments. momentum: sgd (0 = plain). max_grad_norm: global-
  norm clipping (0 = off)."""
  name: str = "adamw"
  learning_rate: float = 1e-6
  schedule: str = "constant"
  warmup_steps: int = 0
  total_steps: int = 1000
  end_lr_ratio: float = 0.0
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  momentum: float = 0.9
  max_grad_norm: float = 1.0

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise ValueError(f"optimizer={self.name!r}: expected one of {OPTIMIZERS}")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"lr_schedule={self.schedule!r}: expected one of {SCHEDULES}")
    if not self.learning_rate > 0:
      raise ValueError(f"learning_rate={self.learning_rate!r}: must be positive")
    if self.warmup_steps < 0 or self.total_steps <= self.warmup_steps and self.schedule != "constant":
      raise ValueError(f"warmup_steps={self.warmup_steps}, total_steps={self.total_steps}: "
                       "need 0 <= warmup_steps < total_steps")
    if self.weight_decay < 0 or self.max_grad_norm < 0:
      raise ValueError("weight_decay and max_grad_norm must be >= 0")
    if self.name == "adam" and self.weight_decay:
      raise ValueError("optimizer='adam' takes no weight_decay: use 'adamw'")


def make_schedule(cfg: OptimizerConfig) -> optax.Schedule:
  peak, warm = cfg.learning_rate, cfg.warmup_steps
  if cfg.schedule == "constant":
    after = optax.constant_schedule(peak)
  elif cfg.schedule == "linear":
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
  if cfg.name == "adamw":
    core = optax.adamw(lr, cfg.b1, cfg.b2, cfg.eps, weight_decay=cfg.weight_decay, mask=mask)
  elif cfg.name == "adam":
    core = optax.adam(lr, cfg.b1, cfg.b2, cfg.eps)
  elif cfg.name == "sgd":
    core = optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask),
                       optax.sgd(lr, momentum=cfg.momentum or None))
  elif cfg.name == "lion":
    core = optax.lion(lr, cfg.b1, cfg.b2, weight_decay=cfg.weight_decay, mask=mask)
  else:
    core = optax.adafactor(lr, weight_decay_rate=cfg.weight_decay or None,
                           weight_decay_mask=mask)
  parts = [optax.clip_by_global_norm(cfg.max_grad_norm)] if cfg.max_grad_norm else []
  return optax.chain(*parts, core), lr
