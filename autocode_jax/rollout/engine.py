"""The rollout-engine interface: token ids in, token ids (with log-probs) out (METHOD.md)."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Protocol, Sequence

STOP_REASONS = ("stop", "eos", "length")


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """temperature: 0 is greedy. top_p: nucleus mass (1 = off). top_k: 0 = off.
  max_tokens: new tokens at most. stop: token-id sequences that end a completion (kept in its
  output). stop_token_ids: single tokens that end it (EOS; kept too). banned_token_ids: tokens
  never sampled (their logits are masked; the reported log-probs stay the raw ones). n:
  completions per prompt. seed: the same seed and inputs give the same completions; `generate`'s
  per-prompt `seeds`, when given, take its place."""
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  max_tokens: int = 256
  stop: tuple[tuple[int, ...], ...] = ()
  stop_token_ids: tuple[int, ...] = ()
  banned_token_ids: tuple[int, ...] = ()
  n: int = 1
  seed: int = 0

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature={self.temperature}: must be >= 0")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p={self.top_p}: must be in (0, 1]")
    if self.top_k < 0 or self.max_tokens <= 0 or self.n <= 0:
      raise ValueError("top_k must be >= 0, max_tokens and n positive")
    object.__setattr__(self, "stop", tuple(tuple(int(t) for t in s) for s in self.stop))
    if any(len(s) == 0 for s in self.stop):
      raise ValueError("stop: empty stop sequence")
    object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
    object.__setattr__(self, "banned_token_ids", tuple(int(t) for t in self.banned_token_ids))


@dataclasses.dataclass(frozen=True)
class Completion:
  """One sampled continuation: its token ids, the log-prob of each under the engine's raw
  (temperature 1, unfiltered) distribution, and why it stopped (one of STOP_REASONS)."""
  token_ids: tuple[int, ...]
  logprobs: tuple[float, ...]
  stop_reason: str


def derive_seed(*parts) -> int:
  """A 31-bit seed that is a stable function of `parts` (str / int), across runs and hosts."""
  digest = hashlib.blake2b("/".join(str(p) for p in parts).encode(), digest_size=8).digest()
  return int.from_bytes(digest, "little") % 2**31


class RolloutEngine(Protocol):
  def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
               seeds: Sequence[int] | None = None) -> list[list[Completion]]:
    """For each prompt (token ids), `params.n` completions. With `seeds` (one per prompt), a
    prompt's completions depend on its own seed only, not on the other prompts of the call."""


class ContextBatch:
  """What the batch interfaces that keep each trajectory's whole context share (`GenerateBatch`,
  `vllm_engine.VllmBatch`; `slots.SlotBatch` keeps KV instead): `slots.SlotBatch`'s
  submit / resume / release, with every token so far per trajectory (`context`) and the
  trajectories whose segment waits or runs (`pending`). A subclass starts a segment
  (`_start`) and, from `run`, hands each stopped one to `_finish`."""

  def __init__(self):
    self.context: dict = {}  # rid -> every token so far (prompt, sampled, appended)
    self.pending: set = set()  # rids whose segment waits or runs

  @property
  def busy(self) -> bool:
    return bool(self.pending)

  def submit(self, rid, prompt: Sequence[int], *, seed: int, sample: int = 0, budget: int,
             fences: bool = False) -> None:
    if rid in self.context:
      raise ValueError(f"{type(self).__name__}.submit: trajectory {rid!r} is already held")
    if not prompt:
      raise ValueError(f"{type(self).__name__}.submit: trajectory {rid!r} has an empty prompt")
    self.context[rid] = list(prompt)
    self.pending.add(rid)
    self._start(rid, seed, budget, fences)

  def resume(self, rid, tokens: Sequence[int], *, seed: int, sample: int = 0, budget: int,
             fences: bool = False) -> None:
    if rid not in self.context or rid in self.pending:
      raise ValueError(f"{type(self).__name__}.resume: trajectory {rid!r} is not stopped")
    self.context[rid].extend(tokens)
    self.pending.add(rid)
    self._start(rid, seed, budget, fences)

  def release(self, rid) -> None:
    if rid not in self.context or rid in self.pending:
      raise ValueError(f"{type(self).__name__}.release: trajectory {rid!r} is not stopped")
    del self.context[rid]

  def _start(self, rid, seed: int, budget: int, fences: bool) -> None:
    raise NotImplementedError

  def _finish(self, rid, comp: Completion) -> tuple[object, Completion]:
    self.context[rid].extend(comp.token_ids)
    self.pending.discard(rid)
    return rid, comp


class GenerateBatch(ContextBatch):
  """The per-trajectory batch interface of `slots.SlotBatch` over an engine that only has
  `generate` (a scripted test engine, or any engine asked for rounds): each `run` samples
  every waiting segment from its whole context in one `generate` call per fence setting, a
  synchronised round (`synchronous`: the caller lets a round's tool calls finish before the
  next). A segment samples with its own seed (derive_seed of the request's seed, sample and
  segment, from the caller); with `seeded` False, round r's call seeds prompt p with
  params.seed + 1000 r + p, as the round-based loop always did."""

  synchronous = True

  def __init__(self, engine, params: SamplingParams, *, fence_ids: Sequence[int] = (),
               seeded: bool = True):
    super().__init__()
    self.engine, self.params, self.fences, self.seeded = engine, params, tuple(fence_ids), seeded
    self.waiting: dict = {}  # rid -> (seed, budget, fences)
    self.rounds = 0

  def _start(self, rid, seed: int, budget: int, fences: bool) -> None:
    self.waiting[rid] = (seed, budget, fences)

  def run(self) -> list[tuple[object, Completion]]:
    stopped = []
    for allow in (True, False):
      sub = sorted(rid for rid, w in self.waiting.items() if w[2] == allow)
      if not sub:
        continue
      params = dataclasses.replace(
          self.params, n=1, max_tokens=max(self.waiting[rid][1] for rid in sub),
          seed=self.params.seed + 1000 * self.rounds,
          stop_token_ids=self.params.stop_token_ids + (self.fences if allow else ()))
      seeds = [self.waiting[rid][0] for rid in sub] if self.seeded else None
      out = self.engine.generate([self.context[rid] for rid in sub], params, seeds=seeds)
      for rid, (comp,) in zip(sub, out):
        budget = self.waiting[rid][1]
        if len(comp.token_ids) > budget:  # sampling is causal: the cut part is unaffected
          comp = Completion(comp.token_ids[:budget], comp.logprobs[:budget], "length")
        stopped.append(self._finish(rid, comp))
    self.waiting = {}
    self.rounds += 1
    return sorted(stopped, key=lambda x: x[0])
