"""Greedy Pass@1 of a policy on queries in the prompt modes cot / code / auto (METHOD.md,
Evaluation), through the same tool loop and grader as training."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from autocode_jax.data.records import Query
from autocode_jax.rollout.tool_loop import run_tool_loop


def run_modes(ex, queries: Sequence[Query], modes: Sequence[str], max_tokens: int = 0,
              tag: str = "eval") -> list[dict]:
  """One greedy rollout per (query, mode) with `ex` (an em.explore.Explorer); a row per rollout:
  query_id, mode, correct, label (1 if it executed code), tool calls, response tokens."""
  reqs = [dataclasses.replace(ex.request(q, "vanilla", 0, mode=m), probe=m)
          for m in modes for q in queries]
  params = ex.sampling(temperature=0.0, n=1, max_tokens=max_tokens or ex.cfg.max_tokens)
  trajs = run_tool_loop(ex.engine, ex.sandbox, ex.tokenizer, reqs, params,
                        max_tool_calls=ex.cfg.max_tool_calls, fence_ids=ex.fences)
  ex.grade(trajs, {q.id: q for q in queries})
  return [{"query_id": t.query_id, "mode": t.probe, "correct": int(t.reward), "label": t.label,
           "tool_calls": t.num_tool_calls, "tokens": len(t.token_ids), "tag": tag}
          for t in trajs]


def accuracy_by_mode(rows: Sequence[dict]) -> dict:
  """{mode: {"accuracy", "code_rate", "n"}} over result rows."""
  out = {}
  for mode in sorted({r["mode"] for r in rows}):
    rs = [r for r in rows if r["mode"] == mode]
    out[mode] = {"accuracy": float(np.mean([r["correct"] for r in rs])),
                 "code_rate": float(np.mean([r["label"] for r in rs])), "n": len(rs)}
  return out
