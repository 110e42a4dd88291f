"""The E-step driver (METHOD.md, E-step): the probes' rollouts and their grading through a
rollout session (rollout.session), steps 2-5 per query and per branch point (estep.curate),
D_train records, optional mid-reasoning branching; and the `rl` baseline's data, from the same
pieces.

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
import time
from typing import Callable, Sequence

import numpy as np

from autocode_jax.data.dtrain import (ROLE_CODES, TrainRecord, append_records, read_records,
                                     write_records)
from autocode_jax.data.records import Query
from autocode_jax.em import estep
from autocode_jax.files import JsonlStore, read_jsonl
from autocode_jax.grading.grader import failure_counts
from autocode_jax.rollout.engine import derive_seed
from autocode_jax.rollout.session import RolloutSession
from autocode_jax.rollout.tool_loop import Request, Trajectory


def to_record(t: Trajectory, iteration: int, **extra) -> TrainRecord:
  """A trajectory as a D_train record: token ids, roles (one letter per token: p/m/t), engine
  log-probs (to 6 decimals, as stored), label, reward, and what the caller adds (advantage,
  group, and for em s*, pi, Q and the decision tokens)."""
  return TrainRecord(query_id=t.query_id, probe=t.probe, iteration=iteration, seed=t.seed,
                     label=t.label, reward=t.reward, prompt_ids=t.prompt_ids,
                     token_ids=t.token_ids, roles="".join(ROLE_CODES[r] for r in t.roles),
                     logprobs=[round(x, 6) for x in t.logprobs], tool_statuses=t.tool_statuses,
                     stop_reason=t.stop_reason, text=t.text, **extra)


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


def curate_query(session: RolloutSession, cfg, q: Query, trajs: list[Trajectory],
                 iteration: int, rng: np.random.Generator) -> tuple[list[TrainRecord], dict]:
  """Steps 2-5 for one query (estep.curate; the prior from its vanilla rollouts): its
  statistics and the M subsampled trajectories as records."""
  vanilla = [t.label for t in trajs if t.probe == "vanilla"]
  cur = estep.curate(vanilla, [t.label for t in trajs], [t.reward for t in trajs], cfg.alpha,
                     cfg.m_effective, rng)
  common = {"pi1": cur.pi1, "q": list(cur.q), "s_star": list(cur.s_star), "group": q.id}
  prefix = list(session.probe_prefix_ids())
  records = [to_record(trajs[i], iteration, advantage=a, decision_ids=prefix, **common)
             for i, a in zip(cur.picks, cur.advantages)]
  summary = dict(_query_summary(q, trajs, ("vanilla", "code_prefix")), **common,
                 n_code_vanilla=int(sum(vanilla)), k=len(vanilla))
  return records, summary


def curate_rl(session: RolloutSession, cfg, q: Query, trajs: list[Trajectory], iteration: int,
              rng: np.random.Generator) -> tuple[list[TrainRecord], dict]:
  """On-policy RL (GRPO): D_train is every fresh `vanilla` rollout, grouped by query."""
  adv = estep.advantages([t.reward for t in trajs])
  records = [to_record(t, iteration, advantage=float(a), group=q.id) for t, a in zip(trajs, adv)]
  labels = [t.label for t in trajs]
  summary = dict(_query_summary(q, trajs, ("vanilla",)), group=q.id,
                 pi1=estep.code_prior(labels), n_code_vanilla=int(sum(labels)), k=len(labels))
  return records, summary


@dataclasses.dataclass
class BranchPoint:
  """One branch point of a query (METHOD.md, E-step step 6): its group id, the context
  (x, y<t), t, the fence tokens that opened the original block, and its two requests."""
  query_id: str
  group: str
  at: int
  fence_ids: list[int]
  allowed: Request
  banned: Request


def branch_points(session: RolloutSession, cfg, q: Query, trajs: list[Trajectory],
                  iteration: int, rng: np.random.Generator) -> list[BranchPoint]:
  """Mid-reasoning branching, first half: up to `branch_per_query` code trajectories of q
  (drawn with rng), each branched at t, the token where its first code block starts: from
  (x, y<t), a request with code allowed and one with code fences banned, of the budget left
  after y<t (`branch` rolls them out)."""
  coded = [t for t in trajs if t.label == 1]
  if not coded:
    return []
  picks = rng.choice(len(coded), size=min(cfg.branch_per_query, len(coded)), replace=False)
  points = []
  for j in sorted(int(i) for i in picks):
    t = coded[j]
    fence = first_code_fence(session.tokenizer, t.token_ids)
    if fence is None or fence[0] == 0:
      continue
    at = fence[0]
    budget = cfg.max_tokens - at
    if budget <= 0:
      continue
    group = f"{q.id}#branch{j}"
    ctx = tuple(t.prompt_ids) + tuple(t.token_ids[:at])
    seed = derive_seed(cfg.seed, iteration, group)
    points.append(BranchPoint(
        q.id, group, at, list(t.token_ids[fence[0]:fence[1]]),
        Request(group, ctx, (), "branch_code", seed, max_tokens=budget),
        Request(group, ctx, (), "branch_plain", seed + 1, max_tokens=budget)))
  return points


def branch(session: RolloutSession, cfg, points: Sequence[BranchPoint],
           queries: dict[str, Query]) -> list[list[Trajectory]]:
  """Mid-reasoning branching, second half: every branch point's k_branch continuations with
  code allowed and k_branch with code fences banned (two tool-loop calls for all the points
  of a chunk), graded; per point, the allowed continuations then the banned ones."""
  if not points:
    return []
  sp = sampling(session, cfg, n=cfg.k_branch)
  golds = {p.group: queries[p.query_id] for p in points}  # requests carry the group id
  allowed = session.roll_out([p.allowed for p in points], sp, grade=golds)
  banned = session.roll_out([p.banned for p in points],
                            dataclasses.replace(sp, banned_token_ids=session.fences),
                            max_tool_calls=0, grade=golds)
  k = cfg.k_branch
  conts = [allowed[i * k:(i + 1) * k] + banned[i * k:(i + 1) * k] for i in range(len(points))]
  for p, c in zip(points, conts):
    for t in c:
      t.query_id = p.query_id
  return conts


def curate_branches(cfg, points: Sequence[BranchPoint], conts: Sequence[list[Trajectory]],
                    iteration: int, rng: np.random.Generator, q: Query
                    ) -> tuple[list[TrainRecord], list[dict]]:
  """Steps 2-5 at each branch point of q as for a query (estep.curate), the prior from its
  allowed continuations. The context y<t becomes part of the branch records' prompt: only the
  continuations are trained on, and the branch's decision row is that context followed by the
  fence tokens that opened the original block (METHOD.md, Decision term)."""
  records, summaries = [], []
  k = cfg.k_branch
  for p, c in zip(points, conts):
    cur = estep.curate([t.label for t in c[:k]], [t.label for t in c], [t.reward for t in c],
                       cfg.alpha, k, rng)
    common = {"pi1": cur.pi1, "q": list(cur.q), "s_star": list(cur.s_star), "group": p.group,
              "branch_at": p.at}
    records += [to_record(c[i], iteration, advantage=a, decision_ids=p.fence_ids, **common)
                for i, a in zip(cur.picks, cur.advantages)]
    summaries.append(dict(common, query_id=q.id, rewards=[t.reward for t in c],
                          labels=[t.label for t in c],
                          grader_failures=failure_counts(t.grade_failure for t in c)))
  return records, summaries


def sampling(session: RolloutSession, cfg, **changes):
  """The E-step's sampling parameters: K rollouts at the run's temperature, top-p and budget."""
  base = session.params(n=cfg.k, temperature=cfg.temperature, top_p=cfg.top_p,
                        max_tokens=cfg.max_tokens)
  return dataclasses.replace(base, **changes)


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


def run_estep(session: RolloutSession, cfg, queries: Sequence[Query], iteration: int,
              out_dir: str, shard: str = "",
              on_chunk: Callable[[int, int], None] | None = None) -> None:
  """Rolls out, grades and curates `queries` (this host's share) with `session` under `cfg` (an
  em.config.RunConfig, algorithm em or rl) into out_dir/dtrain{shard}.jsonl and
  out_dir/queries{shard}.jsonl, resuming after the last finished chunk. on_chunk(queries,
  rollouts) is called after each chunk is on disk."""
  os.makedirs(out_dir, exist_ok=True)
  finished = done_queries(out_dir, shard)
  _drop_unfinished(out_dir, shard, finished)
  dtrain = os.path.join(out_dir, f"dtrain{shard}.jsonl")
  stats = JsonlStore(os.path.join(out_dir, f"queries{shard}.jsonl"))
  todo = [q for q in queries if q.id not in finished]
  by_id = {q.id: q for q in queries}
  curate = {"em": curate_query, "rl": curate_rl}[cfg.algorithm]
  for start in range(0, len(todo), cfg.rollout_chunk):
    chunk = todo[start:start + cfg.rollout_chunk]
    reqs = [session.request(q, p, iteration) for q in chunk for p in cfg.probes]
    t0 = time.perf_counter()
    trajs = session.roll_out(reqs, sampling(session, cfg), grade=by_id)
    per_query = collections.defaultdict(list)
    for t in trajs:
      per_query[t.query_id].append(t)
    per_q = []
    for q in chunk:
      rng = np.random.default_rng([cfg.seed, iteration, derive_seed(q.id)])
      recs, summary = curate(session, cfg, q, per_query[q.id], iteration, rng)
      summary["seeds"] = {p: derive_seed(cfg.seed, iteration, q.id, p, "auto")
                          for p in cfg.probes}
      points = (branch_points(session, cfg, q, per_query[q.id], iteration, rng)
                if cfg.branching and iteration > 0 else None)
      per_q.append((q, rng, recs, summary, points))
    everything = [p for *_, points in per_q for p in points or ()]
    conts = iter(branch(session, cfg, everything, by_id))
    records, summaries = [], []
    for q, rng, recs, summary, points in per_q:
      if points is not None:
        brecs, bsum = curate_branches(cfg, points, [next(conts) for _ in points], iteration,
                                      rng, q)
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
