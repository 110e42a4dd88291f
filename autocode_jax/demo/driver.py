"""The embedded default: the paper's comparison on the synthetic task, small enough for a CPU.

1. Build the task's tokenizer from its training problems into --tokenizer_dir (kept if there).
2. Warm-start a small random model by SFT on the mixed plain / code corpus (run_dir/warm), so
   that it can do both and, under the plain prompt, uses code in a `corpus_code_share` of
   its answers whatever the problem.
3. From that checkpoint, run each method (run_dir/<method>), evaluating every iteration in the
   three prompt modes: EM and the on-policy RL baseline with the same rollout budget per query
   (EM's K per probe x 2 probes = RL's 2K), and SFT on the warm-start corpus continued for EM's
   number of updates (no rollouts).
4. Summarise per method and iteration: accuracy per mode, selection accuracy, code-invocation
   rate, updates and rollouts consumed (summary.md, summary.json), and the same by task family
   (families.json); plots comparison.png (Fig. 4: every method's auto accuracy against rollouts
   consumed), curves_<method>.png, invocation_hist.png (greedy eval) and
   invocation_hist_sampled.png (the E-step's sampled rollouts, first and last iteration).
Every phase is an ordinary run of em.loop, so the whole demo resumes like one.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from autocode_jax import flagging
from autocode_jax.data import synthetic
from autocode_jax.data.synthetic.tokenizer import build_tokenizer
from autocode_jax.em import mstep
from autocode_jax.em.config import RunConfig
from autocode_jax.em.metrics import read_metrics
from autocode_jax.eval import report
from autocode_jax.files import write_json
from autocode_jax.flagging import ConfigError, option
from autocode_jax.grading.metrics import autocode_analysis
from autocode_jax.training.step import LossConfig

METHODS = ("em", "rl", "sft")


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  """The demo's own settings (flags beside RunConfig's): the methods run from the warm start,
  and the SFT warm start itself (its learning rate decays by cosine to a tenth)."""
  demo_methods: tuple[str, ...] = option(METHODS, "methods run from the warm start (em, rl, sft)")
  demo_warm_queries: int = option(2000, "synthetic problems of the SFT warm start")
  demo_warm_epochs: int = option(3, "passes of the warm start over them")
  demo_warm_learning_rate: float = option(3e-3, "peak learning rate of the warm start")
  demo_warm_batch_size: int = option(32, "examples per warm-start update")
  demo_vocab_size: int = option(512, "vocabulary of the task's tokenizer")

  def __post_init__(self):
    if not self.demo_methods or any(m not in METHODS for m in self.demo_methods):
      raise ConfigError("demo_methods", f"expected a list from {METHODS} "
                        f"(got {self.demo_methods!r})")
    for f in ("demo_warm_queries", "demo_warm_epochs", "demo_warm_batch_size", "demo_vocab_size"):
      if getattr(self, f) <= 0:
        raise ConfigError(f, f"must be positive (got {getattr(self, f)!r})")
    if not self.demo_warm_learning_rate > 0:
      raise ConfigError("demo_warm_learning_rate", "must be positive")


def define_flags(fv) -> None:
  """--demo and the DemoConfig flags (beside em.flags.define_flags)."""
  from absl import flags
  flagging.define_flags(DemoConfig, fv)
  flags.DEFINE_bool("demo", False, "the embedded CPU demo: warm start, then EM and RL, compared",
                    flag_values=fv)


def demo_config(fv) -> DemoConfig:
  return flagging.from_flags(DemoConfig, fv)


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
      branching=False, loss=LossConfig(),  # sft's loss, kind set by RunConfig: no KL or entropy
      optimizer=dataclasses.replace(cfg.optimizer, learning_rate=demo.demo_warm_learning_rate,
                                    lr_schedule="cosine", warmup_steps=min(20, steps - 1),
                                    total_steps=steps, end_lr_ratio=0.1))
  out = {"warm": warm}
  hf = os.path.join(warm.run_dir, "hf_policy")
  for m in demo.demo_methods:
    common = dict(run_dir=os.path.join(root, m), algorithm=m, init_from=hf, model_preset="",
                  tokenizer_dir=tok)
    if m == "em":
      out[m] = dataclasses.replace(cfg, **common)
    elif m == "rl":
      out[m] = dataclasses.replace(cfg, **common, k=2 * cfg.k, branching=False)
    else:  # EM's updates per iteration: m_step_epochs passes of its D_train (M per query)
      em_steps = mstep.steps_per_epoch(cfg.queries_per_iteration * cfg.m_effective,
                                       cfg.train_batch_size)
      examples = 2 * cfg.queries_per_iteration  # the corpus has two per problem
      bs = -(-examples // em_steps)
      out[m] = dataclasses.replace(cfg, **common, branching=False, train_batch_size=bs,
                                   micro_batch_size=0, loss=LossConfig())
  return out


def budget(run_dir: str) -> dict[int, tuple[int, int]]:
  """iteration -> (updates, rollouts consumed) after it, from a run's metrics.jsonl (the train
  step of its evaluation; the E-steps' rollouts so far, a resumed E-step counted once)."""
  rollouts = {m["iteration"]: m.get("rollouts", 0) for m in read_metrics(run_dir, "estep")}
  out = {}
  for m in read_metrics(run_dir, "eval"):
    it = m["iteration"]
    out[it] = (m["step"], int(sum(v for i, v in rollouts.items() if i <= it)))
  return out


