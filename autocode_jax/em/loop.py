"""The training loop of METHOD.md (EM loop) and its baselines: iterations of E-step (or the SFT
data), behaviour log-probs, M-step, checkpoint, HuggingFace export, engine reload and evaluation,
resumable after a kill at any point.

Run directory:
  config.json            the RunConfig; a resumed run must match it (see config.RESUMABLE_CHANGES)
  progress.json          the phases finished per iteration (written by process 0, atomically)
  checkpoints/<step>/    orbax train states, saved inside M-steps and at their end
  hf_policy/             the latest HuggingFace export (what vLLM serves)
  iterations/<i>/        dtrain.p<k>.jsonl, queries.p<k>.jsonl (per host k), behaviour.npz,
                         eval.p<k>.jsonl
  metrics.jsonl          every event; tensorboard/ when asked
  libraries.p<k>.log     (experiments/train.py without --verbose) the libraries' errors and
                         tracebacks, kept off the terminal (logs.divert)
Phases of iteration i: estep -> behaviour -> mstep -> export -> eval. A phase is redone after a
crash only from its last durable point: E-step chunks on disk are kept, an M-step restarts from
its last checkpoint, and a finished phase is never repeated.
"""

from __future__ import annotations

import math
import os
import time

import jax
import numpy as np

from autocode_jax.data.datasets import sample_queries, sft_examples
from autocode_jax.data.dtrain import TrainRecord, in_query_order, read_dtrain, write_records
from autocode_jax.data.sft import sft_records
from autocode_jax.em import explore, mstep
from autocode_jax.em.config import ConfigError, RunConfig, config_from_json, resume_conflicts
from autocode_jax.em.metrics import MetricsWriter
from autocode_jax.em.policy import Policy
from autocode_jax.files import read_json, read_shards, write_json, write_jsonl
from autocode_jax.grading.metrics import autocode_analysis, grader_note, result_rows
from autocode_jax.rollout import session as session_lib

PHASES = ("estep", "behaviour", "mstep", "export", "eval")


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


class Progress:
  """Which phases of which iteration are done. Every process keeps the same copy (they run the
  same control flow); process 0 persists it."""

  def __init__(self, path: str):
    self.path = path
    self.data = {"done": {}, "mstep_start": {}, "exported_step": None}
    if os.path.exists(path):
      self.data = read_json(path)

  def done(self, iteration: int, phase: str) -> bool:
    return phase in self.data["done"].get(str(iteration), [])

  def mark(self, iteration: int, phase: str, **extra) -> None:
    self.data["done"].setdefault(str(iteration), []).append(phase)
    for k, v in extra.items():
      if isinstance(self.data.get(k), dict):
        self.data[k][str(iteration)] = v
      else:
        self.data[k] = v
    _barrier(f"progress-{iteration}-{phase}")
    if jax.process_index() == 0:
      write_json(self.path, self.data)


def iteration_plan(num_queries: int, per_iteration: int, epochs: int) -> int:
  """Iterations so that `epochs` passes over the queries are made, `per_iteration` at a time."""
  return math.ceil(num_queries * epochs / per_iteration)


def iteration_queries(queries: list, iteration: int, per_iteration: int, seed: int) -> list:
  """The queries of an iteration: the next `per_iteration` of the stream that concatenates a
  seeded shuffle of the query set per epoch."""
  n = len(queries)
  out = []
  for pos in range(iteration * per_iteration, (iteration + 1) * per_iteration):
    epoch, i = divmod(pos, n)
    order = np.random.default_rng([seed, 7919, epoch]).permutation(n)
    out.append(queries[order[i]])
  return out


def _prepare_run_dir(cfg: RunConfig) -> None:
  path = os.path.join(cfg.run_dir, "config.json")
  if jax.process_index() == 0:
    os.makedirs(cfg.run_dir, exist_ok=True)
  _barrier("run-dir")
  if os.path.exists(path):
    try:
      saved = config_from_json(read_json(path))
    except ConfigError as e:
      raise ConfigError("run_dir", f"{path} was written by another version ({e}); use a new "
                        "run_dir") from None
    diff = resume_conflicts(saved, cfg)
    if diff:
      raise ConfigError(diff[0].split(":")[0], f"{cfg.run_dir} holds a run with other settings; "
                        "use a new run_dir or the same flags. Differences: " + "; ".join(diff))
  _barrier("config-check")
  if jax.process_index() == 0 and not os.path.exists(path):
    write_json(path, cfg.to_json())


