"""The E-step driver (METHOD.md, E-step): probe rollouts through the tool loop, grading, the
statistics of estep.py, the subsample into D_train, optional mid-reasoning branching; and the
`rl` and `sft` baselines' data, built from the same pieces.

D_train is written chunk by chunk: a chunk's trajectory records are appended to `dtrain.jsonl`,
then its per-query statistics to `queries.jsonl`. A query counts as done once its statistics
line is on disk; on resume, D_train records of queries without one (a chunk cut short) are
dropped and those queries rolled out again. Each rollout's seed is a function of (run seed,
iteration, query id, probe) only, so a query gets the same seed whichever host or chunk runs it.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import time
from typing import Callable, Sequence

import numpy as np

from autocode_jax.data.datasets import DATASETS
from autocode_jax.data.dtrain import (ROLE_CODES, TrainRecord, append_records, read_records,
                                     write_records)
from autocode_jax.data.prompts import CODE_PREFIX, build_prompt
from autocode_jax.data.records import Query, SftExample
from autocode_jax.em import estep
from autocode_jax.files import JsonlStore, read_jsonl
from autocode_jax.grading.grader import failure_counts
from autocode_jax.rollout.engine import SamplingParams, derive_seed
from autocode_jax.rollout.tool_loop import Request, Trajectory, run_tool_loop

_OUTPUT_BLOCK = re.compile(r"```output\n.*?```\n?", re.DOTALL)


@dataclasses.dataclass
class Explorer:
  """What an E-step needs: the engine, the sandbox, the tokenizer, a grader pool, the settings
  (an em.config.RunConfig) and the fence tokens (see rollout.tool_loop)."""
  engine: object
  sandbox: object
  tokenizer: object
  grader: object
  cfg: object
  fences: tuple[int, ...]
  stop_ids: tuple[int, ...]

  def sampling(self, **changes) -> SamplingParams:
    base = SamplingParams(temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                          max_tokens=self.cfg.max_tokens, n=self.cfg.k,
                          stop_token_ids=self.stop_ids)
    return dataclasses.replace(base, **changes)

  def request(self, q: Query, probe: str, iteration: int, mode: str = "auto") -> Request:
    prompt = build_prompt(q.problem, mode, probe, self.cfg.template, self.tokenizer)
    prefix = self.probe_prefix_ids() if prompt.prefix else ()
    return Request(q.id, tuple(self.tokenizer.encode(prompt.text)), prefix, probe,
                   seed=derive_seed(self.cfg.seed, iteration, q.id, probe, mode))

  def probe_prefix_ids(self) -> tuple[int, ...]:
    """The code_prefix probe's token ids: what its rollouts start with, and the decision P of
    the decision term (tokenised on its own, after the prompt)."""
    return tuple(self.tokenizer.encode(CODE_PREFIX))

  def grade(self, trajs: Sequence[Trajectory], queries: dict[str, Query]) -> None:
    """Sets each trajectory's reward (0/1), grading per source dataset's extraction rules, and
    its grade_failure when the grader timed out or failed (the reward is then 0)."""
    by_source = collections.defaultdict(list)
    for t in trajs:
      by_source[grading_dataset(queries[t.query_id].source)].append(t)
    from autocode_jax.grading.grader import grade_results
    for dataset, ts in by_source.items():
      grades = grade_results([t.text for t in ts], [queries[t.query_id].gold for t in ts],
                             dataset, timeout_s=self.cfg.grade_timeout_s, pool=self.grader)
      for t, g in zip(ts, grades):
        t.reward, t.grade_failure = float(g.correct), g.failure_kind


def stop_ids(tokenizer, model_config, template: str) -> tuple[int, ...]:
  """Tokens that end a response: the model's and the tokenizer's EOS, and <|im_end|> under the
  chat template."""
  ids = set(model_config.eos_token_ids)
  if tokenizer.eos_token_id is not None:
    ids.add(tokenizer.eos_token_id)
  if template == "chat":
    end = tokenizer.encode("<|im_end|>")
    if len(end) == 1:
      ids.add(end[0])
  return tuple(sorted(ids))


def end_id(tokenizer, template: str, stops: tuple[int, ...]) -> int:
  """The token that ends a written (SFT) response: <|im_end|> under chat, else the first stop."""
  if template == "chat":
    end = tokenizer.encode("<|im_end|>")
    if len(end) == 1:
      return end[0]
  return stops[0]


def make_tools(cfg):
  """The sandbox and the grader pool of a config with sandbox_workers, sandbox_timeout_s,
  sandbox_memory_mb, max_output_chars and grade_timeout_s (a RunConfig or an EvalConfig)."""
  from autocode_jax.grading.pool import GraderPool
  from autocode_jax.interpreter.sandbox import Sandbox
  sandbox = Sandbox(num_workers=cfg.sandbox_workers, timeout_s=cfg.sandbox_timeout_s,
                    memory_mb=cfg.sandbox_memory_mb, max_output_chars=cfg.max_output_chars)
  return sandbox, GraderPool(timeout_s=cfg.grade_timeout_s)


def make_vllm(cfg, model_dir: str):
  """A VllmEngine on a HF directory, from a config's dtype, seed and vllm_* fields."""
  from autocode_jax.rollout.vllm_engine import VllmEngine
  extra = {"kv_cache_memory_bytes": cfg.vllm_kv_cache_mb << 20} if cfg.vllm_kv_cache_mb else {}
  return VllmEngine(model_dir, dtype=cfg.dtype, seed=cfg.seed,
                    tensor_parallel_size=cfg.vllm_tensor_parallel,
                    gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                    max_model_len=cfg.vllm_max_model_len, enable_sleep_mode=cfg.vllm_sleep,
                    enforce_eager=cfg.vllm_enforce_eager, **extra)


