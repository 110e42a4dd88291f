"""absl flags of experiments/train.py, mapped onto em.config.RunConfig here only. Every
RunConfig field is a flag of the same name; the optimizer and loss flags come from
training.flags."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import typing

from absl import flags

from autocode_jax.em import config as config_lib
from autocode_jax.training import flags as train_flags

HELP = {
    "run_dir": "run directory: checkpoints, D_train, metrics; rerun the command to resume",
    "algorithm": "em (the method), rl (on-policy GRPO baseline) or sft (train on given solutions)",
    "seed": "seed of initialisation, query order and rollouts",
    "init_from": "HuggingFace model directory to start from",
    "model_preset": "random-init preset instead of init_from (debug); vocab follows the tokenizer",
    "tokenizer_dir": "tokenizer directory (default: init_from)",
    "template": "prompt template: chat (instruct models) or plain (base models)",
    "param_dtype": "parameter dtype", "dtype": "compute dtype", "remat": "remat policy per block",
    "logprob_chunk": "sequence chunk of the log-prob projection",
    "layer_loop": "decoder blocks scanned, unrolled, or auto (unrolled up to 8 layers)",
    "mesh_data": "data-parallel mesh axis size", "mesh_fsdp": "FSDP mesh axis size (-1: rest)",
    "mesh_tensor": "tensor-parallel mesh axis size",
    "data_dir": "directory laid out like shared/data", "train_set": "training query set",
    "task_seed": "seed of the synthetic task's problems (train_set=synthetic)",
    "synthetic_code_share": "share of the synthetic warm-start corpus's plain-prompt answers "
    "that use code (train_set=synthetic, algorithm=sft)",
    "num_queries": "queries sampled from train_set by difficulty (0: all)",
    "queries_per_iteration": "queries per EM iteration", "epochs": "passes over the queries",
    "eval_set": "dev set evaluated every eval_every iterations ('' = none)",
    "eval_size": "dev queries (0: all)", "eval_every": "iterations between evaluations",
    "eval_modes": "prompt modes evaluated (cot, code, auto)",
    "eval_max_tokens": "response budget in evaluation (0: max_tokens)",
    "k": "rollouts per probe (K)", "m": "trajectories per query into D_train (M; 0: K)",
    "alpha": "alpha of the reference strategy s* (Eq. 5)", "temperature": "sampling temperature",
    "top_p": "nucleus mass", "max_tokens": "response tokens at most (prefix and tool included)",
    "max_tool_calls": "code executions per trajectory at most",
    "rollout_chunk": "queries rolled out, graded and written to disk at a time",
    "drop_uniform_groups": "drop queries whose D_train rewards are all equal",
    "branching": "mid-reasoning branching at the first code block (from iteration 2 on)",
    "k_branch": "continuations per branch and per decision",
    "branch_per_query": "code trajectories branched per query",
    "sandbox_workers": "sandbox server processes", "sandbox_timeout_s": "seconds per execution",
    "sandbox_memory_mb": "address-space limit per execution",
    "max_output_chars": "interpreter output shown to the model at most",
    "grade_timeout_s": "seconds per answer comparison",
    "engine": "rollout engine: jax (built-in sampler) or vllm",
    "vllm_tensor_parallel": "vLLM tensor_parallel_size",
    "vllm_gpu_memory_utilization": "vLLM gpu_memory_utilization",
    "vllm_max_model_len": "vLLM max_model_len", "vllm_sleep": "put vLLM to sleep during M-steps",
    "vllm_enforce_eager": "vLLM enforce_eager (no graph capture or compilation)",
    "vllm_kv_cache_mb": "vLLM KV-cache size in MiB (0: from vllm_gpu_memory_utilization)",
    "jax_memory_fraction": "share of each GPU's memory JAX may allocate (0: auto; with vLLM "
    "1 - vllm_gpu_memory_utilization - 0.05, preallocation off)",
    "train_batch_size": "trajectories per update", "micro_batch_size": "rows per micro-batch "
    "(gradient accumulation; 0: none)", "m_step_epochs": "passes over D_train per M-step",
    "length_multiple": "sequence padding bucket", "logprob_batch_size": "rows per behaviour "
    "log-prob pass", "save_every": "train steps between checkpoints inside an M-step",
    "keep_checkpoints": "checkpoints kept", "export_hf": "HuggingFace export after each M-step",
    "tensorboard": "also write TensorBoard event files", "progress": "progress bars",
    "log_every": "M-step steps between metric lines",
}
_SKIP = ("optimizer", "loss")
_ENUMS = {"algorithm": config_lib.ALGORITHMS, "engine": config_lib.ENGINES,
          "template": config_lib.TEMPLATES}


@contextlib.contextmanager
def bad_flags_exit(script: str):
  """Around an entry point's flag checks: a bad setting (config.ConfigError, naming its flag, or
  absl's ValidationError) is printed as `<script>: bad flag: ...` on stderr and exits 2."""
  try:
    yield
  except config_lib.ConfigError as e:
    print(f"{script}: bad flag: --{e}", file=sys.stderr)
    sys.exit(2)
  except flags.ValidationError as e:
    print(f"{script}: bad flag: {e}", file=sys.stderr)
    sys.exit(2)


