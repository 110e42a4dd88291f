"""The embedded default: the paper's comparison on the synthetic task, small enough for a CPU.

1. Build the task's tokenizer from its training problems into --tokenizer_dir (kept if there).
2. Warm-start a small random model by SFT on the mixed plain / code corpus (run_dir/warm), so
   that it can do both and picks between them at random.
3. From that checkpoint, run each method (EM and the on-policy RL baseline) with the same rollout
   budget per query: EM's K per probe x 2 probes = RL's 2K (run_dir/<method>), evaluating every
   iteration in the three prompt modes.
4. Summarise per method and iteration: accuracy per mode, selection accuracy, code-invocation
   rate (summary.md, summary.json), and the same by task family (families.json); plots
   curves_<method>.png, invocation_hist.png (greedy eval) and invocation_hist_sampled.png (the
   E-step's sampled rollouts, first and last iteration).
Every phase is an ordinary run of em.loop, so the whole demo resumes like one.
"""

from __future__ import annotations

import dataclasses
import json
import os

from autocode_jax import synthetic
from autocode_jax.em.config import ConfigError, RunConfig
from autocode_jax.eval import report
from autocode_jax.eval.metrics import autocode_analysis
from autocode_jax.synthetic.tokenizer import build_tokenizer
from autocode_jax.training.step import LossConfig

METHODS = ("em", "rl")


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  """demo_methods: what runs from the warm start; demo_warm_queries problems, demo_warm_epochs
  passes, demo_warm_learning_rate (cosine to a tenth), demo_warm_batch_size: the SFT warm start;
  demo_vocab_size: the task tokenizer's vocabulary."""
  demo_methods: tuple[str, ...] = METHODS
  demo_warm_queries: int = 2000
  demo_warm_epochs: int = 3
  demo_warm_learning_rate: float = 3e-3
  demo_warm_batch_size: int = 32
  demo_vocab_size: int = 512

  def __post_init__(self):
    if not self.demo_methods or any(m not in METHODS for m in self.demo_methods):
      raise ConfigError("demo_methods", f"expected a list from {METHODS} "
                        f"(got {self.demo_methods!r})")
    for f in ("demo_warm_queries", "demo_warm_epochs", "demo_warm_batch_size", "demo_vocab_size"):
      if getattr(self, f) <= 0:
        raise ConfigError(f, f"must be positive (got {getattr(self, f)!r})")
    if not self.demo_warm_learning_rate > 0:
      raise ConfigError("demo_warm_learning_rate", "must be positive")


DEMO_HELP = {
    "demo_methods": "methods run from the warm start (em, rl)",
    "demo_warm_queries": "synthetic problems of the SFT warm start",
    "demo_warm_epochs": "passes of the warm start over them",
    "demo_warm_learning_rate": "peak learning rate of the warm start",
    "demo_warm_batch_size": "examples per warm-start update",
    "demo_vocab_size": "vocabulary of the task's tokenizer"}


def define_flags(fv) -> None:
  """--demo and the DemoConfig flags (beside em.flags.define_flags)."""
  from absl import flags
  from autocode_jax.em import flags as em_flags
  em_flags.define_dataclass_flags(DemoConfig, DEMO_HELP, fv)
  flags.DEFINE_bool("demo", False, "the embedded CPU demo: warm start, then EM and RL, compared",
                    flag_values=fv)


def demo_config(fv) -> DemoConfig:
  from autocode_jax.em import flags as em_flags
  return DemoConfig(**em_flags.dataclass_kwargs(DemoConfig, fv))