def grading_dataset(source: str) -> str:
  """The extraction rules a query's answers are graded under (gsm8k_train grades as gsm8k)."""
  return DATASETS[source].gold_as or source if source in DATASETS else source


def to_record(t: Trajectory, iteration: int, **extra) -> TrainRecord:
  """A trajectory as a D_train record: token ids, roles (one letter per token: p/m/t), engine
  log-probs (to 6 decimals, as stored), label, reward, and what the caller adds (advantage,
  group, and for em s*, pi, Q and the decision tokens)."""
  return TrainRecord(query_id=t.query_id, probe=t.probe, iteration=iteration, seed=t.seed,
                     label=t.label, reward=t.reward, prompt_ids=t.prompt_ids,
                     token_ids=t.token_ids, roles="".join(ROLE_CODES[r] for r in t.roles),
                     logprobs=[round(x, 6) for x in t.logprobs], tool_statuses=t.tool_statuses,
                     stop_reason=t.stop_reason, text=t.text, **extra)


def advantages(rewards: Sequence[float], eps: float = 1e-6) -> np.ndarray:
  """A = (r - mean r) / (std r + eps) over one group (population std); 0 for equal rewards."""
  r = np.asarray(rewards, np.float64)
  return (r - r.mean()) / (r.std() + eps)


_FENCE = "```python"


def first_code_fence(tokenizer, token_ids: Sequence[int]) -> tuple[int, int] | None:
  """(start, end): token_ids[start:end] are the tokens of the first ```python fence (start: the
  token in which it begins; end: one past the token that completes it), or None."""
  text = tokenizer.decode(token_ids)
  at = text.find(_FENCE)
  if at < 0:
    return None

  def shortest(chars: int) -> int:  # smallest n with len(decode(ids[:n])) >= chars
    lo, hi = 0, len(token_ids)
    while lo < hi:
      mid = (lo + hi) // 2
      if len(tokenizer.decode(token_ids[:mid])) >= chars:
        hi = mid
      else:
        lo = mid + 1
    return lo

  return shortest(at + 1) - 1, shortest(at + len(_FENCE))


def _query_summary(q: Query, trajs: Sequence[Trajectory], probes: Sequence[str]) -> dict:
  by_probe = {p: [(t.label, t.reward) for t in trajs if t.probe == p] for p in probes}
  statuses = collections.Counter(s for t in trajs for s in t.tool_statuses)
  return {"query_id": q.id, "labels": {p: [l for l, _ in v] for p, v in by_probe.items()},
          "rewards": {p: [r for _, r in v] for p, v in by_probe.items()},
          "tool_statuses": dict(statuses),
          "grader_failures": failure_counts(t.grade_failure for t in trajs),
          "tokens": sum(sum(1 for r in t.roles if r == "model") for t in trajs)}


