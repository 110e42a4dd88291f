"""Evaluation of a HuggingFace checkpoint on the benchmarks (METHOD.md, Evaluation): each
benchmark in each prompt mode, greedy or n samples, through the tool loop, the sandbox and the
grader; results as JSON, per-rollout rows, a Markdown table and PNG plots.

Output directory: rows/<benchmark>.jsonl (written once a benchmark is done; a rerun skips the
benchmarks already there), results.json, summary.md, accuracy_by_mode.png, invocation_hist.png.
"""

from __future__ import annotations

import dataclasses
import os

from autocode_jax.data.datasets import DATASETS, is_generated, sample_queries
from autocode_jax.data.prompts import MODES
from autocode_jax.eval import report
from autocode_jax.files import read_jsonl, write_jsonl
from autocode_jax.flagging import ConfigError, check_choices, option, required, requirer
from autocode_jax.grading.metrics import autocode_analysis, grader_note, result_rows
from autocode_jax.models.tokenizer import TEMPLATES
from autocode_jax.rollout.session import RolloutSettings, open_session


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """model_dir: the HF checkpoint; out_dir: where results go; benchmarks: dataset names; limit:
  queries per benchmark (0: all; otherwise a seeded difficulty-stratified sample); modes;
  sampled_benchmarks are scored as the mean over `samples` samples at `sample_temperature`
  (METHOD.md: AIME24 and AMC23, n = 64, T = 0.6), the others greedily; rollout: the engine,
  sandbox and grader settings (rollout.session.RolloutSettings, as in training, but vLLM may
  take 80% of a GPU: no trainer shares it). The other fields mean what they mean in
  em.config.RunConfig."""
  model_dir: str = required("HuggingFace model directory to evaluate")
  out_dir: str = required("where results go")
  tokenizer_dir: str = option("", "tokenizer directory (default: model_dir)")
  template: str = option("chat", "chat (instruct models) or plain (base models)",
                         choices=TEMPLATES)
  benchmarks: tuple[str, ...] = option(("gsm8k", "math500", "gaokao2023en", "olympiadbench",
                                        "aime24", "amc23"), "benchmarks to evaluate")
  data_dir: str = option("../shared/data", "directory laid out like shared/data")
  limit: int = option(0, "queries per benchmark, a stratified sample (0: all)")
  modes: tuple[str, ...] = option(("cot", "code", "auto"), "prompt modes (cot, code, auto)")
  sampled_benchmarks: tuple[str, ...] = option(
      ("aime24", "amc23"), "benchmarks scored as the mean over --samples samples")
  samples: int = option(64, "samples per query on sampled_benchmarks")
  sample_temperature: float = option(0.6, "temperature of those samples")
  max_tokens: int = option(2048, "response tokens at most")
  seed: int = option(0, "seed of the query sample and the rollouts")
  param_dtype: str = option("float32", "parameter dtype")
  dtype: str = option("float32", "compute dtype")
  mesh_data: int = option(1, "data mesh axis")
  mesh_fsdp: int = option(-1, "FSDP mesh axis")
  mesh_tensor: int = option(1, "tensor mesh axis")
  rollout: RolloutSettings = RolloutSettings(vllm_gpu_memory_utilization=0.8)

  def __post_init__(self):
    need = requirer(self)
    need(bool(self.model_dir), "model_dir", "a HuggingFace model directory is required")
    need(bool(self.out_dir), "out_dir", "an output directory is required")
    check_choices(self)  # template
    need(bool(self.benchmarks) and all(b in DATASETS for b in self.benchmarks), "benchmarks",
         f"expected names from {tuple(DATASETS)}")
    need(all(b in DATASETS for b in self.sampled_benchmarks), "sampled_benchmarks",
         f"expected names from {tuple(DATASETS)}")
    need(bool(self.modes) and all(m in MODES for m in self.modes), "modes",
         f"expected a non-empty list from {MODES}")
    for f in ("samples", "max_tokens"):
      need(getattr(self, f) > 0, f, "must be positive")
    need(self.limit >= 0, "limit", "must be >= 0")
    need(self.limit > 0 or not any(is_generated(b) for b in self.benchmarks), "limit",
         "a generated benchmark needs a number of queries")
    need(self.sample_temperature > 0, "sample_temperature", "must be positive")


