"""Rollouts of a policy on queries in the prompt modes cot / code / auto (METHOD.md, Evaluation),
greedy or n samples, through the same tool loop and grader as training; eval.metrics turns the
rows into Pass@1 and the AutoCode analysis."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from autocode_jax.data.records import Query
from autocode_jax.rollout.tool_loop import run_tool_loop


def run_modes(ex, queries: Sequence[Query], modes: Sequence[str], max_tokens: int = 0,
              tag: str = "eval", n: int = 1, temperature: float = 0.0) -> list[dict]:
  """`n` rollouts per (query, mode) with `ex` (an em.explore.Explorer): greedy by default, or
  n samples at `temperature` (top-p 1; AIME / AMC: n=64, T=0.6). A row per rollout: query_id,
  mode, sample, correct, label (1 if it executed code), tool calls, response tokens,
  grader_failure ('timeout' / 'error' when the grader could not say; correct is then 0)."""
  if n > 1 and temperature == 0:
    raise ValueError(f"run_modes: n={n} greedy samples would all be equal; set a temperature")
  reqs = [dataclasses.replace(ex.request(q, "vanilla", 0, mode=m), probe=m)
          for m in modes for q in queries]
  params = ex.sampling(temperature=temperature, top_p=1.0, n=n,
                       max_tokens=max_tokens or ex.cfg.max_tokens)
  trajs = run_tool_loop(ex.engine, ex.sandbox, ex.tokenizer, reqs, params,
                        max_tool_calls=ex.cfg.max_tool_calls, fence_ids=ex.fences)
  ex.grade(trajs, {q.id: q for q in queries})
  return [{"query_id": t.query_id, "mode": t.probe, "sample": i % n, "correct": int(t.reward),
           "label": t.label, "tool_calls": t.num_tool_calls, "tokens": len(t.token_ids),
           "grader_failure": t.grade_failure, "tag": tag} for i, t in enumerate(trajs)]