def curate_em(ex: Explorer, q: Query, trajs: list[Trajectory], iteration: int,
              rng: np.random.Generator) -> tuple[list[TrainRecord], dict]:
  """Steps 2-5 for one query: the statistics and the M subsampled trajectories as records."""
  vanilla = [(t.label, t.reward) for t in trajs if t.probe == "vanilla"]
  coded = [(t.label, t.reward) for t in trajs if t.probe == "code_prefix"]
  st = estep.query_stats(vanilla, coded, ex.cfg.alpha)
  picks = estep.subsample([t.label for t in trajs], st.s_star, ex.cfg.m_effective, rng)
  chosen = [trajs[i] for i in picks]
  adv = advantages([t.reward for t in chosen])
  common = {"pi1": st.pi1, "q": list(st.q), "s_star": list(st.s_star), "group": q.id}
  prefix = list(ex.probe_prefix_ids())
  records = [to_record(t, iteration, advantage=float(a), decision_ids=prefix, **common)
             for t, a in zip(chosen, adv)]
  summary = dict(_query_summary(q, trajs, ("vanilla", "code_prefix")), **common,
                 n_code_vanilla=st.n_code_vanilla, k=st.k)
  return records, summary


def curate_rl(ex: Explorer, q: Query, trajs: list[Trajectory], iteration: int,
              rng: np.random.Generator) -> tuple[list[TrainRecord], dict]:
  """On-policy RL (GRPO): D_train is every fresh `vanilla` rollout, grouped by query."""
  adv = advantages([t.reward for t in trajs])
  records = [to_record(t, iteration, advantage=float(a), group=q.id) for t, a in zip(trajs, adv)]
  labels = [t.label for t in trajs]
  summary = dict(_query_summary(q, trajs, ("vanilla",)), group=q.id,
                 pi1=estep.code_prior(labels), n_code_vanilla=int(sum(labels)), k=len(labels))
  return records, summary


def branch(ex: Explorer, q: Query, trajs: list[Trajectory], iteration: int,
           rng: np.random.Generator,
           queries: dict[str, Query]) -> tuple[list[TrainRecord], list[dict]]:
  """Mid-reasoning branching (METHOD.md, E-step step 6) for up to `branch_per_query` code
  trajectories of q: from (x, y<t), t the token where the first code block starts, roll out
  k_branch continuations with code allowed and k_branch with code fences banned; the prior at
  the branch point is the smoothed code rate of the allowed ones, Q(x, y<t, c) the mean reward
  per label, and s*, the subsample and the advantages follow as for a query. The context y<t
  becomes part of the branch records' prompt: only the continuations are trained on, and the
  branch's decision row is that context followed by the fence tokens that opened the original
  block (METHOD.md, Decision term)."""
  coded = [t for t in trajs if t.label == 1]
  if not coded:
    return [], []
  picks = rng.choice(len(coded), size=min(ex.cfg.branch_per_query, len(coded)), replace=False)
  records, summaries = [], []
  for j in sorted(int(i) for i in picks):
    t = coded[j]
    fence = first_code_fence(ex.tokenizer, t.token_ids)
    if fence is None or fence[0] == 0:
      continue
    at = fence[0]
    group = f"{q.id}#branch{j}"
    ctx = tuple(t.prompt_ids) + tuple(t.token_ids[:at])
    seed = derive_seed(ex.cfg.seed, iteration, group)
    budget = ex.cfg.max_tokens - at
    if budget <= 0:
      continue
    sp = ex.sampling(n=ex.cfg.k_branch, max_tokens=budget)
    allowed = run_tool_loop(ex.engine, ex.sandbox, ex.tokenizer,
                            [Request(group, ctx, (), "branch_code", seed)], sp,
                            max_tool_calls=ex.cfg.max_tool_calls, fence_ids=ex.fences)
    banned = run_tool_loop(ex.engine, ex.sandbox, ex.tokenizer,
                           [Request(group, ctx, (), "branch_plain", seed + 1)],
                           dataclasses.replace(sp, banned_token_ids=ex.fences),
                           max_tool_calls=0, fence_ids=ex.fences)
    conts = allowed + banned
    for c in conts:
      c.query_id = q.id
    ex.grade(conts, queries)
    pi1 = estep.code_prior([c.label for c in allowed])
    qv = estep.values([c.label for c in conts], [c.reward for c in conts])
    s_star = estep.reference_strategy(pi1, qv, ex.cfg.alpha)
    chosen = [conts[i] for i in estep.subsample([c.label for c in conts], s_star,
                                                ex.cfg.k_branch, rng)]
    adv = advantages([c.reward for c in chosen])
    common = {"pi1": pi1, "q": list(qv), "s_star": list(s_star), "group": group,
              "branch_at": at}
    fence_ids = list(t.token_ids[fence[0]:fence[1]])
    records += [to_record(c, iteration, advantage=float(a), decision_ids=fence_ids, **common)
                for c, a in zip(chosen, adv)]
    summaries.append(dict(common, query_id=q.id, rewards=[c.reward for c in conts],
                          labels=[c.label for c in conts],
                          grader_failures=failure_counts(c.grade_failure for c in conts)))
  return records, summaries