class _Bar:
  """tqdm on process 0 when progress bars are on; a no-op otherwise."""

  def __init__(self, enabled: bool, **kwargs):
    self._bar = None
    if enabled and jax.process_index() == 0:
      from tqdm import tqdm
      self._bar = tqdm(dynamic_ncols=True, **kwargs)

  def update(self, n: int, **postfix) -> None:
    if self._bar is not None:
      self._bar.update(n)
      if postfix:
        self._bar.set_postfix(postfix, refresh=False)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


class Runner:
  """One run: builds the pieces lazily (no sandbox for sft without eval, no engine before it is
  needed) and walks the iterations."""

  def __init__(self, cfg: RunConfig, log=print):
    from autocode_jax.models.tokenizer import load_tokenizer
    self.cfg, self.log = cfg, log
    self.pid, self.nproc = jax.process_index(), jax.process_count()
    self.shard = f".p{self.pid}"
    _prepare_run_dir(cfg)
    self.tokenizer = load_tokenizer(cfg.tokenizer_dir or cfg.init_from)
    self.queries = load_queries(cfg, cfg.train_set, cfg.num_queries, "num_queries", "train")
    self.eval_queries = (load_queries(cfg, cfg.eval_set, cfg.eval_size, "eval_size", "eval")
                         if cfg.eval_set else [])
    self.num_iterations = iteration_plan(len(self.queries), cfg.queries_per_iteration, cfg.epochs)
    self.policy = Policy.build(cfg, self.tokenizer)
    from autocode_jax.training.checkpoint import Checkpointer
    self.ckpt = Checkpointer(os.path.join(cfg.run_dir, "checkpoints"), save_every=cfg.save_every,
                             keep=cfg.keep_checkpoints)
    if self.ckpt.latest_step() is not None:
      self.policy.state = self.ckpt.restore(None, self.policy.state)
    self.progress = Progress(os.path.join(cfg.run_dir, "progress.json"))
    self.metrics = MetricsWriter(cfg.run_dir, cfg.tensorboard)
    self.export_dir = os.path.join(cfg.run_dir, "hf_policy")
    self._session = None
    self._engine_step = None
    self.engine_updates = 0  # weight updates of the rollout engine after M-steps
    self.stop_ids = session_lib.stop_ids(self.tokenizer, self.policy.model_config, cfg.template)

  # -- pieces ------------------------------------------------------------------------------------

  def session(self) -> session_lib.RolloutSession:
    """The rollout session (engine, sandbox, grader), opened on first use; its engine then
    follows the policy."""
    cfg = self.cfg
    if self._session is None:
      if cfg.rollout.engine == "vllm":
        self._export()
      self._session = session_lib.open_session(
          cfg.rollout, self.tokenizer, self.policy.model_config, template=cfg.template,
          seed=cfg.seed, dtype=cfg.dtype,
          model=self.policy.model() if cfg.rollout.engine == "jax" else None,
          mesh=self.policy.mesh if self.nproc == 1 else None, pad_id=self.policy.pad_id,
          model_dir=self.export_dir, vllm_sleep=cfg.vllm_sleep)
      if cfg.rollout.engine == "jax" and self.nproc > 1:
        self._session.engine.update(self.policy.local_params())
      self._engine_step = self.policy.step
    elif self._engine_step != self.policy.step:
      engine = self._session.engine
      if cfg.rollout.engine == "jax":
        engine.update(self.policy.local_params())
      else:
        self._export()
        if cfg.vllm_sleep:
          engine.wake_up()
        engine.update_weights(self.export_dir)
      self._engine_step = self.policy.step
      self.engine_updates += 1
    return self._session

  def _export(self) -> None:
    """The HuggingFace export of the current policy, unless it is already on disk: in the
    compute dtype (what the trainer's forward uses: a bf16 policy with fp32 master weights is
    exported in bf16, half the bytes), one directory replaced whole each time."""
    exported = self.progress.data.get("exported_step")
    if exported == self.policy.step and os.path.isdir(self.export_dir):
      return
    from autocode_jax.models.hf import save_pretrained
    tok_dir = self.cfg.tokenizer_dir or self.cfg.init_from
    save_pretrained(self.policy.model(), self.export_dir, tokenizer_dir=tok_dir,
                    dtype=self.cfg.dtype)
    _barrier("export")
    self.progress.data["exported_step"] = self.policy.step
    if self.pid == 0:
      write_json(self.progress.path, self.progress.data)

  def close(self) -> None:
    if self._session is not None:
      self._session.close()
    self.ckpt.close()
    self.metrics.close()

  # -- phases ------------------------------------------------------------------------------------

  def _estep(self, it: int, it_dir: str, queries: list) -> dict:
    cfg = self.cfg
    mine = queries[self.pid::self.nproc]
    t0 = time.perf_counter()
    if cfg.algorithm == "sft":
      path = os.path.join(it_dir, f"dtrain{self.shard}.jsonl")
      recs = sft_dtrain(cfg, self.tokenizer, mine, it, self.stop_ids)
      write_records(path, recs)
    else:
      session = self.session()
      total = len(mine) * cfg.k * len(cfg.probes)
      bar = _Bar(cfg.progress, total=total, desc=f"iter {it} E-step", unit="rollout")
      explore.run_estep(session, cfg, mine, it, it_dir, self.shard,
                        on_chunk=lambda nq, nr: bar.update(nr))
      bar.close()
    _barrier(f"estep-{it}")
    records = read_dtrain(it_dir)
    stats = {}
    if cfg.algorithm != "sft":
      stats = explore.iteration_stats(read_shards(it_dir, "queries"), records)
    stats["seconds"] = time.perf_counter() - t0
    if stats.get("rollouts"):
      stats["rollouts_per_s"] = stats["rollouts"] / stats["seconds"]
    return stats

  def _evaluate(self, it: int, it_dir: str) -> dict:
    cfg = self.cfg
    session = self.session()
    mine = self.eval_queries[self.pid::self.nproc]
    trajs = session.roll_out_modes(mine, cfg.eval_modes,
                                   max_tokens=cfg.eval_max_tokens or cfg.max_tokens) if mine else []
    rows = result_rows(trajs, tag=f"iter{it}")
    path = os.path.join(it_dir, f"eval{self.shard}.jsonl")
    write_jsonl(path, rows)
    _barrier(f"eval-{it}")
    return autocode_analysis(read_shards(it_dir, "eval"))

  def _mstep(self, it: int, records: list, behaviour: list) -> dict:
    cfg = self.cfg
    start = self.progress.data["mstep_start"][str(it)]
    t0, done0 = time.perf_counter(), self.policy.step
    total = cfg.m_step_epochs * mstep.steps_per_epoch(len(records), cfg.train_batch_size)
    bar = _Bar(cfg.progress, total=total, initial=done0 - start, desc=f"iter {it} M-step",
               unit="step")
    last = {}

    def on_step(step, m):
      last.update(m)
      bar.update(1, loss=f"{m['loss']:.4f}")
      if step % cfg.log_every == 0:
        self.metrics.write("mstep", step, m, iteration=it)

    mstep.run_mstep(self.policy, records, behaviour, it, start, self.ckpt, on_step)
    bar.close()
    secs = time.perf_counter() - t0
    steps = self.policy.step - done0
    return dict(last, steps=steps, steps_per_s=steps / secs if secs else 0.0)

  def run(self) -> dict:
    cfg, summary = self.cfg, {}
    for it in range(self.num_iterations):
      if all(self.progress.done(it, p) for p in PHASES):
        continue
      it_dir = os.path.join(cfg.run_dir, "iterations", f"{it:04d}")
      if self.pid == 0:
        os.makedirs(it_dir, exist_ok=True)
      _barrier(f"iter-dir-{it}")
      queries = iteration_queries(self.queries, it, cfg.queries_per_iteration, cfg.seed)
      line = {"iteration": it}
      if not self.progress.done(it, "estep"):
        stats = self._estep(it, it_dir, queries)
        self.metrics.write("estep", self.policy.step, stats, iteration=it)
        self.progress.mark(it, "estep")
        line["estep"] = stats
      records = in_query_order(read_dtrain(it_dir), queries)
      if cfg.drop_uniform_groups and cfg.algorithm != "sft":
        records = _drop_uniform(records)
      behaviour_path = os.path.join(it_dir, "behaviour.npz")
      if not self.progress.done(it, "behaviour"):
        if cfg.rollout.engine == "vllm" and cfg.vllm_sleep and self._session is not None:
          self._session.engine.sleep()
        t0 = time.perf_counter()
        behaviour = self.policy.behaviour_logprobs(records) if cfg.algorithm != "sft" else [
            np.zeros(len(r.token_ids), np.float32) for r in records]
        if self.pid == 0:
          mstep.save_behaviour(behaviour_path, behaviour)
        info = mstep.mismatch(records, behaviour) if cfg.algorithm != "sft" else {}
        info["seconds"] = time.perf_counter() - t0
        self.metrics.write("behaviour", self.policy.step, info, iteration=it)
        self.progress.mark(it, "behaviour", mstep_start=self.policy.step)
        line["behaviour"] = info
      else:
        behaviour = mstep.load_behaviour(behaviour_path)
      if not self.progress.done(it, "mstep"):
        line["mstep"] = self._mstep(it, records, behaviour)
        self.progress.mark(it, "mstep")
      if not self.progress.done(it, "export"):
        if cfg.export_hf:
          self._export()
        self.progress.mark(it, "export")
      if not self.progress.done(it, "eval"):
        if self.eval_queries and ((it + 1) % cfg.eval_every == 0 or it + 1 == self.num_iterations):
          acc = self._evaluate(it, it_dir)
          self.metrics.write("eval", self.policy.step, acc, iteration=it)
          line["eval"] = acc
        self.progress.mark(it, "eval")
      line["engine_updates"] = self.engine_updates
      self.metrics.write("iteration", self.policy.step, line, iteration=it)
      self.log(summary_line(it, self.num_iterations, line))
      summary = line
    return summary