def validate_paths(cfg: EvalConfig) -> None:
  from autocode_jax.models.tokenizer import TokenizerError, tokenizer_files
  if not os.path.isfile(os.path.join(cfg.model_dir, "config.json")):
    raise ConfigError("model_dir", f"{cfg.model_dir!r} is not a HuggingFace model directory "
                      "(no config.json)")
  try:
    tokenizer_files(cfg.tokenizer_dir or cfg.model_dir)
  except TokenizerError as e:
    raise ConfigError("tokenizer_dir" if cfg.tokenizer_dir else "model_dir", str(e)) from None
  for name in (b for b in cfg.benchmarks if not is_generated(b)):
    path = os.path.join(cfg.data_dir, DATASETS[name].path)
    if not os.path.isfile(path):
      raise ConfigError("benchmarks", f"{name}: {path} does not exist (data_dir={cfg.data_dir!r})")


def _queries(cfg: EvalConfig, name: str):
  """At most `limit` queries of a benchmark (0: all), a seeded sample stratified by level; of a
  generated one, its evaluation split (task seed 0)."""
  return sample_queries(name, cfg.data_dir, cfg.limit, split="eval", seed=cfg.seed,
                        at_most=True)


def evaluate(cfg: EvalConfig, log=print) -> dict:
  """Evaluates every benchmark (skipping those already in out_dir/rows) and writes the report.
  Returns {benchmark: autocode_analysis(...) plus "n_samples"}."""
  from autocode_jax.models.config import load_hf_config
  from autocode_jax.models.hf import from_pretrained
  from autocode_jax.models.sharding import make_mesh
  from autocode_jax.models.tokenizer import load_tokenizer
  rows_dir = os.path.join(cfg.out_dir, "rows")
  os.makedirs(rows_dir, exist_ok=True)
  todo = [b for b in cfg.benchmarks if not os.path.exists(os.path.join(rows_dir, f"{b}.jsonl"))]
  if todo:
    tokenizer = load_tokenizer(cfg.tokenizer_dir or cfg.model_dir)
    model, mesh = None, None
    if cfg.rollout.engine == "jax":
      mesh = make_mesh(cfg.mesh_data, cfg.mesh_fsdp, cfg.mesh_tensor)
      model = from_pretrained(cfg.model_dir, mesh=mesh, param_dtype=cfg.param_dtype,
                              dtype=cfg.dtype)
    session = open_session(cfg.rollout, tokenizer, load_hf_config(cfg.model_dir),
                           template=cfg.template, seed=cfg.seed, dtype=cfg.dtype, model=model,
                           mesh=mesh, pad_id=tokenizer.pad_token_id or 0,
                           model_dir=cfg.model_dir)
    try:
      for name in todo:
        sampled = name in cfg.sampled_benchmarks
        trajs = session.roll_out_modes(_queries(cfg, name), cfg.modes, max_tokens=cfg.max_tokens,
                                       n=cfg.samples if sampled else 1,
                                       temperature=cfg.sample_temperature if sampled else 0.0)
        rows = result_rows(trajs, tag=name)
        path = os.path.join(rows_dir, f"{name}.jsonl")
        write_jsonl(path, rows)
        acc = autocode_analysis(rows)
        log(f"{name}: " + " ".join(f"{m} {a:.3f}" for m, a in acc["accuracy"].items())
            + f" ({grader_note(acc).strip()})")
    finally:
      session.close()
  results = {}
  for name in cfg.benchmarks:
    rows = read_jsonl(os.path.join(rows_dir, f"{name}.jsonl"))
    results[name] = dict(autocode_analysis(rows),
                         n_samples=cfg.samples if name in cfg.sampled_benchmarks else 1)
  report.write_report(results, cfg.out_dir)
  return results