def sft_records(tokenizer, cfg, examples: Sequence[SftExample], iteration: int,
                end_id: int) -> list[TrainRecord]:
  """The `sft` baseline's D_train: each example's response under its mode's prompt, ended by
  `end_id`; an opening prefix is tokenised on its own, as the code_prefix probe's is, and a
  newline separates it from the response. ```output blocks in a response are tool tokens
  (tokenised on their own, out of the loss), the rest is model text."""
  out = []
  for ex in examples:
    q = ex.query
    if not ex.response:
      raise ValueError(f"sft: query {q.id} of {q.source} has no solution to train on")
    prompt = build_prompt(q.problem, ex.mode, "vanilla", cfg.template, tokenizer)
    ids = tokenizer.encode(ex.prefix) if ex.prefix else []  # as the probe tokenises it
    roles, pos = ["m"] * len(ids), 0
    text = ("\n" if ex.prefix else "") + ex.response.strip()
    for m in _OUTPUT_BLOCK.finditer(text):
      for piece, role in ((text[pos:m.start()], "m"), (m.group(0), "t")):
        toks = tokenizer.encode(piece) if piece else []
        ids += toks
        roles += [role] * len(toks)
      pos = m.end()
    toks = tokenizer.encode(text[pos:]) + [end_id]
    ids += toks
    roles += ["m"] * len(toks)
    out.append(TrainRecord(query_id=q.id, probe="sft", mode=ex.mode, iteration=iteration,
                           label=int("t" in roles), reward=1.0,
                           prompt_ids=tokenizer.encode(prompt.text), token_ids=ids,
                           roles="".join(roles), logprobs=[0.0] * len(ids), advantage=0.0,
                           group=q.id, tool_statuses=(), stop_reason="eos",
                           text=ex.prefix + text))
  return out


def done_queries(out_dir: str, shard: str) -> set[str]:
  return {r["query_id"] for r in read_jsonl(os.path.join(out_dir, f"queries{shard}.jsonl"))}


def _drop_unfinished(out_dir: str, shard: str, finished: set[str]) -> None:
  """Removes D_train records of queries whose chunk did not finish (rewrite, then rename)."""
  store = JsonlStore(os.path.join(out_dir, f"dtrain{shard}.jsonl"))
  records = read_records(store.path)
  keep = [r for r in records if r.query_id in finished]
  if len(keep) < len(records):
    write_records(store.path, keep)
  else:
    store.cut_torn_tail()


