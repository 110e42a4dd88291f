"""Tool-integrated generation: sample, run each closed ```python block in the sandbox, splice the
output in as its own tokens, continue (METHOD.md, Rollout format).

Token in, token out: the trajectory is exactly the token ids sampled, plus the tool output
tokenised on its own; nothing the model wrote is re-tokenised. Every response token has a role:
`prefix` (the code-probe prefix, not sampled), `model` (sampled; loss mask 1) or `tool`
(interpreter output; loss mask 0).

Engines stop on every token that contains a backtick, since any of them may complete a fence
(tokenizers split ``` in many ways, e.g. "``" + "`\n"). After such a stop, if the text now holds
more closed ```python blocks than were executed, the cells run; otherwise generation resumes.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

from autocode_jax.rollout.engine import Completion, RolloutEngine, SamplingParams, derive_seed

ROLES = ("prefix", "model", "tool")
_BLOCK = re.compile(r"```python[^\n]*\n(.*?)```", re.DOTALL)


@dataclasses.dataclass
class Trajectory:
  """One finished rollout. Response arrays ([R]) cover the tokens after the prompt."""
  query_id: str
  probe: str
  prompt_ids: list[int]
  token_ids: list[int] = dataclasses.field(default_factory=list)
  roles: list[str] = dataclasses.field(default_factory=list)
  logprobs: list[float] = dataclasses.field(default_factory=list)
  tool_statuses: list[str] = dataclasses.field(default_factory=list)
  stop_reason: str = ""
  text: str = ""
  reward: float | None = None
  seed: int | None = None  # the request's seed: with the sample index, it fixes the rollout
  grade_failure: str | None = None  # 'timeout' or 'error' when the grader could not say
  mode: str = "auto"  # the request's prompt mode (data.prompts.MODES)
  sample: int = 0  # which of the request's n rollouts

  @property
  def num_tool_calls(self) -> int:
    return len(self.tool_statuses)

  @property
  def label(self) -> int:
    """c = 1 iff the trajectory executed at least one python block."""
    return int(self.num_tool_calls > 0)

  def extend(self, ids: Sequence[int], role: str, logprobs: Sequence[float] | None = None):
    self.token_ids.extend(ids)
    self.roles.extend([role] * len(ids))
    self.logprobs.extend(logprobs if logprobs is not None else [0.0] * len(ids))


@dataclasses.dataclass(frozen=True)
class Request:
  """A prompt to roll out: its token ids, the probe prefix's token ids (empty for vanilla), and
  optionally its own seed: then its rollouts depend on that seed alone, not on which other
  requests share the call (the E-step seeds each query so that a split over hosts changes
  nothing); mode: the prompt mode it was built in, which its trajectories carry."""
  query_id: str
  prompt_ids: tuple[int, ...]
  prefix_ids: tuple[int, ...] = ()
  probe: str = "vanilla"
  seed: int | None = None
  mode: str = "auto"


def fence_token_ids(tokenizer) -> tuple[int, ...]:
  """Every token that may complete a code fence: those whose text contains a backtick."""
  return tuple(i for i in range(tokenizer.vocab_size) if "`" in tokenizer.decode([i]))


def code_cells(text: str) -> list[str]:
  """The python blocks of a response, in order."""
  return [m.group(1) for m in _BLOCK.finditer(text)]


def output_block(output: str, after: str) -> str:
  lead = "" if after.endswith("\n") else "\n"
  return f"{lead}```output\n{output.rstrip()}\n```\n"


def run_tool_loop(engine: RolloutEngine, sandbox, tokenizer, requests: Sequence[Request],
                  params: SamplingParams, *, max_tool_calls: int = 4,
                  fence_ids: Sequence[int] | None = None) -> list[Trajectory]:
  """Rolls out `params.n` trajectories per request. No model token is sampled once a response
  (prefix, model and tool tokens together) holds `params.max_tokens`; the last tool output may
  overshoot it."""
  fences = tuple(fence_token_ids(tokenizer) if fence_ids is None else fence_ids)
  seeded = {r.seed is not None for r in requests}
  if len(seeded) > 1:
    raise ValueError("run_tool_loop: either every request has a seed or none has")
  seeded = seeded == {True}
  trajs = [Trajectory(r.query_id, r.probe, list(r.prompt_ids), seed=r.seed, mode=r.mode,
                      sample=j) for r in requests for j in range(params.n)]
  reqs = [r for r in requests for _ in range(params.n)]
  sample = [j for _ in requests for j in range(params.n)]
  for t, r in zip(trajs, reqs):
    t.extend(r.prefix_ids, "prefix")
  active = list(range(len(trajs)))
  round_ = 0
  while active:
    budgets = {i: params.max_tokens - len(trajs[i].token_ids) for i in active}
    done_now = [i for i in active if budgets[i] <= 0]
    for i in done_now:
      trajs[i].stop_reason = "length"
    active = [i for i in active if budgets[i] > 0]
    if not active:
      break
    # One engine call for the rows that may still call tools and one for the rest, each with the
    # largest budget among them; a row's completion is then cut to its own budget (sampling is
    # causal, so what comes before the cut is unaffected).
    results = {}
    for allow in (True, False):
      sub = [i for i in active if (trajs[i].num_tool_calls < max_tool_calls) == allow]
      if not sub:
        continue
      sp = dataclasses.replace(
          params, n=1, max_tokens=max(budgets[i] for i in sub), seed=params.seed + 1000 * round_,
          stop_token_ids=tuple(params.stop_token_ids) + (fences if allow else ()))
      seeds = [derive_seed(reqs[i].seed, sample[i], round_) for i in sub] if seeded else None
      out = engine.generate([trajs[i].prompt_ids + trajs[i].token_ids for i in sub], sp,
                            seeds=seeds)
      for i, (comp,) in zip(sub, out):
        if len(comp.token_ids) > budgets[i]:
          comp = Completion(comp.token_ids[:budgets[i]], comp.logprobs[:budgets[i]], "length")
        results[i] = comp
    to_run, still = [], []
    for i in active:
      t, comp = trajs[i], results[i]
      t.extend(comp.token_ids, "model", comp.logprobs)
      t.stop_reason = comp.stop_reason
      last = comp.token_ids[-1] if comp.token_ids else None
      if comp.stop_reason == "eos" and last in fences:
        cells = code_cells(tokenizer.decode(t.token_ids))
        if len(cells) > t.num_tool_calls:
          to_run.append(i)
        else:
          still.append(i)  # a backtick that closed no block: keep going
    if to_run:
      texts = {i: tokenizer.decode(trajs[i].token_ids) for i in to_run}
      execs = sandbox.run_batch([code_cells(texts[i]) for i in to_run])
      for i, res in zip(to_run, execs):
        t = trajs[i]
        t.tool_statuses.append(res.status)
        t.extend(tokenizer.encode(output_block(res.output, texts[i])), "tool")
        still.append(i)
    active = sorted(still)
    round_ += 1
  for t in trajs:
    t.text = tokenizer.decode(t.token_ids)
  return trajs
