"""absl flags of experiments/train.py: one per field of em.config.RunConfig and of its
optimizer and loss configs, of the same name (autocode_jax.flagging), plus the rules on which
flags an algorithm reads."""

from __future__ import annotations

from absl import flags

from autocode_jax import flagging
from autocode_jax.em import config as config_lib


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  flagging.define_flags(config_lib.RunConfig, fv)


def run_config(fv: flags.FlagValues = flags.FLAGS, check_paths: bool = True,
               plan_only: bool = False) -> config_lib.RunConfig:
  """The RunConfig of the parsed flags; a bad value or path raises ConfigError naming the flag.
  A flag the algorithm does not read (config.IGNORED_BY, BRANCHING_ONLY) is refused.
  plan_only: check only the paths a dry run reads (config.validate_paths)."""
  algorithm = fv["algorithm"].value
  for name in config_lib.IGNORED_BY[algorithm]:  # the enum flag admits only these
    if fv[name].present:
      raise flagging.ConfigError(name, f"algorithm={algorithm} does not use it; remove it")
  if not fv["branching"].value:
    for name in config_lib.BRANCHING_ONLY:
      if fv[name].present:
        raise flagging.ConfigError(name, "used only with --branching; remove it")
  cfg = flagging.from_flags(config_lib.RunConfig, fv)
  if check_paths:
    config_lib.validate_paths(cfg, plan_only)
  return cfg
