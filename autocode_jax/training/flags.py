"""absl flags for the optimizer and the loss, mapped onto their config dataclasses here only."""

from __future__ import annotations

from absl import flags

from autocode_jax.training.optimizers import OPTIMIZERS, SCHEDULES, OptimizerConfig
from autocode_jax.training.step import LossConfig

_OPT_FIELDS = {  # flag name -> OptimizerConfig field
    "optimizer": "name", "learning_rate": "learning_rate", "lr_schedule": "schedule",
    "warmup_steps": "warmup_steps", "total_steps": "total_steps", "end_lr_ratio": "end_lr_ratio",
    "weight_decay": "weight_decay", "adam_b1": "b1", "adam_b2": "b2", "adam_eps": "eps",
    "momentum": "momentum", "max_grad_norm": "max_grad_norm",
}
_LOSS_FIELDS = {
    "eps_low": "eps_low", "eps_high": "eps_high", "dual_clip": "dual_clip",
    "ratio_level": "ratio_level", "loss_aggregation": "aggregation", "ce_coef": "ce_coef",
    "kl_coef": "kl_coef", "entropy_coef": "entropy_coef",
}


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  d = OptimizerConfig()
  flags.DEFINE_enum("optimizer", d.name, OPTIMIZERS, "optimizer", flag_values=fv)
  flags.DEFINE_float("learning_rate", d.learning_rate, "peak learning rate", flag_values=fv)
  flags.DEFINE_enum("lr_schedule", d.schedule, SCHEDULES, "schedule after warmup", flag_values=fv)
  flags.DEFINE_integer("warmup_steps", d.warmup_steps, "linear warmup updates", flag_values=fv)
  flags.DEFINE_integer("total_steps", d.total_steps, "updates the schedule spans", flag_values=fv)
  flags.DEFINE_float("end_lr_ratio", d.end_lr_ratio, "final / peak rate", flag_values=fv)
  flags.DEFINE_float("weight_decay", d.weight_decay, "decoupled weight decay", flag_values=fv)
  flags.DEFINE_float("adam_b1", d.b1, "Adam / Lion beta1", flag_values=fv)
  flags.DEFINE_float("adam_b2", d.b2, "Adam / Lion beta2", flag_values=fv)
  flags.DEFINE_float("adam_eps", d.eps, "Adam epsilon", flag_values=fv)
  flags.DEFINE_float("momentum", d.momentum, "SGD momentum", flag_values=fv)
  flags.DEFINE_float("max_grad_norm", d.max_grad_norm, "global-norm clip (0: off)", flag_values=fv)
  l = LossConfig()
  flags.DEFINE_float("eps_low", l.eps_low, "ratio clip below 1", flag_values=fv)
  flags.DEFINE_float("eps_high", l.eps_high, "ratio clip above 1", flag_values=fv)
  flags.DEFINE_float("dual_clip", l.dual_clip, "dual-clip constant c > 1 (unset: off)",
                     flag_values=fv)
  flags.DEFINE_enum("ratio_level", l.ratio_level, ["token", "sequence"], "importance ratio level",
                    flag_values=fv)
  flags.DEFINE_enum("loss_aggregation", l.aggregation, ["token_mean", "seq_mean"],
                    "token aggregation", flag_values=fv)
  flags.DEFINE_float("ce_coef", l.ce_coef, "beta: weight of the decision cross-entropy",
                     flag_values=fv)
  flags.DEFINE_float("kl_coef", l.kl_coef, "KL-to-reference weight", flag_values=fv)
  flags.DEFINE_float("entropy_coef", l.entropy_coef, "entropy bonus weight", flag_values=fv)


def _build(cls, fields, fv, **extra):
  kwargs = {field: fv[name].value for name, field in fields.items()}
  kwargs.update(extra)
  try:
    return cls(**kwargs)
  except ValueError as e:
    raise flags.ValidationError(str(e)) from None


def optimizer_config(fv: flags.FlagValues = flags.FLAGS) -> OptimizerConfig:
  return _build(OptimizerConfig, _OPT_FIELDS, fv)


def loss_config(kind: str, fv: flags.FlagValues = flags.FLAGS, **fixed) -> LossConfig:
  """The LossConfig of the loss flags, with `fixed` fields (LossConfig names) set in place of
  their flags."""
  return _build(LossConfig, _LOSS_FIELDS, fv, kind=kind, **fixed)
