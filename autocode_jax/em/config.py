"""The configuration of a training run (EM, or its `rl` / `sft` baselines): one frozen dataclass
whose field names are the flag names of experiments/train.py, validated before any work starts.

`validate_paths` checks what exists on disk (model, tokenizer, data, engine); `__post_init__`
checks values. Both raise ConfigError naming the field, so a bad flag fails at once.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

from autocode_jax.data.datasets import DATASETS
from autocode_jax.models.config import PRESET_NAMES
from autocode_jax.training.optimizers import OptimizerConfig
from autocode_jax.training.step import LossConfig

ALGORITHMS = ("em", "rl", "sft")
ENGINES = ("jax", "vllm")
TEMPLATES = ("chat", "plain")
EVAL_MODES = ("cot", "code", "auto")
# Fields that may change between a run and its resumption; every other field must match.
RESUMABLE_CHANGES = ("progress", "tensorboard", "log_every")
# Flags an algorithm never reads (config fields, and the loss flags of training.flags): setting
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


class ConfigError(ValueError):
  """A bad setting; `field` is the offending field (= flag) name."""

  def __init__(self, field: str, message: str):
    super().__init__(f"{field}: {message}")
    self.field = field


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
    temperature, top_p, max_tokens per response, max_tool_calls, rollout_chunk (queries rolled
    out, graded and written at a time: a crash loses at most one chunk), drop_uniform_groups,
    branching with k_branch continuations each way for branch_per_query code trajectories
    (from the second iteration on).
  Tools and grading: sandbox_workers, sandbox_timeout_s, sandbox_memory_mb, max_output_chars,
    grade_timeout_s.
  Engine: engine (jax | vllm), vllm_tensor_parallel, vllm_gpu_memory_utilization,
    vllm_max_model_len, vllm_sleep (free vLLM's memory during the M-step), vllm_enforce_eager
    (no CUDA graphs / compilation: faster start, slower decoding), vllm_kv_cache_mb (an explicit
    KV-cache size; 0: vLLM sizes it from vllm_gpu_memory_utilization, which on its CPU build is
    a share of host memory minus what the process already holds), jax_memory_fraction (the
    share of each GPU's memory JAX may allocate; 0: with vLLM, 1 - vllm_gpu_memory_utilization
    - em.plan.RESERVE, preallocation off; without, JAX's default; see em.plan).
  M-step: train_batch_size trajectories per update, micro_batch_size (gradient accumulation;
    0: none), m_step_epochs, length_multiple (padding bucket), logprob_batch_size (rows per
    behaviour log-prob pass), optimizer, loss.
  Output: save_every (train steps between checkpoints inside an M-step), keep_checkpoints,
    export_hf (HuggingFace export after each M-step), tensorboard, progress (bars), log_every.
  """
  run_dir: str
  algorithm: str = "em"
  seed: int = 0
  init_from: str = ""
  model_preset: str = ""
  tokenizer_dir: str = ""
  template: str = "chat"
  param_dtype: str = "float32"
  dtype: str = "float32"
  remat: str = "none"
  logprob_chunk: int = 512
  layer_loop: str = "auto"
  mesh_data: int = 1
  mesh_fsdp: int = -1
  mesh_tensor: int = 1
  data_dir: str = "../shared/data"
  train_set: str = "math_train"
  task_seed: int = 0
  synthetic_code_share: float = 0.1
  num_queries: int = 0
  queries_per_iteration: int = 64
  epochs: int = 1
  eval_set: str = ""
  eval_size: int = 0
  eval_every: int = 1
  eval_modes: tuple[str, ...] = ("auto",)
  eval_max_tokens: int = 0
  k: int = 8
  m: int = 0
  alpha: float = 4.0
  temperature: float = 1.0
  top_p: float = 0.9
  max_tokens: int = 1024
  max_tool_calls: int = 4
  rollout_chunk: int = 64
  drop_uniform_groups: bool = False
  branching: bool = False
  k_branch: int = 4
  branch_per_query: int = 1
  sandbox_workers: int = 2
  sandbox_timeout_s: float = 5.0
  sandbox_memory_mb: int = 1024
  max_output_chars: int = 512
  grade_timeout_s: float = 5.0
  engine: str = "jax"
  vllm_tensor_parallel: int = 1
  vllm_gpu_memory_utilization: float = 0.5
  vllm_max_model_len: int = 4096
  vllm_sleep: bool = False
  vllm_enforce_eager: bool = False
  vllm_kv_cache_mb: int = 0
  jax_memory_fraction: float = 0.0
  train_batch_size: int = 64
  micro_batch_size: int = 0
  m_step_epochs: int = 1
  length_multiple: int = 128
  logprob_batch_size: int = 16
  optimizer: OptimizerConfig = OptimizerConfig()
  loss: LossConfig = LossConfig()
  save_every: int = 50
  keep_checkpoints: int = 2
  export_hf: bool = True
  tensorboard: bool = False
  progress: bool = True
  log_every: int = 1

  def __post_init__(self):
    def need(ok: bool, field: str, message: str):
      if not ok:
        raise ConfigError(field, f"{message} (got {getattr(self, field)!r})")

    need(bool(self.run_dir), "run_dir", "a directory for checkpoints and data is required")
    need(self.algorithm in ALGORITHMS, "algorithm", f"expected one of {ALGORITHMS}")
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
    for f in ("num_queries", "eval_size", "eval_max_tokens", "m", "micro_batch_size",
              "vllm_kv_cache_mb"):
      need(getattr(self, f) >= 0, f, "must be >= 0")
    for f in ("queries_per_iteration", "epochs", "eval_every", "k", "max_tokens", "rollout_chunk",
              "k_branch", "branch_per_query", "sandbox_workers", "sandbox_memory_mb",
              "max_output_chars", "vllm_tensor_parallel", "vllm_max_model_len",
              "train_batch_size", "m_step_epochs", "length_multiple", "logprob_batch_size",
              "save_every", "keep_checkpoints", "log_every", "logprob_chunk"):
      need(getattr(self, f) > 0, f, "must be positive")
    need(self.max_tool_calls >= 0, "max_tool_calls", "must be >= 0")
    for f in ("mesh_data", "mesh_fsdp", "mesh_tensor"):
      need(getattr(self, f) > 0 or getattr(self, f) == -1, f, "must be positive or -1")
    need(self.alpha >= 0, "alpha", "must be >= 0")
    need(0 <= self.synthetic_code_share <= 1, "synthetic_code_share", "must be in [0, 1]")
    need(self.temperature >= 0, "temperature", "must be >= 0")
    need(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
    for f in ("sandbox_timeout_s", "grade_timeout_s"):
      need(getattr(self, f) > 0, f, "must be positive")
    need(0 < self.vllm_gpu_memory_utilization <= 1, "vllm_gpu_memory_utilization",
         "must be in (0, 1]")
    need(0 <= self.jax_memory_fraction < 1, "jax_memory_fraction", "must be in [0, 1)")
    if self.engine == "vllm":  # both on each GPU, beside CUDA contexts (5%: em.plan.RESERVE)
      if self.jax_memory_fraction:
        need(self.jax_memory_fraction + self.vllm_gpu_memory_utilization <= 0.95,
             "jax_memory_fraction", f"with vllm_gpu_memory_utilization="
             f"{self.vllm_gpu_memory_utilization} it leaves less than 5% of a GPU for the rest")
      else:
        need(self.vllm_gpu_memory_utilization <= 0.9, "vllm_gpu_memory_utilization",
             "leaves JAX less than 5% of a GPU (its share is 1 - this - 0.05)")
    need(bool(self.eval_modes) and all(m in EVAL_MODES for m in self.eval_modes), "eval_modes",
         f"expected a non-empty list from {EVAL_MODES}")
    need(self.engine in ENGINES, "engine", f"expected one of {ENGINES}")
    need(self.engine != "vllm" or self.export_hf, "export_hf",
         "engine=vllm reads the policy from its HuggingFace export: export_hf must be on")
    need(not self.micro_batch_size or self.train_batch_size % self.micro_batch_size == 0,
         "micro_batch_size", f"must divide train_batch_size={self.train_batch_size}")
    need(not (self.branching and self.algorithm != "em"), "branching",
         "mid-reasoning branching is part of the em E-step only")
    need(self.loss.kind == ("sft" if self.algorithm == "sft" else "policy"), "algorithm",
         f"loss kind {self.loss.kind!r} does not fit algorithm {self.algorithm!r}")
    need(not (self.algorithm == "rl" and self.loss.ce_coef), "algorithm",
         f"rl has no decision term (its D_train carries no s*): set ce_coef=0 "
         f"(ce_coef={self.loss.ce_coef})")
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
  if cfg.engine == "vllm" and importlib.util.find_spec("vllm") is None:
    raise ConfigError("engine", "engine=vllm but vLLM is not installed (pip install -e .[vllm])")
  if os.path.exists(cfg.run_dir) and not os.path.isdir(cfg.run_dir):
    raise ConfigError("run_dir", f"{cfg.run_dir!r} exists and is not a directory")
  ancestor = os.path.abspath(cfg.run_dir)
  while not os.path.exists(ancestor):
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK):
    raise ConfigError("run_dir", f"cannot write {cfg.run_dir!r}: {ancestor} is not a writable "
                      "directory")


def config_from_json(d: dict) -> RunConfig:
  d = dict(d)
  d["optimizer"] = OptimizerConfig(**d["optimizer"])
  d["loss"] = LossConfig(**d["loss"])
  d["eval_modes"] = tuple(d["eval_modes"])
  return RunConfig(**d)


def resume_conflicts(saved: RunConfig, now: RunConfig) -> list[str]:
  """The fields that differ between a run directory's config and the new one (other than
  RESUMABLE_CHANGES), as "field: saved -> now"."""
  a, b = saved.to_json(), now.to_json()
  return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if k not in RESUMABLE_CHANGES and a[k] != b[k]]