def check(cfg: RunConfig) -> None:
  """What the demo needs of the base config (the settings of the EM / RL phase)."""
  if cfg.train_set != synthetic.SOURCE or cfg.eval_set != synthetic.SOURCE:
    raise ConfigError("train_set", "the demo trains and evaluates on train_set=eval_set=synthetic")
  if not cfg.model_preset or cfg.init_from:
    raise ConfigError("model_preset", "the demo warm-starts a random model_preset itself")
  for field in ("run_dir", "tokenizer_dir"):
    path = os.path.abspath(getattr(cfg, field))
    while not os.path.exists(path):
      path = os.path.dirname(path)
    if not os.path.isdir(path) or not os.access(path, os.W_OK):
      raise ConfigError(field, f"cannot write {getattr(cfg, field)!r}: {path} is not a writable "
                        "directory")


def phase_configs(cfg: RunConfig, demo: DemoConfig) -> dict[str, RunConfig]:
  """The RunConfig of every phase, derived from the base config."""
  root, tok = cfg.run_dir, cfg.tokenizer_dir
  steps = demo.demo_warm_epochs * -(-2 * demo.demo_warm_queries // demo.demo_warm_batch_size)
  warm = dataclasses.replace(
      cfg, run_dir=os.path.join(root, "warm"), algorithm="sft", tokenizer_dir=tok,
      num_queries=demo.demo_warm_queries, queries_per_iteration=demo.demo_warm_queries,
      epochs=demo.demo_warm_epochs, eval_every=demo.demo_warm_epochs,
      train_batch_size=demo.demo_warm_batch_size, micro_batch_size=0, m_step_epochs=1,
      branching=False,
      loss=LossConfig(kind="sft"),
      optimizer=dataclasses.replace(cfg.optimizer, learning_rate=demo.demo_warm_learning_rate,
                                    schedule="cosine", warmup_steps=min(20, steps - 1),
                                    total_steps=steps, end_lr_ratio=0.1))
  out = {"warm": warm}
  hf = os.path.join(warm.run_dir, "hf_policy")
  for m in demo.demo_methods:
    out[m] = dataclasses.replace(
        cfg, run_dir=os.path.join(root, m), algorithm=m, init_from=hf, model_preset="",
        tokenizer_dir=tok, k=cfg.k if m == "em" else 2 * cfg.k,
        branching=cfg.branching and m == "em",
        loss=cfg.loss if m == "em" else dataclasses.replace(cfg.loss, ce_coef=0.0))
  return out


def summary_rows(phases: dict[str, RunConfig]) -> list[dict]:
  """One row per (method, iteration) with an evaluation; the warm start is iteration 0."""
  rows = []
  warm = report.training_curves(phases["warm"].run_dir, os.path.join(
      phases["warm"].run_dir, "curves.png"))
  start = warm[max(warm)] if warm else None
  for name, cfg in phases.items():
    if name == "warm":
      continue
    by_it = report.training_curves(cfg.run_dir, os.path.join(os.path.dirname(cfg.run_dir),
                                                             f"curves_{name}.png"))
    for it, a in [(0, start)] + [(i + 1, by_it[i]) for i in sorted(by_it)]:
      if a is not None:
        rows.append({"method": name, "iteration": it, **{f"{m}_acc": v for m, v in
                                                         a["accuracy"].items()},
                     "selection_acc": a.get("selection_accuracy"),
                     "selection_queries": a.get("selection_queries"),
                     "invocation_rate": a["code_rate"].get("auto"),
                     "union_bound": a.get("union_bound"),
                     "invocation_hist": a.get("invocation_hist")})
  return rows


def family_rows(phases: dict[str, RunConfig]) -> list[dict]:
  """Per task family, at the warm start and after each method's last evaluated iteration: the
  accuracy in each mode and how often `auto` used code (which way the family is solved)."""
  warm = phases["warm"]
  family = {p.id: p.family
            for p in synthetic.split_problems(warm.eval_size, warm.task_seed, synthetic.EVAL)}
  stages = []
  for name, cfg in phases.items():
    by_it = report.eval_rows(cfg.run_dir)
    if by_it:
      last = max(by_it)
      stages.append(("warm start" if name == "warm" else f"{name} iter {last + 1}", by_it[last]))
  out = []
  for stage, rows in stages:
    for fam in synthetic.FAMILIES:
      mine = [r for r in rows if family.get(r["query_id"]) == fam]
      if not mine:
        continue
      a = autocode_analysis(mine)
      out.append({"stage": stage, "family": fam, "winner": synthetic.WINNER[fam],
                  **{f"{m}_acc": v for m, v in a["accuracy"].items()},
                  "invocation_rate": a["code_rate"].get("auto")})
  return out


def sampled_hists(phases: dict[str, RunConfig]) -> dict[str, list[int]]:
  """Fig. 5 with sampled decisions: the histogram of the training queries' code-invocation rate
  over their K vanilla rollouts (T=1; counts of 0..K code rollouts), at each method's first
  E-step (the warm start) and its last."""
  out = {}
  for name, cfg in phases.items():
    path = os.path.join(cfg.run_dir, "metrics.jsonl")
    if name == "warm" or not os.path.isfile(path):
      continue
    by_it = {}
    with open(path) as f:
      for line in f:
        m = json.loads(line)
        if m.get("kind") == "estep" and "code_rate_hist" in m:
          by_it[m["iteration"]] = m["code_rate_hist"]  # a resumed E-step: its last record
    its = sorted(by_it)
    for i in its[:1] + its[1:][-1:]:
      out[f"{name} E-step {i + 1}" + (" (warm start)" if i == its[0] else "")] = by_it[i]
  return out


def markdown(rows: list[dict], cols=("method", "iteration", "cot_acc", "code_acc", "auto_acc",
                                     "union_bound", "selection_acc", "invocation_rate")) -> str:
  fmt = lambda v: "-" if v is None else (f"{100 * v:.1f}" if isinstance(v, float) else str(v))
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
  return "\n".join(lines) + "\n"


def run_demo(cfg: RunConfig, demo: DemoConfig, log=print, digest: bool = False) -> dict:
  from autocode_jax.em.loop import run
  check(cfg)
  phases = phase_configs(cfg, demo)
  tok_dir = cfg.tokenizer_dir
  if not os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
    problems = synthetic.split_problems(max(demo.demo_warm_queries, cfg.num_queries),
                                        cfg.task_seed, synthetic.TRAIN)
    build_tokenizer(synthetic.tokenizer_texts(problems), tok_dir, demo.demo_vocab_size)
  finals = {}
  for name, pcfg in phases.items():
    log(f"== {name}: {pcfg.algorithm} in {pcfg.run_dir}")
    finals[name] = run(pcfg, log=log, digest=digest)
  rows = summary_rows(phases)
  families = family_rows(phases)
  table = markdown(rows) + "\nBy family (warm start, and each method's last iteration):\n\n" + (
      markdown(families, ("stage", "family", "winner", "cot_acc", "code_acc", "auto_acc",
                          "invocation_rate")))
  with open(os.path.join(cfg.run_dir, "summary.md"), "w") as f:
    f.write(table)
  with open(os.path.join(cfg.run_dir, "summary.json"), "w") as f:
    json.dump(rows, f, indent=1)
  with open(os.path.join(cfg.run_dir, "families.json"), "w") as f:
    json.dump(families, f, indent=1)
  hists = {}
  for r in rows:
    if r["invocation_hist"] and (r["iteration"] == 0 or r is _last(rows, r["method"])):
      hists["warm start" if r["iteration"] == 0 else f"{r['method']} iter {r['iteration']}"] = (
          r["invocation_hist"])
  if hists:
    report.plot_invocation_hist(hists, os.path.join(cfg.run_dir, "invocation_hist.png"),
                                "code-invocation rate per query (auto, greedy)")
  sampled = sampled_hists(phases)
  if sampled:
    report.plot_invocation_hist(sampled, os.path.join(cfg.run_dir, "invocation_hist_sampled.png"),
                                "code-invocation rate per training query (T=1)")
  log(table)
  return {"rows": rows, "finals": finals}


def _last(rows, method):
  return [r for r in rows if r["method"] == method][-1]
