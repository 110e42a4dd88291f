"""Evaluation metrics of METHOD.md (Evaluation) as pure functions of result rows: what
evaluation reports and what the training loop reports each iteration.

A row is one graded response: {"query_id", "mode" (cot | code | auto), "correct" (0/1),
"label" (1 if it executed code), "grader_failure" (None, 'timeout' or 'error')}; a query may
have several rows per mode (n samples).

- Pass@1 of a mode: per query the mean correctness over its samples (greedy: its one sample),
  averaged over queries.
- Union bound: the fraction of queries solved by `cot` or by `code`, a query counting as solved
  in a mode when at least half its samples there are correct (greedy: the sample is correct).
- Selection accuracy: over the queries solved by exactly one of `cot` / `code`, the mean over
  queries of the fraction of `auto` samples whose decision (label) picked that mode.
- Code-invocation rate per query: the fraction of its `auto` samples that executed code; its
  histogram over [0, 1] (Fig. 5 of the paper, one per training phase).
- Code once decided: over the queries on which some `auto` sample executed code, the mean over
  queries of those samples' correctness, beside the `code` mode's pass@1 on the same queries:
  whether the code the model writes when it chooses code is as good as the code it writes when
  asked to.
"""

from __future__ import annotations

import collections
from typing import Sequence

import numpy as np

from autocode_jax.grading.grader import failure_counts


def result_rows(trajectories: Sequence, tag: str) -> list[dict]:
  """A row per graded trajectory (rollout.session.RolloutSession.roll_out_modes): query_id,
  mode, sample, correct, label, tool calls, response tokens, grader_failure, and `tag` (the
  benchmark, or the iteration)."""
  return [{"query_id": t.query_id, "mode": t.mode, "sample": t.sample, "correct": int(t.reward),
           "label": t.label, "tool_calls": t.num_tool_calls, "tokens": len(t.token_ids),
           "grader_failure": t.grade_failure, "tag": tag} for t in trajectories]


def per_query(rows: Sequence[dict]) -> dict[tuple[str, str], dict]:
  """(query_id, mode) -> {"accuracy", "code_rate", "n"} over that query's samples in that mode."""
  groups = collections.defaultdict(list)
  for r in rows:
    groups[(r["query_id"], r["mode"])].append(r)
  return {k: {"accuracy": float(np.mean([r["correct"] for r in v])),
              "code_rate": float(np.mean([r["label"] for r in v])), "n": len(v)}
          for k, v in groups.items()}


def pass_at_1(rows: Sequence[dict], mode: str) -> float:
  accs = [v["accuracy"] for (_, m), v in per_query(rows).items() if m == mode]
  if not accs:
    raise ValueError(f"pass_at_1: no rows in mode {mode!r}")
  return float(np.mean(accs))


def autocode_analysis(rows: Sequence[dict], bins: int = 10) -> dict:
  """Accuracy and code rate per mode, the union bound, the selection accuracy (and how many
  queries it is over), the histogram of auto's per-query code-invocation rate, and how many
  rows the grader timed out or failed on (graded 0, so counted here)."""
  pq = per_query(rows)
  modes = sorted({m for _, m in pq})
  out: dict = {"accuracy": {m: pass_at_1(rows, m) for m in modes},
               "code_rate": {m: float(np.mean([v["code_rate"] for (_, mm), v in pq.items()
                                               if mm == m])) for m in modes}}
  queries = sorted({q for q, _ in pq})
  out["queries"] = len(queries)
  failures = failure_counts(r.get("grader_failure") for r in rows)  # absent: older rows
  out["grader_timeouts"], out["grader_errors"] = failures["timeout"], failures["error"]
  if "cot" in modes and "code" in modes:
    solved = lambda q, m: (q, m) in pq and pq[(q, m)]["accuracy"] >= 0.5
    out["union_bound"] = float(np.mean([solved(q, "cot") or solved(q, "code") for q in queries]))
    picks = []
    for q in queries:
      cot, code = solved(q, "cot"), solved(q, "code")
      if cot != code and (q, "auto") in pq:
        rate = pq[(q, "auto")]["code_rate"]  # fraction of auto samples that used code
        picks.append(rate if code else 1.0 - rate)
    out["selection_queries"] = len(picks)
    out["selection_accuracy"] = float(np.mean(picks)) if picks else None
  if "auto" in modes:
    out["invocation_hist"] = invocation_histogram(rows, bins=bins)
  if "auto" in modes and "code" in modes:
    decided = per_query([r for r in rows if r["mode"] == "auto" and r["label"]])
    there = [q for q, _ in sorted(decided) if (q, "code") in pq]
    out["decided_code_queries"] = len(there)
    out["decided_code_accuracy"] = (float(np.mean([decided[(q, "auto")]["accuracy"]
                                                   for q in there])) if there else None)
    out["code_mode_accuracy_there"] = (float(np.mean([pq[(q, "code")]["accuracy"]
                                                      for q in there])) if there else None)
  return out


def invocation_histogram(rows: Sequence[dict], mode: str = "auto", bins: int = 10) -> list[int]:
  """Counts of queries by their code-invocation rate in `mode`, over `bins` equal bins of
  [0, 1] (the last bin includes 1)."""
  rates = [v["code_rate"] for (_, m), v in per_query(rows).items() if m == mode]
  return np.histogram(rates, bins=bins, range=(0.0, 1.0))[0].tolist()


def grader_note(stats: dict) -> str:
  """' grader 2 timeouts 0 errors' from stats with grader_timeouts / grader_errors (an
  autocode_analysis or E-step statistics): responses graded 0 because the grader could not say."""
  return f" grader {stats['grader_timeouts']} timeouts {stats['grader_errors']} errors"