def summary_rows(phases: dict[str, RunConfig]) -> list[dict]:
  """One row per (method, iteration) with an evaluation; the warm start is iteration 0, at 0
  updates and 0 rollouts."""
  rows = []
  warm = report.training_curves(phases["warm"].run_dir, os.path.join(
      phases["warm"].run_dir, "curves.png"))
  start = warm[max(warm)] if warm else None
  for name, cfg in phases.items():
    if name == "warm":
      continue
    by_it = report.training_curves(cfg.run_dir, os.path.join(os.path.dirname(cfg.run_dir),
                                                             f"curves_{name}.png"))
    spent = budget(cfg.run_dir)
    for it, a in [(0, start)] + [(i + 1, by_it[i]) for i in sorted(by_it)]:
      if a is not None:
        updates, rollouts = spent.get(it - 1, (0, 0))
        rows.append({"method": name, "iteration": it, "updates": updates, "rollouts": rollouts,
                     **{f"{m}_acc": v for m, v in a["accuracy"].items()},
                     "selection_acc": a.get("selection_accuracy"),
                     "selection_queries": a.get("selection_queries"),
                     "invocation_rate": a["code_rate"].get("auto"),
                     "union_bound": a.get("union_bound"),
                     "decided_code_acc": a.get("decided_code_accuracy"),
                     "code_there_acc": a.get("code_mode_accuracy_there"),
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
    if name == "warm":
      continue
    by_it = {}
    for m in read_metrics(cfg.run_dir, "estep"):
      if "code_rate_hist" in m:
        by_it[m["iteration"]] = m["code_rate_hist"]  # a resumed E-step: its last record
    its = sorted(by_it)
    for i in its[:1] + its[1:][-1:]:
      out[f"{name} E-step {i + 1}" + (" (warm start)" if i == its[0] else "")] = by_it[i]
  return out


NAMES = {"em": "EM (AutoCode4Math)", "rl": "SFT+RL (on-policy GRPO)",
         "sft": "SFT continued (no rollouts)"}


def comparison_points(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
  """Fig. 4's points: method -> (rollouts consumed, auto accuracy %) per iteration, the warm
  start at 0. SFT consumes none: its points sit at the rollouts EM had consumed after the same
  number of updates, so that the curves compare at equal training."""
  em_x = {r["iteration"]: r["rollouts"] for r in rows if r["method"] == "em"}
  series = {}
  for r in rows:
    x = r["rollouts"] if r["method"] != "sft" else em_x.get(r["iteration"], r["rollouts"])
    series.setdefault(NAMES.get(r["method"], r["method"]), []).append((x, 100 * r["auto_acc"]))
  return series


def verdict(rows: list[dict]) -> str:
  """One line: every method's auto accuracy at its last iteration, and EM's lead over RL."""
  last = {r["method"]: r for r in rows}
  parts = [f"{NAMES.get(m, m)} {100 * r['auto_acc']:.1f}" for m, r in last.items()]
  line = "Last iteration, auto accuracy: " + ", ".join(parts)
  if "em" in last and "rl" in last:
    line += f" (EM - RL: {100 * (last['em']['auto_acc'] - last['rl']['auto_acc']):+.1f})"
  return line + "\n"


def markdown(rows: list[dict], cols=("method", "iteration", "updates", "rollouts", "cot_acc",
                                     "code_acc", "auto_acc", "union_bound", "selection_acc",
                                     "invocation_rate")) -> str:
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
  table = (verdict(rows) + "\n" + markdown(rows)
           + "\nBy family (warm start, and each method's last iteration):\n\n" + markdown(
               families, ("stage", "family", "winner", "cot_acc", "code_acc", "auto_acc",
                          "invocation_rate")))
  with open(os.path.join(cfg.run_dir, "summary.md"), "w") as f:
    f.write(table)
  write_json(os.path.join(cfg.run_dir, "summary.json"), rows)
  write_json(os.path.join(cfg.run_dir, "families.json"), families)
  hists = {}
  for r in rows:
    if r["invocation_hist"] and (r["iteration"] == 0 or r is _last(rows, r["method"])):
      hists["warm start" if r["iteration"] == 0 else f"{r['method']} iter {r['iteration']}"] = (
          r["invocation_hist"])
  if hists:
    report.plot_invocation_hist(hists, os.path.join(cfg.run_dir, "invocation_hist.png"),
                                "code-invocation rate per query (auto, greedy)")
  share = f"{100 * cfg.corpus_code_share:.0f}%"
  report.plot_series({"": comparison_points(rows)}, os.path.join(cfg.run_dir, "comparison.png"),
                     xlabel="rollouts consumed", ylabel="auto accuracy (%)",
                     title=f"EM vs SFT+RL vs SFT from one warm start (plain-prompt code share "
                     f"{share}), seed {cfg.seed}")
  sampled = sampled_hists(phases)
  if sampled:
    report.plot_invocation_hist(sampled, os.path.join(cfg.run_dir, "invocation_hist_sampled.png"),
                                "code-invocation rate per training query (T=1)")
  log(table)
  return {"rows": rows, "finals": finals}


def _last(rows, method):
  mine = [r for r in rows if r["method"] == method]
  return mine[-1] if mine else None


def sweep_table(results: list[dict]) -> str:
  """One line per (code share, seed) and a mean per share: each method's auto accuracy at its
  last iteration; EM's union bound, other modes, selection accuracy, and the accuracy of its
  `auto` code (the samples that ran code) beside the `code` mode's on the same problems; and
  the checks of issue 36: EM `auto` within 5 points of its union bound, EM - RL >= 0, EM
  selection >= 85%, EM auto above its cot and code; on the mean line, EM - RL >= 10 points."""
  cols = ("code share", "seed", "warm auto", "warm code rate", "EM auto", "EM union", "EM cot",
          "EM code", "EM sel", "EM code rate", "EM auto's code", "code mode there", "RL auto",
          "RL code rate", "SFT auto", "EM - RL", "checks")
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  pct = lambda v: "-" if v is None else f"{100 * v:.1f}"
  at_least = lambda v, bound: round(100 * v, 1) >= bound  # as the table prints it
  by_share: dict = {}
  for res in results:
    rows = res["rows"]
    warm, em, rl, sft = (next((r for r in rows if r["iteration"] == 0), None),
                         _last(rows, "em"), _last(rows, "rl"), _last(rows, "sft"))
    vals = {"warm auto": warm and warm["auto_acc"], "warm code rate": warm and
            warm["invocation_rate"], "EM auto": em and em["auto_acc"],
            "EM union": em and em.get("union_bound"),
            "EM cot": em and em["cot_acc"], "EM code": em and em["code_acc"],
            "EM sel": em and em["selection_acc"], "EM code rate": em and em["invocation_rate"],
            "EM auto's code": em and em.get("decided_code_acc"),
            "code mode there": em and em.get("code_there_acc"),
            "RL auto": rl and rl["auto_acc"], "RL code rate": rl and rl["invocation_rate"],
            "SFT auto": sft and sft["auto_acc"],
            "EM - RL": em and rl and em["auto_acc"] - rl["auto_acc"]}
    checks = []
    if vals["EM union"] is not None:
      checks.append("near union" if at_least(vals["EM auto"] - vals["EM union"], -5)
                    else "under union")
    if em and rl:
      checks.append("EM >= RL" if at_least(vals["EM - RL"], 0) else "EM < RL")
    if em:
      checks.append("sel" if (em["selection_acc"] or 0) >= 0.85 else "no sel")
      checks.append("auto>both" if em["auto_acc"] > max(em["cot_acc"], em["code_acc"])
                    else "auto<=mode")
    by_share.setdefault(res["code_share"], []).append(vals)
    lines.append("| " + " | ".join([f"{res['code_share']:g}", str(res["seed"])] +
                                    [pct(vals[c]) for c in cols[2:-1]] + [", ".join(checks)])
                 + " |")
  for share, vs in by_share.items():
    mean = lambda c: (None if any(v[c] is None for v in vs) else
                      sum(v[c] for v in vs) / len(vs))
    lead = mean("EM - RL")
    check = "" if lead is None else ("mean lead" if at_least(lead, 10) else "no mean lead")
    lines.append("| " + " | ".join([f"{share:g}", "mean"] + [pct(mean(c)) for c in cols[2:-1]]
                                   + [check]) + " |")
  return "\n".join(lines) + "\n"


def run_sweep(cfg: RunConfig, demo: DemoConfig, seeds, shares, log=print) -> list[dict]:
  """The demo's comparison for every (plain-prompt code share, seed), each a resumable demo in
  run_dir/share<s>_seed<n> sharing one tokenizer; writes run_dir/sweep.md, sweep.json and
  sweep.png (each method's auto accuracy against rollouts consumed, mean over seeds with the
  min-max band, one panel per share)."""
  os.makedirs(cfg.run_dir, exist_ok=True)
  results = []
  for share in shares:
    for seed in seeds:
      sub = dataclasses.replace(cfg, seed=seed, corpus_code_share=share,
                                run_dir=os.path.join(cfg.run_dir, f"share{share:g}_seed{seed}"))
      log(f"=== plain-prompt code share {share:g}, seed {seed}: {sub.run_dir}")
      results.append({"code_share": share, "seed": seed,
                      "rows": run_demo(sub, demo, log=log)["rows"]})
  table = sweep_table(results)
  with open(os.path.join(cfg.run_dir, "sweep.md"), "w") as f:
    f.write(table)
  write_json(os.path.join(cfg.run_dir, "sweep.json"), results)
  panels = {}
  for share in shares:
    per_seed = [comparison_points(r["rows"]) for r in results if r["code_share"] == share]
    series = {}
    for name in per_seed[0]:  # every seed's demo has the same iterations: average them in step
      steps = zip(*(pts[name] for pts in per_seed if name in pts))
      series[name] = [(float(np.mean([x for x, _ in v])), float(np.mean([y for _, y in v])),
                       min(y for _, y in v), max(y for _, y in v)) for v in steps]
    panels[f"plain-prompt code share {share:g}"] = series
  report.plot_series(panels, os.path.join(cfg.run_dir, "sweep.png"), xlabel="rollouts consumed",
                     ylabel="auto accuracy (%)",
                     title=f"auto accuracy from the warm start, mean over seeds {list(seeds)} "
                     "(band: min to max)")
  log(table)
  return results
