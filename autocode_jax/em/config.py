"""The configuration of a training run (EM, or its `rl` / `sft` baselines): one frozen dataclass
whose field names are the flag names of experiments/train.py, validated before any work starts.

`validate_paths` checks what exists on disk (model, tokenizer, data, engine); `__post_init__`
checks values. Both raise ConfigError naming the field, so a bad flag fails at once.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

from autocode_jax import flagging
from autocode_jax.data.datasets import DATASETS
from autocode_jax.data.prompts import MODES, TEMPLATES
from autocode_jax.flagging import ConfigError, option, required, requirer
from autocode_jax.models.config import PRESET_NAMES
from autocode_jax.rollout.session import RolloutSettings
from autocode_jax.training.optimizers import OptimizerConfig
from autocode_jax.training.step import LossConfig

ALGORITHMS = ("em", "rl", "sft")
# Fields that may change between a run and its resumption; every other field must match.
RESUMABLE_CHANGES = ("progress", "tensorboard", "log_every")
# Flags an algorithm never reads (its own fields, and those of its loss): setting
# one is refused (em.flags.run_config), so a flag never silently does nothing. rl: no s*, no
# decision term, D_train = the fresh rollouts; sft: no rollouts, no policy loss, no
# behaviour or reference log-probs (its evaluation is greedy).
IGNORED_BY = {
    "em": (),
    "rl": ("alpha", "m", "ce_coef"),
    "sft": ("k", "m", "alpha", "temperature", "top_p", "rollout_chunk", "drop_uniform_groups",
            "logprob_batch_size", "eps_low", "eps_high", "dual_clip", "ratio_level", "ce_coef",
            "kl_coef", "entropy_coef"),
}
# Flags read only with branching on.
BRANCHING_ONLY = ("k_branch", "branch_per_query")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Every setting of a run. Defaults follow ../shared/METHOD.md.

  Run: run_dir (checkpoints, D_train, metrics; rerunning resumes), algorithm (em | rl | sft),
    seed (initialisation, data order, rollout seeds).
  Model: init_from (a HuggingFace directory) or model_preset (random init; the vocabulary is
    grown to the tokenizer's, rounded up to 128); tokenizer_dir (default: init_from); template
    (chat for instruct models, plain for base models); param_dtype, dtype, remat,
    logprob_chunk, layer_loop (see models.ModelConfig).
  Mesh: mesh_data x mesh_fsdp x mesh_tensor devices (one may be -1: the rest).
  Data: data_dir (laid out like shared/data), train_set (a dataset, or "synthetic": the
    generated task of autocode_jax.synthetic, whose problems task_seed fixes;
    synthetic_code_share: with algorithm=sft on it, the share of the warm-start corpus's
    plain-prompt answers that use code, see synthetic.corpus), num_queries (stratified by
    level; 0: all), queries_per_iteration, epochs over the queries, eval_set ("" = none),
    eval_size (0: all), eval_every iterations, eval_modes, eval_max_tokens.
  E-step: k rollouts per probe, m trajectories per query into D_train (0: k), alpha of Eq. 5,
    temperature, top_p, max_tokens per response, rollout_chunk (queries rolled out, graded and
    written at a time: a crash loses at most one chunk), drop_uniform_groups, branching with
    k_branch continuations each way for branch_per_query code trajectories (from the second
    iteration on).
  Rollouts (rollout.session.RolloutSettings, shared with evaluation): the engine (jax | vllm)
    and its vllm_* settings, max_tool_calls, the sandbox and grade_timeout_s. vllm_sleep (free
    vLLM's memory during the M-step), jax_memory_fraction (the share of each GPU's memory JAX
    may allocate; 0: with vLLM, 1 - vllm_gpu_memory_utilization - em.plan.RESERVE,
    preallocation off; without, JAX's default; see em.plan).
  M-step: train_batch_size trajectories per update, micro_batch_size (gradient accumulation;
    0: none), m_step_epochs, length_multiple (padding bucket), logprob_batch_size (rows per
    behaviour log-prob pass), optimizer, loss.
  Output: save_every (train steps between checkpoints inside an M-step), keep_checkpoints,
    export_hf (HuggingFace export after each M-step), tensorboard, progress (bars), log_every.
  """
  run_dir: str = required("run directory: checkpoints, D_train, metrics; rerun the command to "
                           "resume")
  algorithm: str = option("em", "em (the method), rl (on-policy GRPO baseline) or sft (train on "
                                "given solutions)", choices=ALGORITHMS)
  seed: int = option(0, "seed of initialisation, query order and rollouts")
  init_from: str = option("", "HuggingFace model directory to start from")
  model_preset: str = option("", "random-init preset instead of init_from (debug); vocab follows "
                                 "the tokenizer")
  tokenizer_dir: str = option("", "tokenizer directory (default: init_from)")
  template: str = option("chat", "prompt template: chat (instruct models) or plain (base "
                                  "models)", choices=TEMPLATES)
  param_dtype: str = option("float32", "parameter dtype")
  dtype: str = option("float32", "compute dtype")
  remat: str = option("none", "remat policy per block")
  logprob_chunk: int = option(512, "sequence chunk of the log-prob projection")
  layer_loop: str = option("auto", "decoder blocks scanned, unrolled, or auto (unrolled up to 8 "
                                   "layers)")
  mesh_data: int = option(1, "data-parallel mesh axis size")
  mesh_fsdp: int = option(-1, "FSDP mesh axis size (-1: rest)")
  mesh_tensor: int = option(1, "tensor-parallel mesh axis size")
  data_dir: str = option("../shared/data", "directory laid out like shared/data")
  train_set: str = option("math_train", "training query set")
  task_seed: int = option(0, "seed of the synthetic task's problems (train_set=synthetic)")
  synthetic_code_share: float = option(0.1, "share of the synthetic warm-start corpus's "
                                            "plain-prompt answers that use code "
                                            "(train_set=synthetic, algorithm=sft)")
  num_queries: int = option(0, "queries sampled from train_set by difficulty (0: all)")
  queries_per_iteration: int = option(64, "queries per EM iteration")
  epochs: int = option(1, "passes over the queries")
  eval_set: str = option("", "dev set evaluated every eval_every iterations (empty: none)")
  eval_size: int = option(0, "dev queries (0: all)")
  eval_every: int = option(1, "iterations between evaluations")
  eval_modes: tuple[str, ...] = option(("auto",), "prompt modes evaluated (cot, code, auto)")
  eval_max_tokens: int = option(0, "response budget in evaluation (0: max_tokens)")
  k: int = option(8, "rollouts per probe (K)")
  m: int = option(0, "trajectories per query into D_train (M; 0: K)")
  alpha: float = option(4.0, "alpha of the reference strategy s* (Eq. 5)")
  temperature: float = option(1.0, "sampling temperature")
  top_p: float = option(0.9, "nucleus mass")
  max_tokens: int = option(1024, "response tokens at most (prefix and tool included)")
  rollout_chunk: int = option(64, "queries rolled out, graded and written to disk at a time")
  drop_uniform_groups: bool = option(False, "drop queries whose D_train rewards are all equal")
  branching: bool = option(False, "mid-reasoning branching at the first code block (from iteration "
                                  "2 on)")
  k_branch: int = option(4, "continuations per branch and per decision")
  branch_per_query: int = option(1, "code trajectories branched per query")
  rollout: RolloutSettings = RolloutSettings()
  vllm_sleep: bool = option(False, "put vLLM to sleep during M-steps")
  jax_memory_fraction: float = option(0.0, "share of each GPU's memory JAX may allocate (0: auto; "
                                           "with vLLM 1 - vllm_gpu_memory_utilization - 0.05, "
                                           "preallocation off)")
  train_batch_size: int = option(64, "trajectories per update")
  micro_batch_size: int = option(0, "rows per micro-batch (gradient accumulation; 0: none)")
  m_step_epochs: int = option(1, "passes over D_train per M-step")
  length_multiple: int = option(128, "sequence padding bucket")
  logprob_batch_size: int = option(16, "rows per behaviour log-prob pass")
  optimizer: OptimizerConfig = OptimizerConfig()
  loss: LossConfig = LossConfig()
  save_every: int = option(50, "train steps between checkpoints inside an M-step")
  keep_checkpoints: int = option(2, "checkpoints kept")
  export_hf: bool = option(True, "HuggingFace export after each M-step")
  tensorboard: bool = option(False, "also write TensorBoard event files")
  progress: bool = option(True, "progress bars")
  log_every: int = option(1, "M-step steps between metric lines")

  def __post_init__(self):
    need = requirer(self)
    need(bool(self.run_dir), "run_dir", "a directory for checkpoints and data is required")
    need(self.algorithm in ALGORITHMS, "algorithm", f"expected one of {ALGORITHMS}")
    # The loss follows the algorithm, decided here only: sft trains on given solutions; rl has
    # no decision term (its D_train carries no s*; the --ce_coef flag is refused for it).
    kind = "sft" if self.algorithm == "sft" else "policy"
    ce_coef = 0.0 if self.algorithm == "rl" else self.loss.ce_coef
    if (self.loss.kind, self.loss.ce_coef) != (kind, ce_coef):
      object.__setattr__(self, "loss", dataclasses.replace(self.loss, kind=kind, ce_coef=ce_coef))
    need(bool(self.init_from) != bool(self.model_preset), "init_from",
         "give exactly one of init_from (a HuggingFace directory) and model_preset")
    need(not self.model_preset or self.model_preset in PRESET_NAMES, "model_preset",
         f"expected one of {PRESET_NAMES}")
    need(bool(self.init_from or self.tokenizer_dir), "tokenizer_dir",
         "a random-init model_preset needs a tokenizer_dir")
    need(self.template in TEMPLATES, "template", f"expected one of {TEMPLATES}")
    sets = tuple(DATASETS) + ("synthetic",)
    need(self.train_set in sets, "train_set", f"expected one of {sets}")
    need(self.eval_set in sets + ("",), "eval_set", f"expected '' or one of {sets}")
    for f in ("num_queries", "eval_size", "eval_max_tokens", "m", "micro_batch_size"):
      need(getattr(self, f) >= 0, f, "must be >= 0")
    for f in ("queries_per_iteration", "epochs", "eval_every", "k", "max_tokens", "rollout_chunk",
              "k_branch", "branch_per_query", "train_batch_size", "m_step_epochs",
              "length_multiple", "logprob_batch_size", "save_every", "keep_checkpoints", "log_every", "logprob_chunk"):
      need(getattr(self, f) > 0, f, "must be positive")
    for f in ("mesh_data", "mesh_fsdp", "mesh_tensor"):
      need(getattr(self, f) > 0 or getattr(self, f) == -1, f, "must be positive or -1")
    need(self.alpha >= 0, "alpha", "must be >= 0")
    need(0 <= self.synthetic_code_share <= 1, "synthetic_code_share", "must be in [0, 1]")
    need(self.temperature >= 0, "temperature", "must be >= 0")
    need(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
    need(0 <= self.jax_memory_fraction < 1, "jax_memory_fraction", "must be in [0, 1)")
    vllm_share = self.rollout.vllm_gpu_memory_utilization
    if self.rollout.engine == "vllm":  # both on each GPU beside CUDA contexts (em.plan.RESERVE)
      if self.jax_memory_fraction:
        need(self.jax_memory_fraction + vllm_share <= 0.95, "jax_memory_fraction",
             f"with vllm_gpu_memory_utilization={vllm_share} it leaves less than 5% of a GPU "
             "for the rest")
      else:
        need(vllm_share <= 0.9, "vllm_gpu_memory_utilization",
             "leaves JAX less than 5% of a GPU (its share is 1 - this - 0.05)")
    need(bool(self.eval_modes) and all(m in MODES for m in self.eval_modes), "eval_modes",
         f"expected a non-empty list from {MODES}")
    need(self.rollout.engine != "vllm" or self.export_hf, "export_hf",
         "engine=vllm reads the policy from its HuggingFace export: export_hf must be on")
    need(not self.micro_batch_size or self.train_batch_size % self.micro_batch_size == 0,
         "micro_batch_size", f"must divide train_batch_size={self.train_batch_size}")
    need(not (self.branching and self.algorithm != "em"), "branching",
         "mid-reasoning branching is part of the em E-step only")
    need(not (self.algorithm == "sft" and (self.loss.kl_coef or self.loss.entropy_coef)),
         "algorithm", "sft's loss has no KL or entropy term: kl_coef and entropy_coef must be 0")

  @property
  def m_effective(self) -> int:
    return self.m or self.k

  @property
  def probes(self) -> tuple[str, ...]:
    return {"em": ("vanilla", "code_prefix"), "rl": ("vanilla",), "sft": ()}[self.algorithm]

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def validate_paths(cfg: RunConfig, plan_only: bool = False) -> None:
  """Checks that what the run reads exists, before any work starts. `plan_only` (a dry run,
  em.plan): the architecture, tokenizer and data only; no weights, engine or run directory."""
  if cfg.init_from:
    if not os.path.isfile(os.path.join(cfg.init_from, "config.json")):
      raise ConfigError("init_from", f"{cfg.init_from!r} is not a HuggingFace model directory "
                        "(no config.json)")
    if not plan_only and not any(f.endswith(".safetensors") for f in os.listdir(cfg.init_from)):
      raise ConfigError("init_from", f"{cfg.init_from!r} holds no .safetensors weights")
  from autocode_jax.models.tokenizer import TokenizerError, tokenizer_files
  try:
    tokenizer_files(cfg.tokenizer_dir or cfg.init_from)
  except TokenizerError as e:
    raise ConfigError("tokenizer_dir" if cfg.tokenizer_dir else "init_from", str(e)) from None
  for field, name in (("train_set", cfg.train_set), ("eval_set", cfg.eval_set)):
    if name and name != "synthetic":
      path = os.path.join(cfg.data_dir, DATASETS[name].path)
      if not os.path.isfile(path):
        raise ConfigError(field, f"{name}: {path} does not exist (data_dir={cfg.data_dir!r})")
  if plan_only:
    return
  if cfg.rollout.engine == "vllm" and importlib.util.find_spec("vllm") is None:
    raise ConfigError("engine", "engine=vllm but vLLM is not installed (pip install -e .[vllm])")
  if os.path.exists(cfg.run_dir) and not os.path.isdir(cfg.run_dir):
    raise ConfigError("run_dir", f"{cfg.run_dir!r} exists and is not a directory")
  ancestor = os.path.abspath(cfg.run_dir)
  while not os.path.exists(ancestor):
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK):
    raise ConfigError("run_dir", f"cannot write {cfg.run_dir!r}: {ancestor} is not a writable "
                      "directory")