def load_queries(cfg: RunConfig, name: str, n: int, field: str, split: str) -> list:
  """n queries of a registered dataset (data.sample_queries: read ones sampled by level with
  the run's seed, 0: all; generated ones made for `split`, "train" or "eval", under task_seed);
  a count it cannot serve is a ConfigError naming `field`."""
  try:
    return sample_queries(name, cfg.data_dir, n, split=split, seed=cfg.seed,
                          task_seed=cfg.task_seed)
  except ValueError as e:
    raise ConfigError(field, str(e)) from None


def sft_dtrain(cfg: RunConfig, tokenizer, queries: list, iteration: int,
               stops) -> list[TrainRecord]:
  """The sft baseline's D_train records of `queries`: their dataset's SFT examples
  (data.sft_examples: given solutions, or a generated dataset's corpus)."""
  examples = sft_examples(cfg.train_set, queries, n=cfg.num_queries, task_seed=cfg.task_seed,
                          seed=cfg.seed + iteration, code_share=cfg.corpus_code_share)
  return sft_records(tokenizer, cfg.template, examples, iteration,
                     session_lib.end_id(tokenizer, cfg.template, stops))


def _drop_uniform(records: list[TrainRecord]) -> list[TrainRecord]:
  groups: dict = {}
  for r in records:
    groups.setdefault(r.group, set()).add(r.reward)
  return [r for r in records if len(groups[r.group]) > 1]