def run_estep(ex: Explorer, queries: Sequence[Query], iteration: int, out_dir: str,
              shard: str = "", on_chunk: Callable[[int, int], None] | None = None) -> None:
  """Rolls out, grades and curates `queries` (this host's share) into out_dir/dtrain{shard}.jsonl
  and out_dir/queries{shard}.jsonl, resuming after the last finished chunk. on_chunk(queries,
  rollouts) is called after each chunk is on disk."""
  os.makedirs(out_dir, exist_ok=True)
  finished = done_queries(out_dir, shard)
  _drop_unfinished(out_dir, shard, finished)
  dtrain = os.path.join(out_dir, f"dtrain{shard}.jsonl")
  stats = JsonlStore(os.path.join(out_dir, f"queries{shard}.jsonl"))
  todo = [q for q in queries if q.id not in finished]
  by_id = {q.id: q for q in queries}
  curate = {"em": curate_em, "rl": curate_rl}[ex.cfg.algorithm]
  for start in range(0, len(todo), ex.cfg.rollout_chunk):
    chunk = todo[start:start + ex.cfg.rollout_chunk]
    reqs = [ex.request(q, p, iteration) for q in chunk for p in ex.cfg.probes]
    t0 = time.perf_counter()
    trajs = run_tool_loop(ex.engine, ex.sandbox, ex.tokenizer, reqs, ex.sampling(),
                          max_tool_calls=ex.cfg.max_tool_calls, fence_ids=ex.fences)
    ex.grade(trajs, by_id)
    per_query = collections.defaultdict(list)
    for t in trajs:
      per_query[t.query_id].append(t)
    records, summaries = [], []
    for q in chunk:
      rng = np.random.default_rng([ex.cfg.seed, iteration, derive_seed(q.id)])
      recs, summary = curate(ex, q, per_query[q.id], iteration, rng)
      summary["seeds"] = {p: derive_seed(ex.cfg.seed, iteration, q.id, p, "auto")
                          for p in ex.cfg.probes}
      if ex.cfg.branching and iteration > 0:
        brecs, bsum = branch(ex, q, per_query[q.id], iteration, rng, by_id)
        recs += brecs
        summary["branches"] = bsum
      summary["elapsed_s"] = (time.perf_counter() - t0) / len(chunk)
      records += recs
      summaries.append(summary)
    append_records(dtrain, records)
    stats.append(summaries)  # the commit point of the chunk
    if on_chunk is not None:
      on_chunk(len(chunk), len(trajs))


def iteration_stats(summaries: Sequence[dict], records: Sequence[TrainRecord]) -> dict:
  """Per-iteration statistics: code-invocation rate per query (mean and histogram over 0..K
  vanilla rollouts), the distribution of s*(c=1|x) (mean and 10-bin histogram), tool statuses,
  grader timeouts and errors (branch continuations included), mean rewards by probe and by
  label, and the D_train label mix."""
  if not summaries:
    return {}
  out: dict = {"queries": len(summaries), "dtrain_size": len(records)}
  rates = [s["n_code_vanilla"] / s["k"] for s in summaries]
  k = summaries[0]["k"]
  out["code_rate_mean"] = float(np.mean(rates))
  out["code_rate_hist"] = np.bincount([s["n_code_vanilla"] for s in summaries],
                                      minlength=k + 1).tolist()
  if "s_star" in summaries[0]:
    s1 = [s["s_star"][1] for s in summaries]
    out["s_star1_mean"] = float(np.mean(s1))
    out["s_star1_hist"] = np.histogram(s1, bins=10, range=(0, 1))[0].tolist()
  statuses = collections.Counter()
  by = collections.defaultdict(list)
  for s in summaries:
    statuses.update(s["tool_statuses"])
    for probe, rewards in s["rewards"].items():
      by[f"reward/{probe}"] += rewards
      for l, r in zip(s["labels"][probe], rewards):
        by[f"reward/c{l}"].append(r)
  out["tool_statuses"] = dict(statuses)
  out["tool_calls"] = int(sum(statuses.values()))
  failures = collections.Counter()
  for s in summaries:
    for part in [s] + list(s.get("branches", ())):
      failures.update(part["grader_failures"])
  out["grader_timeouts"], out["grader_errors"] = failures["timeout"], failures["error"]
  for key, v in sorted(by.items()):
    out[key] = float(np.mean(v)) if v else None
  out["rollouts"] = int(sum(len(v) for s in summaries for v in s["rewards"].values()))
  out["reward_mean"] = float(np.mean([r for s in summaries for v in s["rewards"].values()
                                      for r in v]))
  out["dtrain_code_frac"] = float(np.mean([r.label for r in records])) if records else 0.0
  out["branches"] = int(sum(len(s.get("branches", ())) for s in summaries))
  return out