# Fields renamed to their flag's name since a run directory's config.json could have been
# written (old name -> new), so such a run still resumes.
RENAMED = {"optimizer": {"name": "optimizer", "schedule": "lr_schedule", "b1": "adam_b1",
                         "b2": "adam_b2", "eps": "adam_eps"},
           "loss": {"aggregation": "loss_aggregation"}}
# Parts whose fields a config.json of an older version holds at the top level.
NESTED = {"optimizer": OptimizerConfig, "loss": LossConfig, "rollout": RolloutSettings}


def config_from_json(d: dict) -> RunConfig:
  """The RunConfig of a run directory's config.json (to_json's), of this version or an older
  one (RENAMED; the rollout settings at the top level); an unknown field is a ConfigError
  naming it."""
  d = dict(d)
  for part, cls in NESTED.items():
    if part not in d:  # written before the part was nested: its fields are at the top level
      d[part] = {f.name: d.pop(f.name) for f in dataclasses.fields(cls) if f.name in d}
    fields = {RENAMED.get(part, {}).get(k, k): v for k, v in d[part].items()}
    unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ConfigError(f"{part}.{sorted(unknown)[0]}", "not a field of this version")
    d[part] = cls(**fields)
  unknown = set(d) - {f.name for f in dataclasses.fields(RunConfig)}
  if unknown:
    raise ConfigError(sorted(unknown)[0], "not a field of this version")
  d["eval_modes"] = tuple(d["eval_modes"])
  return RunConfig(**d)


def resume_conflicts(saved: RunConfig, now: RunConfig) -> list[str]:
  """The fields (flags, nested configs' included) that differ between a run directory's config
  and the new one (other than RESUMABLE_CHANGES), as "field: saved -> now"."""
  a, b = flagging.flat(saved), flagging.flat(now)
  return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if k not in RESUMABLE_CHANGES and a[k] != b[k]]
