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

import concurrent.futures
import dataclasses
import re
import time
from typing import Sequence

from autocode_jax.rollout.engine import (GenerateBatch, RolloutEngine, SamplingParams,
                                         derive_seed)

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
  nothing); mode: the prompt mode it was built in, which its trajectories carry; max_tokens:
  its response budget in place of the sampling parameters' (a branch continues part of a
  response)."""
  query_id: str
  prompt_ids: tuple[int, ...]
  prefix_ids: tuple[int, ...] = ()
  probe: str = "vanilla"
  seed: int | None = None
  mode: str = "auto"
  max_tokens: int | None = None


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
                  fence_ids: Sequence[int] | None = None,
                  rounds: bool = False, cell_wait: float = 0.0,
                  on_done=None, wrap=None) -> list[Trajectory]:
  """Rolls out `params.n` trajectories per request. No model token is sampled once a response
  (prefix, model and tool tokens together) holds its request's max_tokens (else
  `params.max_tokens`); the last tool output may overshoot it.

  Each trajectory goes on its own over the engine's batch interface. By default over the
  engine's `rollout_batch`: a cell runs in the sandbox as soon as its block closes while the
  others decode, and the trajectory continues from its KV: on `JaxSampler` from its own slot
  (only the tool output is prefilled), on `VllmEngine` as a new request of its whole
  context that vLLM's prefix cache serves (`vllm_engine.VllmBatch`). With `rounds` (and on an
  engine with only `generate`, such as a scripted test engine) in synchronised rounds
  (`engine.GenerateBatch`: each round samples every waiting trajectory from its whole context,
  then its cells run): the old loop, no longer a setting, kept as the baseline of the tests
  and of benchmarks/tool_rollout_bench.py. Segment r of a seeded request's
  sample j has the key of derive_seed(seed, j, r) either way, so both give the same tokens.

  cell_wait (per trajectory only): before the engine decodes on, it waits for the cells in
  flight up to this share of its last call's time, so that their trajectories join the next
  decode call rather than hold their slots through it. 0 never waits: right where a step
  costs about the same for any number of busy slots (a GPU); on a CPU a step costs every
  slot and the cells need the same cores, and waiting is faster (benchmarks/
  tool_rollout_bench.py measures both). on_done(trajectory): called from the loop's thread as
  each trajectory ends, its text set, while the others go on (the session grades it there).
  wrap: a function of the batch interface returning another in its place (a benchmark
  scripts its workload with it)."""
  fences = tuple(fence_token_ids(tokenizer) if fence_ids is None else fence_ids)
  seeded = {r.seed is not None for r in requests}
  if len(seeded) > 1:
    raise ValueError("run_tool_loop: either every request has a seed or none has")
  seeded = seeded == {True}
  trajs = [Trajectory(r.query_id, r.probe, list(r.prompt_ids), seed=r.seed, mode=r.mode,
                      sample=j) for r in requests for j in range(params.n)]
  reqs = [r for r in requests for _ in range(params.n)]
  for t, r in zip(trajs, reqs):
    t.extend(r.prefix_ids, "prefix")

  def end(i: int) -> None:
    t = trajs[i]
    t.text = tokenizer.decode(t.token_ids)
    if on_done is not None:
      on_done(t)

  if trajs:
    _roll_out(engine, sandbox, tokenizer, trajs, reqs, seeded, params, fences, max_tool_calls,
              rounds, cell_wait, wrap, end)
  return trajs


def _roll_out(engine, sandbox, tokenizer, trajs, reqs, seeded, params, fences, max_tool_calls,
              rounds, cell_wait, wrap, end):
  """Each trajectory on its own over the engine's batch interface: `rollout_batch` (the
  sampler's slots, vLLM's engine), or rounds of `generate` calls (`GenerateBatch`)."""
  fence_set = set(fences)
  if hasattr(engine, "rollout_batch") and not rounds:
    batch = engine.rollout_batch(params, len(trajs),
                                 max(len(t.prompt_ids) + len(t.token_ids) for t in trajs),
                                 fence_ids=fences)
  else:
    batch = GenerateBatch(engine, params, fence_ids=fences, seeded=seeded)
  if wrap is not None:
    batch = wrap(batch)
  synchronous = getattr(batch, "synchronous", False)
  segment = [0] * len(trajs)
  running: dict[concurrent.futures.Future, tuple[int, str]] = {}

  def go_on(i: int, tokens: list[int] | None) -> None:
    """Samples trajectory i's next segment after `tokens` (None: the first, from its prompt)."""
    t = trajs[i]
    budget = (reqs[i].max_tokens or params.max_tokens) - len(t.token_ids)
    if budget <= 0:
      t.stop_reason = "length"
      if tokens is not None:
        batch.release(i)
      end(i)
      return
    seed = (derive_seed(reqs[i].seed, t.sample, segment[i]) if seeded
            else derive_seed(params.seed, i, segment[i]))
    allow = t.num_tool_calls < max_tool_calls
    if tokens is None:
      batch.submit(i, t.prompt_ids + t.token_ids, seed=seed, budget=budget, fences=allow)
    else:
      batch.resume(i, tokens, seed=seed, budget=budget, fences=allow)

  for i in range(len(trajs)):
    go_on(i, None)
  while batch.busy or running:
    start = time.perf_counter()
    stopped = batch.run() if batch.busy else []
    last = time.perf_counter() - start
    for i, comp in stopped:
      t = trajs[i]
      t.extend(comp.token_ids, "model", comp.logprobs)
      t.stop_reason = comp.stop_reason
      segment[i] += 1
      if comp.stop_reason == "eos" and comp.token_ids and comp.token_ids[-1] in fence_set:
        text = tokenizer.decode(t.token_ids)
        cells = code_cells(text)
        if len(cells) > t.num_tool_calls:
          running[sandbox.submit(cells)] = (i, text)
        else:
          go_on(i, [])  # a backtick that closed no block: keep going
      else:
        batch.release(i)
        end(i)
    if synchronous:  # rounds: every cell of this one, then the next
      finished = list(running)
      concurrent.futures.wait(finished)
    else:
      if running and cell_wait > 0 and batch.busy:
        concurrent.futures.wait(running, timeout=cell_wait * last)
      finished = [f for f in running if f.done()]
      if running and not finished and not batch.busy:  # nothing to decode: wait for a cell
        finished = list(concurrent.futures.wait(
            running, return_when=concurrent.futures.FIRST_COMPLETED).done)
    for f in finished:
      i, text = running.pop(f)
      res = f.result()
      t = trajs[i]
      t.tool_statuses.append(res.status)
      ids = tokenizer.encode(output_block(res.output, text))
      t.extend(ids, "tool")
      go_on(i, ids)
