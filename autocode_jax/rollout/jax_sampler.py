"""`JaxSampler`: the built-in rollout engine on the Flax model (CPU, GPU, TPU; sharded).

`generate` runs on the rollout slots (`rollout/slots.py`): each row takes a decode slot with its
own KV cache row, a finished row frees its slot at once for a waiting one, and the programs'
shapes are fixed by the slot count and the cache length, so calls that fit the same buckets reuse
them. `generate_static` keeps the static batch (every row in one left-padded batch until the
longest ends): the benchmark's reference.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from autocode_jax.rollout import slots as slots_lib
from autocode_jax.rollout.engine import Completion, SamplingParams
from autocode_jax.rollout.sampling import row_keys, sample_tokens, stop_arrays, stop_hit
from autocode_jax.rollout.slots import REASONS, SlotBatch, bucket, pow2, round_up

_PROMPT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


_TRACES = 0  # generation programs traced, all samplers together


# One program per (model structure, pad id, buckets), shared by every sampler: a run that builds
# a new sampler per phase (the demo: warm start, EM, RL, SFT) compiles each shape once.
@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames=("max_new", "greedy"))
def _generate(graphdef, pad_id, state, tokens_bp, mask_bp, stops_sl, stop_lens_s, eos_e, banned_v,
              keys_b, temperature, top_p, top_k, max_tokens, live_b, *, max_new, greedy):
  global _TRACES
  _TRACES += 1
  model = nnx.merge(graphdef, state)
  b, p = tokens_bp.shape
  positions = jnp.maximum(jnp.cumsum(mask_bp, axis=1) - 1, 0)
  logits, cache = model.prefill(tokens_bp, positions, p + max_new, mask_bp, last_only=True)
  last = logits[:, -1]
  next_pos = positions[:, -1] + 1
  out = jnp.full((b, max_new), pad_id, jnp.int32)
  lps = jnp.zeros((b, max_new), jnp.float32)
  done = ~live_b
  reason = jnp.zeros((b,), jnp.int32)
  length = jnp.zeros((b,), jnp.int32)

  def cond(c):
    i, _, _, _, _, done, _, _, _ = c
    return (i < max_tokens) & ~jnp.all(done)

  def body(c):
    i, cache, last, out, lps, done, reason, length, pos = c
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(keys_b)
    tok = sample_tokens(jnp.where(banned_v, -jnp.inf, last), step_keys, temperature, top_p, top_k,
                        greedy)
    tok = jnp.where(done, pad_id, tok)
    lp = jnp.take_along_axis(jax.nn.log_softmax(last), tok[:, None], 1)[:, 0]
    out = out.at[:, i].set(tok)
    lps = lps.at[:, i].set(jnp.where(done, 0.0, lp))
    is_eos = jnp.any(tok[:, None] == eos_e[None, :], axis=-1) & ~done
    is_stop = stop_hit(out, jnp.full((b,), i + 1), stops_sl, stop_lens_s) & ~done & ~is_eos
    reason = jnp.where(is_eos, 1, jnp.where(is_stop, 2, reason))
    length = jnp.where(done, length, i + 1)
    done = done | is_eos | is_stop
    logits, cache = model.decode(tok[:, None], pos[:, None], cache, last_only=True)
    return i + 1, cache, logits[:, -1], out, lps, done, reason, length, pos + 1

  _, _, _, out, lps, _, reason, length, _ = jax.lax.while_loop(
      cond, body, (jnp.int32(0), cache, last, out, lps, done, reason, length, next_pos))
  return out, lps, reason, length


class JaxSampler:
  """Rollouts on the Flax model. `update(state)` swaps in new weights (same structure).

  max_slots: the most decode slots a `generate` call uses (fewer when it has fewer rows); rows
  beyond them wait for a finished row's slot. chunk: decode steps per host round trip."""

  def __init__(self, model, mesh=None, pad_id: int = 0, prompt_buckets=_PROMPT_BUCKETS,
               min_batch: int = 8, max_slots: int = 1024, chunk: int = 32):
    self.graphdef, self.state = nnx.split(model)
    self.config = model.config
    self.mesh, self.pad_id = mesh, pad_id
    self.prompt_buckets, self.min_batch = tuple(prompt_buckets), min_batch
    self.max_slots, self.chunk = max_slots, chunk
    self.prefilled_tokens = 0  # tokens its slot batches wrote by appends (prompts, continuations)

  @property
  def traces(self) -> int:
    """How often generation programs were traced, by all samplers (tests check reuse)."""
    return _TRACES + sum(slots_lib.TRACES.values())

  @property
  def shards(self) -> int:
    """Devices the batch axis is split over (1 without a mesh)."""
    return 1 if self.mesh is None else self.mesh.shape["data"] * self.mesh.shape["fsdp"]

  def update(self, state) -> None:
    self.state = state

  def slot_batch(self, params: SamplingParams, *, slots: int, max_len: int,
                 fence_ids: Sequence[int] = (), min_slots: int | None = None) -> SlotBatch:
    """A SlotBatch of `slots` decode slots of `max_len` positions on this sampler's weights
    (shrinking to min_slots, default min_batch, as trajectories end)."""
    return SlotBatch(self, params, slots=slots, max_len=max_len, fence_ids=fence_ids,
                     chunk=self.chunk, min_slots=min_slots or self.min_batch)

  def rollout_batch(self, params: SamplingParams, rows: int, longest: int,
                    fence_ids: Sequence[int] = ()) -> SlotBatch:
    """The SlotBatch for `rows` trajectories of prompts up to `longest` tokens and responses
    up to params.max_tokens: min(rows, max_slots) slots (a power of two) of prompt bucket +
    max_tokens bucket positions (the static batch's cache length)."""
    return self.slot_batch(params, slots=min(pow2(rows, self.min_batch), self.max_slots),
                           max_len=bucket(longest, self.prompt_buckets)
                           + pow2(params.max_tokens, 16), fence_ids=fence_ids)

  def _rows(self, prompts, params, seeds):
    if seeds is not None and len(seeds) != len(prompts):
      raise ValueError(f"JaxSampler.generate: {len(seeds)} seeds for {len(prompts)} prompts")
    rows = [list(p) for p in prompts for _ in range(params.n)]
    if not rows or any(len(r) == 0 for r in rows):
      raise ValueError("JaxSampler.generate: every prompt needs at least one token")
    prompt_seeds = [params.seed + p for p in range(len(prompts))] if seeds is None else seeds
    row_seeds = [int(prompt_seeds[i // params.n]) % 2**32 for i in range(len(rows))]
    return rows, row_seeds

  def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
               seeds: Sequence[int] | None = None) -> list[list[Completion]]:
    """Row j of prompt p samples with key fold_in(PRNGKey(seeds[p]), j); without `seeds`,
    prompt p's seed is params.seed + p. The rows share one `rollout_batch`."""
    rows, row_seeds = self._rows(prompts, params, seeds)
    batch = self.rollout_batch(params, len(rows), max(len(r) for r in rows))
    for i, (r, seed) in enumerate(zip(rows, row_seeds)):
      batch.submit(i, r, seed=seed, sample=i % params.n, budget=params.max_tokens)
    done: list[Completion | None] = [None] * len(rows)
    while batch.busy:
      for i, comp in batch.run():
        done[i] = comp
        batch.release(i)
    return [done[p * params.n:(p + 1) * params.n] for p in range(len(prompts))]

  def program_call(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                   seeds: Sequence[int] | None = None) -> tuple[tuple, dict]:
    """The (args, static kwargs) of the static-batch program `_generate` for these prompts,
    padded to their buckets (what `generate_static` runs; benchmarks profile it)."""
    rows, row_seeds = self._rows(prompts, params, seeds)
    p = bucket(max(len(r) for r in rows), self.prompt_buckets)
    b = round_up(pow2(len(rows), self.min_batch), self.shards)
    tokens = np.full((b, p), self.pad_id, np.int32)
    mask = np.zeros((b, p), np.int32)
    for i, r in enumerate(rows):
      tokens[i, p - len(r):] = r
      mask[i, p - len(r):] = 1
    mask[len(rows):, -1] = 1  # filler rows: one token, never sampled from
    live = np.arange(b) < len(rows)
    eos, stops, stop_lens, banned = stop_arrays(params, self.config.vocab_size)
    seeds_b = np.zeros((b,), np.uint32)
    seeds_b[:len(rows)] = row_seeds
    keys = row_keys(seeds_b, np.arange(b, dtype=np.int32) % params.n)
    max_new = pow2(params.max_tokens, 16)
    greedy = bool(params.temperature == 0)  # greedy programs hold no sampling filter
    args = (self.graphdef, self.pad_id, self.state, tokens, mask, stops, stop_lens, eos, banned,
            keys, jnp.float32(params.temperature), jnp.float32(params.top_p),
            jnp.int32(params.top_k), jnp.int32(params.max_tokens), live)
    return args, {"max_new": max_new, "greedy": greedy}

  def generate_static(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                      seeds: Sequence[int] | None = None) -> list[list[Completion]]:
    """`generate` as one static batch: every row computes until the longest row ends."""
    args, kw = self.program_call(prompts, params, seeds)
    with jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext():
      out, lps, reason, length = _generate(*args, **kw)
    out, lps, reason, length = (np.asarray(x) for x in (out, lps, reason, length))
    results: list[list[Completion]] = []
    for i in range(len(prompts) * params.n):
      r, n = int(reason[i]), int(length[i])
      comp = Completion(tuple(int(t) for t in out[i, :n]), tuple(float(x) for x in lps[i, :n]),
                        REASONS[r])
      if i % params.n == 0:
        results.append([])
      results[-1].append(comp)
    return results