def define_dataclass_flags(cls, help_: dict[str, str], fv: flags.FlagValues,
                           skip=(), enums=None) -> None:
  """A flag per field of dataclass `cls` (same name, type and default), except `skip`."""
  hints = typing.get_type_hints(cls)
  for f in dataclasses.fields(cls):
    if f.name in skip:
      continue
    default = None if f.default is dataclasses.MISSING else f.default
    kind, text = hints[f.name], help_[f.name]
    if enums and f.name in enums:
      flags.DEFINE_enum(f.name, default, enums[f.name], text, flag_values=fv)
    elif kind is bool:
      flags.DEFINE_bool(f.name, default, text, flag_values=fv)
    elif kind is int:
      flags.DEFINE_integer(f.name, default, text, flag_values=fv)
    elif kind is float:
      flags.DEFINE_float(f.name, default, text, flag_values=fv)
    elif kind == tuple[str, ...]:
      flags.DEFINE_list(f.name, list(default), text, flag_values=fv)
    else:
      flags.DEFINE_string(f.name, default, text, flag_values=fv)


def dataclass_kwargs(cls, fv: flags.FlagValues, skip=()) -> dict:
  """The parsed flags of `cls`'s fields, lists as tuples; a required field left unset is an
  error naming its flag."""
  kwargs = {}
  for f in dataclasses.fields(cls):
    if f.name in skip:
      continue
    value = fv[f.name].value
    if value is None and f.default is dataclasses.MISSING:
      raise flags.ValidationError(f"--{f.name}: required")
    kwargs[f.name] = tuple(value) if isinstance(value, list) else value
  return kwargs


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  train_flags.define_flags(fv)
  define_dataclass_flags(config_lib.RunConfig, HELP, fv, skip=_SKIP, enums=_ENUMS)


def run_config(fv: flags.FlagValues = flags.FLAGS, check_paths: bool = True,
               plan_only: bool = False) -> config_lib.RunConfig:
  """The RunConfig of the parsed flags; a bad value or path raises flags.ValidationError that
  names the flag. plan_only: check only the paths a dry run reads (config.validate_paths)."""
  kwargs = dataclass_kwargs(config_lib.RunConfig, fv, skip=_SKIP)
  algorithm = kwargs["algorithm"]
  for name in config_lib.IGNORED_BY[algorithm]:
    if fv[name].present:
      raise flags.ValidationError(f"--{name}: algorithm={algorithm} does not use it; remove it")
  if not kwargs["branching"]:
    for name in config_lib.BRANCHING_ONLY:
      if fv[name].present:
        raise flags.ValidationError(f"--{name}: used only with --branching; remove it")
  kind = "sft" if algorithm == "sft" else "policy"
  # rl has no decision term; sft's loss reads none of the policy-loss flags.
  loss_changes = {"ce_coef": 0.0} if algorithm == "rl" else {}
  try:
    cfg = config_lib.RunConfig(**kwargs, optimizer=train_flags.optimizer_config(fv),
                               loss=train_flags.loss_config(kind, fv, **loss_changes))
    if check_paths:
      config_lib.validate_paths(cfg, plan_only)
  except config_lib.ConfigError as e:
    raise flags.ValidationError(f"--{e}") from None
  return cfg