def summary_line(it: int, total: int, line: dict) -> str:
  """One line per iteration: what the E-step found, the M-step did and the eval measured."""
  parts = [f"iter {it + 1}/{total}"]
  e = line.get("estep")
  if e:
    if "rollouts" in e:
      parts.append(f"E: {e['rollouts']} rollouts {e.get('rollouts_per_s', 0):.1f}/s "
                   f"reward {e['reward_mean']:.3f} code {e['code_rate_mean']:.2f}"
                   + (f" s*1 {e['s_star1_mean']:.2f}" if "s_star1_mean" in e else "")
                   + f" D_train {e['dtrain_size']}" + grader_note(e))
    else:
      parts.append(f"E: sft data {e.get('seconds', 0):.1f}s")
  b = line.get("behaviour")
  if b and "logprob_mismatch_mean" in b:
    parts.append(f"|dlogp| {b['logprob_mismatch_mean']:.2e} (max {b['logprob_mismatch_max']:.2e})")
  m = line.get("mstep")
  if m:
    parts.append(f"M: {m['steps']} steps {m['steps_per_s']:.2f}/s"
                 + (f" loss {m['loss']:.4f}" if "loss" in m else ""))
  ev = line.get("eval")
  if ev:
    parts.append("eval " + " ".join(f"{k} {v:.3f}" for k, v in ev["accuracy"].items())
                 + (f" sel {ev['selection_accuracy']:.3f}"
                    if ev.get("selection_accuracy") is not None else "") + grader_note(ev))
  return " | ".join(parts)


def run(cfg: RunConfig, log=print, digest: bool = False) -> dict:
  """Runs (or resumes) the training of `cfg`; returns the last iteration's summary, with the
  parameters' sha256 when `digest` (gathered to every host: for tests and small models)."""
  runner = Runner(cfg, log)
  try:
    summary = runner.run()
    if digest:
      summary["params_sha256"] = runner.policy.digest()
    summary["train_step"] = runner.policy.step
    summary["iterations"] = runner.num_iterations
    return summary
  finally:
    runner.close()
